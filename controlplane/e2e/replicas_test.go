package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// redisURL is the Redis the replicas share; .ci/run starts it.
const redisURL = "redis://127.0.0.1:6379/0"

// metric reads one un-labelled metric from a server's /metrics.
func metric(t *testing.T, s *cptest.Server, name string) string {
	t.Helper()
	resp, err := http.Get(s.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// TestReplicasShareWork: two servers share Postgres and Redis; an agent
// long-polls server A for up to 60s; a job executed through server B
// reaches it within seconds, through the Redis wake-up (the database
// re-check is set to 60s so it cannot be what delivers the task).
func TestReplicasShareWork(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"DATABASE_URL":              storetest.NewURL(t, store.Postgres),
		"REDIS_URL":                 redisURL,
		"OPSCONDUCTOR_POLL_RECHECK": "60s",
	}
	a := cptest.StartServer(t, "server-a", env)
	b := cptest.StartServer(t, "server-b", env)
	b.Token = a.Token // one bootstrap for the shared database
	agentMetrics := cptest.FreeAddr(t)
	a.StartAgent(t, "edge", "role=edge", "--poll-wait", "60s", "--metrics-addr", agentMetrics)
	a.WaitAgents(t, 1)
	// The agent's long-poll is now waiting on server A.
	cptest.Eventually(t, 30*time.Second, func() error {
		if v := metric(t, a, "opsconductor_agent_polls_waiting"); v != "1" {
			return fmt.Errorf("polls waiting on A = %q, want 1", v)
		}
		return nil
	})

	j := createJob(t, b, map[string]any{"name": "cross-replica", "targets": []map[string]any{{"selector": "role=edge"}},
		"actions": []map[string]any{{"command": "echo reached"}}})
	start := time.Now()
	e := execute(t, b, j.ID)
	r := waitFinished(t, b, e.ID, 30*time.Second)
	took := time.Since(start)
	if r.Execution.Status != "succeeded" || r.Results[0].Actions[0].Stdout != "reached\n" {
		t.Fatalf("results = %+v", r)
	}
	// Generous bound: the wake-up itself takes milliseconds; the 60s poll
	// and re-check would take a minute.
	if took > 5*time.Second {
		t.Fatalf("job executed through B took %s to run on an agent polling A", took)
	}
	t.Logf("executed through B, ran on A's agent, finished in %s", took)

	// What Prometheus scrapes from A, the replica the agent polls.
	cptest.Eventually(t, 20*time.Second, func() error {
		resp, err := http.Get(a.URL + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, want := range []string{
			"opsconductor_rpc_calls_total{", "opsconductor_dispatch_latency_seconds_count 1", `opsconductor_tasks_completed_total{status="succeeded"} 1`,
			"opsconductor_tasks_queued 0", `opsconductor_outbox_unpublished{schema="executions"}`, `opsconductor_outbox_publish_errors_total{schema="jobs"}`,
			`opsconductor_db_connections_open{schema="jobs"}`, "opsconductor_redis_pool_connections", `opsconductor_bus_published_total{bus="redis"}`,
			"opsconductor_schedule_lateness_seconds_count", "opsconductor_agent_polls_waiting",
		} {
			if !strings.Contains(string(body), want) {
				return fmt.Errorf("/metrics lacks %s", want)
			}
		}
		return nil
	})
	// And from the agent (--metrics-addr).
	cptest.Eventually(t, 20*time.Second, func() error {
		resp, err := http.Get("http://" + agentMetrics + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, want := range []string{"opsconductor_agent_tasks_started_total 1", "opsconductor_agent_tasks_running 0", "opsconductor_agent_polls_total",
			"process_resident_memory_bytes", "go_goroutines"} {
			if !strings.Contains(string(body), want) {
				return fmt.Errorf("the agent's /metrics lacks %s", want)
			}
		}
		return nil
	})
}
