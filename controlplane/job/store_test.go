package job

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestStoreContract runs every Store method against both engines.
func TestStoreContract(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			st := NewStore(storetest.Open(t, d, Schema, Migrations()))
			ctx := context.Background()
			mk := func(id, name string, labels map[string]string) Record {
				return Record{ID: id, Name: name, Labels: labels, Spec: []byte(fmt.Sprintf(`{"name":%q}`, name))}
			}

			t.Run("create and get", func(t *testing.T) {
				rec, err := st.JobCreate(ctx, mk("j-001", "deploy-web", map[string]string{"team": "web"}))
				if err != nil {
					t.Fatal(err)
				}
				if rec.Version != 1 {
					t.Fatalf("version = %d, want 1", rec.Version)
				}
				got, err := st.JobGetByID(ctx, "j-001")
				if err != nil {
					t.Fatal(err)
				}
				if got.Name != "deploy-web" || got.Labels["team"] != "web" || string(got.Spec) != `{"name":"deploy-web"}` || !got.CreatedAt.Equal(rec.CreatedAt) {
					t.Fatalf("got %+v, want %+v", got, rec)
				}
			})
			t.Run("duplicate name conflicts", func(t *testing.T) {
				_, err := st.JobCreate(ctx, mk("j-002", "deploy-web", nil))
				if !errors.Is(err, store.ErrConflict) {
					t.Fatalf("err = %v, want ErrConflict", err)
				}
			})
			t.Run("unknown id not found", func(t *testing.T) {
				_, err := st.JobGetByID(ctx, "nope")
				if !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("err = %v, want ErrNotFound", err)
				}
				if _, err := st.JobListVersions(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("versions err = %v, want ErrNotFound", err)
				}
				if err := st.JobDelete(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("delete err = %v, want ErrNotFound", err)
				}
			})
			t.Run("update keeps versions and refuses stale", func(t *testing.T) {
				upd := mk("j-001", "deploy-web2", map[string]string{"team": "ops"})
				rec, err := st.JobUpdate(ctx, upd, 1)
				if err != nil {
					t.Fatal(err)
				}
				if rec.Version != 2 {
					t.Fatalf("version = %d, want 2", rec.Version)
				}
				if _, err := st.JobUpdate(ctx, upd, 1); !errors.Is(err, ErrStale) {
					t.Fatalf("stale update err = %v, want ErrStale", err)
				}
				if _, err := st.JobUpdate(ctx, mk("nope", "x", nil), 1); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("unknown update err = %v, want ErrNotFound", err)
				}
				v1, err := st.JobGetVersion(ctx, "j-001", 1)
				if err != nil {
					t.Fatal(err)
				}
				if string(v1.Spec) != `{"name":"deploy-web"}` || v1.Version != 1 {
					t.Fatalf("version 1 = %+v", v1)
				}
				if _, err := st.JobGetVersion(ctx, "j-001", 9); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("missing version err = %v", err)
				}
				vs, err := st.JobListVersions(ctx, "j-001")
				if err != nil {
					t.Fatal(err)
				}
				if len(vs) != 2 || vs[0].Version != 2 || vs[1].Version != 1 {
					t.Fatalf("versions = %+v", vs)
				}
				cur, _ := st.JobGetByID(ctx, "j-001")
				if cur.Labels["team"] != "ops" || len(cur.Labels) != 1 {
					t.Fatalf("labels after update = %v", cur.Labels)
				}
			})
			t.Run("list filters and pages", func(t *testing.T) {
				for i := 0; i < 5; i++ {
					role := "db"
					if i%2 == 0 {
						role = "web"
					}
					if _, err := st.JobCreate(ctx, mk(fmt.Sprintf("j-1%02d", i), fmt.Sprintf("backup-%d", i), map[string]string{"role": role})); err != nil {
						t.Fatal(err)
					}
				}
				var names []string
				token := ""
				for {
					recs, next, err := st.JobList(ctx, ListParams{NamePrefix: "backup-", Limit: 2, PageToken: token})
					if err != nil {
						t.Fatal(err)
					}
					for _, r := range recs {
						names = append(names, r.Name)
					}
					if next == "" {
						break
					}
					token = next
				}
				if fmt.Sprint(names) != "[backup-0 backup-1 backup-2 backup-3 backup-4]" {
					t.Fatalf("paged names = %v", names)
				}
				sel, _ := label.ParseSelector("role=web")
				recs, _, err := st.JobList(ctx, ListParams{Selector: sel, Limit: 50})
				if err != nil {
					t.Fatal(err)
				}
				if len(recs) != 3 {
					t.Fatalf("role=web matched %d jobs, want 3", len(recs))
				}
				if _, _, err := st.JobList(ctx, ListParams{Limit: 5, PageToken: "%%%"}); !errors.Is(err, ErrBadPageToken) {
					t.Fatalf("bad token err = %v", err)
				}
			})
			t.Run("delete", func(t *testing.T) {
				if err := st.JobDelete(ctx, "j-001"); err != nil {
					t.Fatal(err)
				}
				if _, err := st.JobGetByID(ctx, "j-001"); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("after delete err = %v", err)
				}
				if _, err := st.JobGetVersion(ctx, "j-001", 1); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("version after delete err = %v", err)
				}
				// The name is free again.
				if _, err := st.JobCreate(ctx, mk("j-003", "deploy-web2", nil)); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}
