package audit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

func TestEventStore(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := NewStore(storetest.Open(t, d, Schema, Migrations()))
			base := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
			var events []bus.Event
			for i := range 25 {
				typ, subject := "execution.status", fmt.Sprintf("exec-%d", i%5)
				if i%2 == 1 {
					typ = "job.created"
				}
				events = append(events, bus.Event{ID: fmt.Sprintf("executions-%02d", i), Type: typ, Source: "executions", Subject: subject,
					Time: base.Add(time.Duration(i) * time.Second), CorrelationID: fmt.Sprintf("corr-%d", i%3), Version: 1, Payload: []byte(`{}`)})
			}
			if n, err := st.Record(ctx, events...); err != nil || n != 25 {
				t.Fatalf("recorded %d (%v), want 25", n, err)
			}
			// A redelivery adds nothing.
			if n, err := st.Record(ctx, events[3], events[7]); err != nil || n != 0 {
				t.Fatalf("a redelivery recorded %d (%v), want 0", n, err)
			}
			cases := []struct {
				name string
				f    Filter
				want []string // ids, newest first
			}{
				{"by subject", Filter{Subject: "exec-1"}, []string{"executions-21", "executions-16", "executions-11", "executions-06", "executions-01"}},
				{"by exact type, in a window", Filter{Type: "job.created", From: base.Add(3 * time.Second), To: base.Add(9 * time.Second)},
					[]string{"executions-07", "executions-05", "executions-03"}},
				{"by family", Filter{Type: "execution.*", CorrelationID: "corr-0", To: base.Add(7 * time.Second)}, []string{"executions-06", "executions-00"}},
				{"nothing", Filter{Source: "jobs"}, nil},
			}
			for _, c := range cases {
				got, next, err := st.List(ctx, c.f)
				if err != nil || next != nil || fmt.Sprint(ids(got)) != fmt.Sprint(c.want) {
					t.Fatalf("%s: %v next %v (%v), want %v", c.name, ids(got), next, err, c.want)
				}
			}
			// Pages of 10, newest first, each event once.
			var all []string
			var cursor *Cursor
			for page := 0; ; page++ {
				got, next, err := st.List(ctx, Filter{Limit: 10, Before: cursor})
				if err != nil || page > 3 {
					t.Fatalf("page %d: %v", page, err)
				}
				all = append(all, ids(got)...)
				if next == nil {
					break
				}
				cursor = next
			}
			if len(all) != 25 || all[0] != "executions-24" || all[24] != "executions-00" {
				t.Fatalf("paged listing: %v", all)
			}
		})
	}
}

func ids(events []bus.Event) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.ID)
	}
	return out
}
