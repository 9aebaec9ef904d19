package e2e

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestRetriesWithBackoff: an action that fails twice then succeeds is
// recorded as three attempts, each wait no shorter than the delay drawn
// and no longer than the cap plus slack.
func TestRetriesWithBackoff(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	s.StartAgent(t, "retrier", "role=retrier")
	s.WaitAgents(t, 1)
	counter := filepath.Join(t.TempDir(), "count")
	j := createJob(t, s, map[string]any{"name": "third-time-lucky", "targets": []map[string]any{{"selector": "role=retrier"}},
		"policy":  map[string]any{"retry": map[string]any{"maxAttempts": 4, "initialDelay": "0.2s", "multiplier": 2, "maxDelay": "0.3s"}},
		"actions": []map[string]any{{"command": "n=$(cat " + counter + " 2>/dev/null || echo 0); n=$((n+1)); echo $n > " + counter + "; echo try-$n; [ $n -ge 3 ]"}}})
	e := execute(t, s, j.ID)
	waitFinished(t, s, e.ID, 60*time.Second)
	var res struct {
		Results []struct {
			Actions []struct {
				Status   string `json:"status"`
				Stdout   string `json:"stdout"`
				Attempts []struct {
					Number      int       `json:"number"`
					Status      string    `json:"status"`
					ExitCode    int       `json:"exitCode"`
					StartTime   time.Time `json:"startTime"`
					EndTime     time.Time `json:"endTime"`
					DelayBefore string    `json:"delayBefore"`
				} `json:"attempts"`
			} `json:"actions"`
		} `json:"results"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions/"+e.ID+"/results", nil, &res))
	a := res.Results[0].Actions[0]
	if a.Status != "succeeded" || len(a.Attempts) != 3 || a.Stdout != "try-1\ntry-2\ntry-3\n" {
		t.Fatalf("action = %+v", a)
	}
	for i, at := range a.Attempts {
		if at.Number != i+1 || at.Status != []string{"failed", "failed", "succeeded"}[i] {
			t.Fatalf("attempt %d = %+v", i+1, at)
		}
		if i == 0 {
			continue
		}
		delay, err := time.ParseDuration(at.DelayBefore)
		if err != nil {
			t.Fatalf("delayBefore %q: %v", at.DelayBefore, err)
		}
		gap := at.StartTime.Sub(a.Attempts[i-1].EndTime)
		if delay > 300*time.Millisecond || gap < delay || gap > 300*time.Millisecond+3*time.Second {
			t.Fatalf("retry %d: delay %s, gap %s", i, delay, gap)
		}
	}
}
