package e2e

import (
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

// TestAgentCapacity: an agent with --capacity 2 runs two tasks at once,
// never three, and works through a backlog of five.
func TestAgentCapacity(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	s.StartAgent(t, "pair", "role=pair", "--capacity", "2")
	s.WaitAgents(t, 1)
	log := filepath.Join(t.TempDir(), "intervals")
	j := createJob(t, s, map[string]any{"name": "busy", "targets": []map[string]any{{"selector": "role=pair"}},
		"actions": []map[string]any{{"command": `s=$(date +%s%N); sleep 1; echo "$s $(date +%s%N)" >> ` + log}}})
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, execute(t, s, j.ID).ID)
	}
	for _, id := range ids {
		if r := waitFinished(t, s, id, 60*time.Second); r.Execution.Status != "succeeded" {
			t.Fatalf("execution %s: %+v", r.Execution.Status, r.Results)
		}
	}
	raw, err := os.ReadFile(log)
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
	if len(edges) != 10 {
		t.Fatalf("%d runs recorded, want 5", len(edges)/2)
	}
	sort.Slice(edges, func(i, k int) bool {
		if edges[i].at == edges[k].at {
			return edges[i].delta < edges[k].delta // an end before a start at the same instant
		}
		return edges[i].at < edges[k].at
	})
	running, most := 0, 0
	for _, e := range edges {
		running += e.delta
		most = max(most, running)
	}
	if most != 2 {
		t.Fatalf("at most %d actions ran at once, want exactly the capacity 2", most)
	}
}
