package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// maxOverlap reads "start end" lines and returns how many intervals were
// open at once at most.
func maxOverlap(t *testing.T, path string) (most, n int) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type edge struct {
		at    int64
		delta int
	}
	var edges []edge
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		f := strings.Fields(line)
		start, _ := strconv.ParseInt(f[0], 10, 64)
		end, _ := strconv.ParseInt(f[1], 10, 64)
		edges = append(edges, edge{start, +1}, edge{end, -1})
	}
	sort.Slice(edges, func(i, k int) bool {
		if edges[i].at == edges[k].at {
			return edges[i].delta < edges[k].delta
		}
		return edges[i].at < edges[k].at
	})
	running := 0
	for _, e := range edges {
		running += e.delta
		most = max(most, running)
	}
	return most, len(edges) / 2
}

// TestFanOut: with 10 targets and max_parallel 3 no more than 3 tasks run
// at once; a rollout in batches of 2 with max_failures 1 stops after the
// batch that crossed the threshold and skips the rest.
func TestFanOut(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	for i := 1; i <= 10; i++ {
		s.StartAgent(t, fmt.Sprintf("fan-%02d", i), "role=fan", "--capacity", "1")
	}
	s.WaitAgents(t, 10)
	log := filepath.Join(t.TempDir(), "intervals")
	j := createJob(t, s, map[string]any{"name": "throttled", "targets": []map[string]any{{"selector": "role=fan"}},
		"policy":  map[string]any{"maxParallel": "3"},
		"actions": []map[string]any{{"command": `s=$(date +%s%N); sleep 1; echo "$s $(date +%s%N)" >> ` + log}}})
	if r := waitFinished(t, s, execute(t, s, j.ID).ID, 120*time.Second); r.Execution.Status != "succeeded" {
		t.Fatalf("throttled execution: %s", r.Execution.Status)
	}
	most, n := maxOverlap(t, log)
	if n != 10 || most != 3 {
		t.Fatalf("%d runs, at most %d at once; want 10 runs, 3 at once", n, most)
	}

	rollout := createJob(t, s, map[string]any{"name": "rollout", "targets": []map[string]any{{"selector": "role=fan"}},
		"policy":  map[string]any{"batchSize": 2, "maxFailures": "1"},
		"actions": []map[string]any{{"command": `case "$OPSCONDUCTOR_AGENT_NAME" in fan-01|fan-03) exit 1;; esac`}}})
	r := waitFinished(t, s, execute(t, s, rollout.ID).ID, 120*time.Second)
	got := map[string]string{}
	for _, tr := range r.Results {
		got[tr.Task.AgentName] = tr.Task.Status
	}
	want := map[string]string{"fan-01": "failed", "fan-02": "succeeded", "fan-03": "failed"}
	for i := 5; i <= 10; i++ {
		want[fmt.Sprintf("fan-%02d", i)] = "skipped"
	}
	for name, st := range want {
		if got[name] != st {
			t.Fatalf("rollout: %s is %s, want %s (all: %v)", name, got[name], st, got)
		}
	}
	// fan-04 shares the crossing batch: it ran if it started before
	// fan-03 failed, else it was skipped with the rest.
	if got["fan-04"] != "succeeded" && got["fan-04"] != "skipped" {
		t.Fatalf("rollout: fan-04 is %s", got["fan-04"])
	}
	var e struct {
		Execution struct {
			Status string `json:"status"`
			Reason string `json:"reason"`
		} `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions/"+r.Execution.ID, nil, &e))
	if e.Execution.Status != "failed" || !strings.Contains(e.Execution.Reason, "failure threshold reached: 2 of 10") {
		t.Fatalf("rollout execution: %+v", e.Execution)
	}
}
