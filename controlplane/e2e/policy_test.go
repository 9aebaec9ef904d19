package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestIdempotencyConcurrencyAndQueueTimeout: a repeated execute with the
// same idempotency key returns the first execution; a second execution of
// a "skip" job is refused while the first runs, a "queue" one waits for
// it; a task for an agent that stays offline ends expired after the queue
// timeout.
func TestIdempotencyConcurrencyAndQueueTimeout(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{
		"DATABASE_URL":               storetest.NewURL(t, store.Postgres),
		"OPSCONDUCTOR_REAP_INTERVAL": "200ms",
		"OPSCONDUCTOR_POLL_RECHECK":  "1s",
	})
	s.StartAgent(t, "worker", "role=worker", "--capacity", "4")
	ghost := s.StartAgent(t, "ghost", "role=ghost")
	s.WaitAgents(t, 2)
	ghost.Stop(t) // enrolled, then gone: its tasks can only wait

	// Idempotency.
	quick := createJob(t, s, map[string]any{"name": "quick", "targets": []map[string]any{{"selector": "role=worker"}},
		"actions": []map[string]any{{"command": "true"}}})
	hdr := http.Header{"Authorization": {"Bearer " + s.Token}, "Idempotency-Key": {"deploy-42"}}
	var a, b struct {
		Execution execution `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(cptest.DoJSONHeader(t, "POST", s.URL+"/api/v1/jobs/"+quick.ID+"/execute", hdr, map[string]any{}, &a))
	cptest.Must(t, http.StatusOK)(cptest.DoJSONHeader(t, "POST", s.URL+"/api/v1/jobs/"+quick.ID+"/execute", hdr, map[string]any{}, &b))
	if a.Execution.ID == "" || a.Execution.ID != b.Execution.ID {
		t.Fatalf("same key gave executions %q and %q", a.Execution.ID, b.Execution.ID)
	}
	var c struct {
		Execution execution `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/jobs/"+quick.ID+"/execute", map[string]any{"idempotencyKey": "deploy-43"}, &c))
	if c.Execution.ID == a.Execution.ID {
		t.Fatal("a different key returned the same execution")
	}

	// Concurrency skip.
	skip := createJob(t, s, map[string]any{"name": "exclusive", "targets": []map[string]any{{"selector": "role=worker"}},
		"policy":  map[string]any{"concurrency": "skip"},
		"actions": []map[string]any{{"command": "sleep 2"}}})
	first := execute(t, s, skip.ID)
	var refusal struct {
		Message string `json:"message"`
	}
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/jobs/"+skip.ID+"/execute", map[string]any{}, &refusal))
	if !strings.Contains(refusal.Message, first.ID) || !strings.Contains(refusal.Message, "skip") {
		t.Fatalf("refusal = %q", refusal.Message)
	}
	waitFinished(t, s, first.ID, 60*time.Second)
	waitFinished(t, s, execute(t, s, skip.ID).ID, 60*time.Second) // allowed once the first ended

	// Concurrency queue: the second waits for the first.
	queue := createJob(t, s, map[string]any{"name": "in-line", "targets": []map[string]any{{"selector": "role=worker"}},
		"policy":  map[string]any{"concurrency": "queue"},
		"actions": []map[string]any{{"command": "sleep 1"}}})
	q1 := execute(t, s, queue.ID)
	var q2 struct {
		Execution struct {
			ID         string `json:"id"`
			WaitingFor string `json:"waitingFor"`
		} `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/jobs/"+queue.ID+"/execute", map[string]any{}, &q2))
	if q2.Execution.WaitingFor != q1.ID {
		t.Fatalf("second queued execution waits for %q, want %s", q2.Execution.WaitingFor, q1.ID)
	}
	r1 := waitFinished(t, s, q1.ID, 60*time.Second)
	r2 := waitFinished(t, s, q2.Execution.ID, 60*time.Second)
	if r2.Execution.Status != "succeeded" {
		t.Fatalf("queued execution: %s", r2.Execution.Status)
	}
	var e1, e2 struct {
		Execution struct {
			EndTime   time.Time `json:"endTime"`
			StartTime time.Time `json:"startTime"`
		} `json:"execution"`
	}
	s.Do(t, "GET", "/api/v1/executions/"+r1.Execution.ID, nil, &e1)
	s.Do(t, "GET", "/api/v1/executions/"+r2.Execution.ID, nil, &e2)
	if e2.Execution.StartTime.Before(e1.Execution.EndTime) {
		t.Fatalf("the queued execution started at %s, before the first ended at %s", e2.Execution.StartTime, e1.Execution.EndTime)
	}

	// Queue timeout: the ghost never claims its task.
	lost := createJob(t, s, map[string]any{"name": "to-ghost", "targets": []map[string]any{{"selector": "role=ghost"}},
		"policy":  map[string]any{"queueTimeout": "2s"},
		"actions": []map[string]any{{"command": "true"}}})
	r := waitFinished(t, s, execute(t, s, lost.ID).ID, 60*time.Second)
	if r.Execution.Status != "failed" || r.Results[0].Task.Status != "expired" || !strings.Contains(r.Results[0].Task.Error, "queue timeout") {
		t.Fatalf("offline target: %+v", r)
	}

	// A bad policy names its field.
	var bad struct {
		Message string `json:"message"`
	}
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/jobs/"+quick.ID+"/execute", map[string]any{"policy": map[string]any{"maxParallel": "0"}}, &bad))
	if !strings.Contains(bad.Message, "policy.max_parallel") {
		t.Fatalf("bad policy override: %q", bad.Message)
	}
}
