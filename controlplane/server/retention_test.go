package server

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/config"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestRetention: with an hour's retention, an execution that finished two
// hours ago goes with its tasks, results and output, an old event and an
// old published outbox row go; a recent execution, event and outbox row,
// and a still running old execution, stay.
func TestRetention(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			srv := startApp(t, d, func(c *config.Config) {
				c.RetainExecutions, c.RetainEvents, c.RetainOutbox, c.RetentionInterval = time.Hour, time.Hour, time.Hour, time.Second
			})
			ctx := context.Background()
			execDB, auditDB, jobsDB := srv.openSchema(t, "executions"), srv.openSchema(t, "audit"), srv.openSchema(t, "jobs")
			exec := func(db *store.DB, q string, args ...any) {
				t.Helper()
				if _, err := db.ExecContext(ctx, q, args...); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			now := time.Now().UTC()
			old := now.Add(-2 * time.Hour)
			for _, e := range []struct {
				id       string
				finished any
				status   string
			}{{"old-done", old, "succeeded"}, {"new-done", now, "succeeded"}, {"old-running", nil, "running"}} {
				// One transaction: the purger, already running, sees the
				// execution with its task and output or not at all.
				err := execDB.InTx(ctx, func(tx *store.Tx) error {
					if _, err := tx.ExecContext(ctx, `INSERT INTO executions (id, job_id, job_name, job_version, snapshot, status, correlation_id, created_at, started_at, finished_at)
						VALUES ($1, 'j', 'job', 1, '{}', $2, '', $3, $3, $4)`, e.id, e.status, old, e.finished); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `INSERT INTO tasks (id, execution_id, agent_id, agent_name, status, output_limit, created_at) VALUES ($1, $2, 'a', 'agent', $3, 1024, $4)`,
						"t-"+e.id, e.id, e.status, old); err != nil {
						return err
					}
					_, err := tx.ExecContext(ctx, `INSERT INTO task_output (task_id, chunk, action_index, stream, data) VALUES ($1, 1, 0, 'stdout', $2)`, "t-"+e.id, []byte("hello"))
					return err
				})
				if err != nil {
					t.Fatalf("insert execution %s: %v", e.id, err)
				}
			}
			exec(auditDB, `INSERT INTO events (id, type, source, subject, occurred_at, version, payload, received_at) VALUES ('old-event', 'job.created', 'jobs', 's', $1, 1, '{}', $1)`, old)
			exec(jobsDB, `INSERT INTO outbox (topic, aggregate_id, aggregate_seq, payload, created_at) VALUES ('job.created', 'old-job', 0, '{}', $1)`, old)
			cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/jobs", validJob("recent"), nil))

			count := func(db *store.DB, q string) int {
				var n int
				if err := db.QueryRowContext(ctx, q).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			cptest.Eventually(t, 30*time.Second, func() error {
				if n := count(execDB, `SELECT COUNT(*) FROM executions WHERE id = 'old-done'`); n != 0 {
					return fmt.Errorf("the old finished execution is still there")
				}
				if n := count(auditDB, `SELECT COUNT(*) FROM events WHERE id = 'old-event'`); n != 0 {
					return fmt.Errorf("the old event is still there")
				}
				if n := count(jobsDB, `SELECT COUNT(*) FROM outbox WHERE aggregate_id = 'old-job'`); n != 0 {
					return fmt.Errorf("the old outbox row is still there")
				}
				return nil
			})
			for q, want := range map[string]int{
				`SELECT COUNT(*) FROM tasks WHERE execution_id = 'old-done'`:                        0,
				`SELECT COUNT(*) FROM task_output WHERE task_id = 't-old-done'`:                     0,
				`SELECT COUNT(*) FROM executions WHERE id IN ('new-done', 'old-running')`:           2,
				`SELECT COUNT(*) FROM task_output WHERE task_id IN ('t-new-done', 't-old-running')`: 2,
			} {
				if n := count(execDB, q); n != want {
					t.Errorf("%s = %d, want %d", q, n, want)
				}
			}
			if n := count(jobsDB, `SELECT COUNT(*) FROM outbox WHERE topic = 'job.created' AND aggregate_id <> 'old-job'`); n != 1 {
				t.Errorf("the recent outbox row: %d, want 1", n)
			}
		})
	}
}
