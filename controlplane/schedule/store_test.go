package schedule

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

func TestStoreContract(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			st := NewStore(storetest.Open(t, d, Schema, Migrations()))
			now := time.Now().UTC().Truncate(time.Microsecond)
			next := now.Add(time.Hour)
			r := Record{ID: "s1", JobID: "j1", Definition: []byte(`{"kind":"cron"}`), State: StateActive, NextFireAt: &next, CreatedBy: "admin", CreatedAt: now, UpdatedAt: now}
			if err := st.Create(ctx, r); err != nil {
				t.Fatal(err)
			}
			if err := st.Create(ctx, r); !errors.Is(err, store.ErrConflict) {
				t.Fatalf("duplicate id: %v", err)
			}
			got, err := st.Get(ctx, "s1")
			if err != nil || got.Version != 1 || !got.NextFireAt.Equal(next) || string(got.Definition) != `{"kind":"cron"}` {
				t.Fatalf("get = %+v, %v", got, err)
			}
			got.State, got.NextFireAt = StatePaused, nil
			v, err := st.Update(ctx, got, "schedule.paused")
			if err != nil || v != 2 {
				t.Fatalf("update = %d, %v", v, err)
			}
			if _, err := st.Update(ctx, got, "schedule.paused"); !errors.Is(err, store.ErrConflict) {
				t.Fatalf("update at a stale version: %v", err)
			}
			if _, err := st.Update(ctx, Record{ID: "nope", Version: 1}, "x"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("update of a missing schedule: %v", err)
			}
			for _, f := range []struct{ job, state string }{{"", ""}, {"j1", ""}, {"j1", StatePaused}, {"", StatePaused}} {
				if l, err := st.List(ctx, f.job, f.state); err != nil || len(l) != 1 {
					t.Fatalf("list %v = %d, %v", f, len(l), err)
				}
			}
			if l, _ := st.List(ctx, "j2", ""); len(l) != 0 {
				t.Fatal("list of another job found one")
			}
			if err := st.Delete(ctx, "s1"); err != nil {
				t.Fatal(err)
			}
			if err := st.Delete(ctx, "s1"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("delete twice: %v", err)
			}
		})
	}
}
