package audit

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestLogTamperEvident edits every column of one record in turn, deletes
// records (in the middle and at the end) and swaps two: each makes Verify
// fail naming the first bad record; undoing it makes the chain whole.
func TestLogTamperEvident(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			db := storetest.Open(t, d, Schema, Migrations())
			log := NewLog(db)
			if v, err := log.Verify(ctx); err != nil || !v.OK || v.Records != 0 {
				t.Fatalf("empty log: %+v (%v)", v, err)
			}
			for i := 1; i <= 5; i++ {
				r, err := log.Append(ctx, Record{Actor: "alice", ActorKind: "user", Roles: "operator", Action: "/opsconductor.v1.JobService/CreateJob",
					Resource: fmt.Sprintf("job-%d", i), Outcome: "ok", Peer: "127.0.0.1:5000", UserAgent: "test", CorrelationID: fmt.Sprintf("c-%d", i),
					Request: `{"name":"x"}`})
				if err != nil || r.Seq != int64(i) {
					t.Fatalf("append %d: %+v (%v)", i, r, err)
				}
			}
			verify := func(wantBad int64, what string) {
				t.Helper()
				v, err := log.Verify(ctx)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case wantBad == 0 && !v.OK:
					t.Fatalf("%s: the chain should verify: %+v", what, v)
				case wantBad != 0 && (v.OK || v.BadSeq != wantBad):
					t.Fatalf("%s: verify = %+v, want it to name record %d", what, v, wantBad)
				}
			}
			verify(0, "untouched")

			saved := all(t, log)
			columns := strings.Split(strings.ReplaceAll(logColumns, " ", ""), ",")
			for _, col := range columns {
				var changed any
				switch col {
				case "seq":
					changed = int64(1000)
				case "at", "called_at":
					changed = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
				default:
					changed = "tampered"
				}
				exec(t, db, fmt.Sprintf(`UPDATE audit_log SET %s = $1 WHERE seq = 3`, col), changed)
				where := "seq = 3"
				if col == "seq" {
					where = "seq = 1000"
				}
				verify(3, "record 3's "+col+" edited")
				exec(t, db, `DELETE FROM audit_log WHERE `+where)
				reinsert(t, db, saved[2])
				verify(0, "record 3's "+col+" restored")
			}

			exec(t, db, `DELETE FROM audit_log WHERE seq = 3`)
			verify(3, "record 3 deleted")
			reinsert(t, db, saved[2])
			verify(0, "record 3 put back")

			exec(t, db, `DELETE FROM audit_log WHERE seq = 5`)
			verify(5, "the last record deleted")
			reinsert(t, db, saved[4])

			// Reordered: records 2 and 4 swap places.
			exec(t, db, `UPDATE audit_log SET seq = -2 WHERE seq = 2`)
			exec(t, db, `UPDATE audit_log SET seq = 2 WHERE seq = 4`)
			exec(t, db, `UPDATE audit_log SET seq = 4 WHERE seq = -2`)
			verify(2, "records 2 and 4 swapped")
		})
	}
}

func exec(t *testing.T, db *store.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func all(t *testing.T, log *Log) []Record {
	t.Helper()
	recs, _, err := log.List(context.Background(), LogFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]Record, len(recs))
	for i, r := range recs {
		out[len(recs)-1-i] = r
	}
	return out
}

func reinsert(t *testing.T, db *store.DB, r Record) {
	t.Helper()
	exec(t, db, `INSERT INTO audit_log (`+logColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
		r.Seq, r.Time, r.Actor, r.ActorKind, r.Roles, r.Action, r.Resource, r.Outcome, r.Reason, r.Peer, r.UserAgent, r.CorrelationID,
		r.Request, r.PrevHash, r.Hash, r.CalledAt)
}

// TestAppendForwarded: a record forwarded over the bus (split mode) is
// appended once however often it is delivered, keeps the time of its
// call beside the time it joined the chain, and the chain verifies.
func TestAppendForwarded(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			log := NewLog(storetest.Open(t, d, Schema, Migrations()))
			if _, err := log.Append(ctx, Record{Actor: "alice", ActorKind: "user", Action: "/a", Outcome: "ok"}); err != nil {
				t.Fatal(err)
			}
			called := time.Now().Add(-time.Hour).UTC()
			rec := Record{Actor: "bob", ActorKind: "user", Action: "/opsconductor.v1.ExecutionService/ExecuteJob", Outcome: "ok", CalledAt: &called}
			for i, want := range []bool{true, false, false} {
				appended, err := log.AppendForwarded(ctx, "executions-7", rec)
				if err != nil || appended != want {
					t.Fatalf("delivery %d: appended %v (%v), want %v", i+1, appended, err, want)
				}
			}
			recs, _, err := log.List(ctx, LogFilter{})
			if err != nil || len(recs) != 2 {
				t.Fatalf("list: %d records (%v), want 2", len(recs), err)
			}
			var fwd Record
			for _, r := range recs {
				if r.Actor == "bob" {
					fwd = r
				}
			}
			if fwd.CalledAt == nil || !fwd.CalledAt.Equal(called.Truncate(time.Microsecond)) || !fwd.Time.After(*fwd.CalledAt) {
				t.Fatalf("forwarded record: called %v, joined %v; want called %v, before joining", fwd.CalledAt, fwd.Time, called)
			}
			if v, err := log.Verify(ctx); err != nil || !v.OK || v.Records != 2 {
				t.Fatalf("verify: %+v (%v)", v, err)
			}
		})
	}
}
