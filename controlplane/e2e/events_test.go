package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsconductor/opsconductor/controlplane/audit"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/credential"
	execsvc "github.com/opsconductor/opsconductor/controlplane/execution"
	"github.com/opsconductor/opsconductor/controlplane/inventory"
	jobsvc "github.com/opsconductor/opsconductor/controlplane/job"
	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/registry"
	"github.com/opsconductor/opsconductor/controlplane/schedule"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// ownRedis is a redis-server of the test's own (never the machine's
// shared one: other tests use it), persisting every write (appendfsync
// always), as a bus must.
type ownRedis struct {
	addr, dir string
	cmd       *exec.Cmd
}

func startOwnRedis(t *testing.T) *ownRedis {
	t.Helper()
	r := &ownRedis{addr: cptest.FreeAddr(t), dir: t.TempDir()}
	r.start(t)
	t.Cleanup(r.kill)
	return r
}

func (r *ownRedis) start(t *testing.T) {
	t.Helper()
	host, port, _ := strings.Cut(r.addr, ":")
	r.cmd = exec.Command("redis-server", "--bind", host, "--port", port, "--dir", r.dir, "--save", "",
		"--appendonly", "yes", "--appendfsync", "always", "--logfile", filepath.Join(r.dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	cptest.Eventually(t, 20*time.Second, func() error {
		out, err := exec.Command("redis-cli", "-h", host, "-p", port, "ping").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "PONG" {
			return fmt.Errorf("redis not up: %s %v", out, err)
		}
		return nil
	})
}

// kill stops it the hard way (SIGKILL): what was acknowledged to a
// client is on disk.
func (r *ownRedis) kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

// TestEventsReachAuditThroughRedisOutage: a control plane on Postgres
// with the event bus on a Redis of the test's own; 200 executions run
// while that Redis is killed and started again. Every event any service
// wrote to its outbox (but task output, which the audit service does not
// keep) reaches the audit service's store, once (counted by id).
func TestEventsReachAuditThroughRedisOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rd := startOwnRedis(t)
	dbURL := storetest.NewURL(t, store.Postgres)
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": "redis://" + rd.addr + "/0",
		"OPSCONDUCTOR_POLL_RECHECK": "1s"})
	s.StartAgent(t, "worker", "role=worker", "--capacity", "16")
	s.WaitAgents(t, 1)
	j := createJob(t, s, map[string]any{"name": "through-outage", "targets": []map[string]any{{"selector": "role=worker"}},
		"actions": []map[string]any{{"command": "echo ok"}}})

	const runs = 200
	var ids []string
	for i := range runs {
		if i == 50 {
			rd.kill() // mid-run: the bus goes away
		}
		if i == 120 {
			rd.start(t) // and comes back, with what it had acknowledged
		}
		ids = append(ids, execute(t, s, j.ID).ID)
	}
	for _, id := range ids {
		if r := waitFinished(t, s, id, 2*time.Minute); r.Execution.Status != "succeeded" {
			t.Fatalf("execution %s: %s", id, r.Execution.Status)
		}
	}

	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	schemas := []string{jobsvc.Schema, execsvc.Schema, registry.Schema, auth.Schema, credential.Schema, inventory.Schema, schedule.Schema, audit.Schema}
	expected := map[string]string{} // event id -> topic
	for _, schema := range schemas {
		rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT seq, topic FROM %s.outbox WHERE topic <> 'task.output'`, pgx.Identifier{schema}.Sanitize()))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var seq int64
			var topic string
			if err := rows.Scan(&seq, &topic); err != nil {
				t.Fatal(err)
			}
			expected[outbox.EventID(schema, seq)] = topic
		}
		rows.Close()
	}
	if len(expected) < runs*4 {
		t.Fatalf("only %d events written for %d executions", len(expected), runs)
	}
	cptest.Eventually(t, 2*time.Minute, func() error {
		rows, err := conn.Query(ctx, `SELECT id, COUNT(*) OVER (PARTITION BY id) FROM audit.events`)
		if err != nil {
			return err
		}
		defer rows.Close()
		got := map[string]bool{}
		for rows.Next() {
			var id string
			var n int
			if err := rows.Scan(&id, &n); err != nil {
				return err
			}
			if n != 1 {
				t.Fatalf("event %s stored %d times", id, n)
			}
			if _, ok := expected[id]; !ok {
				t.Fatalf("audit holds %s, which no outbox wrote", id)
			}
			got[id] = true
		}
		var missing []string
		for id, topic := range expected {
			if !got[id] {
				missing = append(missing, id+" "+topic)
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d events not in the audit store yet, e.g. %v", len(missing), len(expected), missing[:min(5, len(missing))])
		}
		return nil
	})
	t.Logf("%d events (%d executions) reached the audit store once each across a Redis outage", len(expected), runs)
}
