package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// Shapes of the REST answers the tests read (protobuf JSON mapping).
type job struct {
	ID      string `json:"id"`
	Version string `json:"version"`
	Name    string `json:"name"`
}

type task struct {
	ID        string `json:"id"`
	AgentName string `json:"agentName"`
	Host      string `json:"host"`
	Status    string `json:"status"`
	Error     string `json:"error"`
}

type execution struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Tasks  []task `json:"tasks"`
}

type actionResult struct {
	Index    int    `json:"index"`
	Name     string `json:"name"`
	Status   string `json:"status"`
	ExitCode int    `json:"exitCode"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	Error    string `json:"error"`
}

type taskResult struct {
	Task             task           `json:"task"`
	Actions          []actionResult `json:"actions"`
	OutputTruncated  bool           `json:"outputTruncated"`
	OutputLimitBytes string         `json:"outputLimitBytes"`
}

type results struct {
	Execution execution    `json:"execution"`
	Results   []taskResult `json:"results"`
}

func createJob(t *testing.T, s *cptest.Server, body map[string]any) job {
	t.Helper()
	var out struct {
		Job job `json:"job"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/jobs", body, &out))
	return out.Job
}

func execute(t *testing.T, s *cptest.Server, jobID string) execution {
	t.Helper()
	var out struct {
		Execution execution `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/jobs/"+jobID+"/execute", map[string]any{}, &out))
	return out.Execution
}

// waitFinished polls the execution until it ends and returns its results.
func waitFinished(t *testing.T, s *cptest.Server, id string, timeout time.Duration) results {
	t.Helper()
	cptest.Eventually(t, timeout, func() error {
		var out struct {
			Execution execution `json:"execution"`
		}
		if code := s.Do(t, "GET", "/api/v1/executions/"+id, nil, &out); code != http.StatusOK {
			return fmt.Errorf("get execution: HTTP %d", code)
		}
		switch out.Execution.Status {
		case "succeeded", "failed", "cancelled":
			return nil
		}
		return fmt.Errorf("execution is %s", out.Execution.Status)
	})
	var res results
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions/"+id+"/results", nil, &res))
	return res
}

func byAgent(res results) map[string]taskResult {
	m := map[string]taskResult{}
	for _, r := range res.Results {
		m[r.Task.AgentName] = r
	}
	return m
}

// TestJobRunsOnSelectedAgents is the foundation's main path, on both
// stores: three agents, a two-action job for role=web, results over REST.
func TestJobRunsOnSelectedAgents(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, d)})
			s.StartAgent(t, "web-1", "role=web,env=test")
			s.StartAgent(t, "web-2", "role=web,env=test")
			s.StartAgent(t, "db-1", "role=db,env=test")
			s.WaitAgents(t, 3)

			j := createJob(t, s, map[string]any{
				"name": "greet-web",
				"actions": []map[string]any{
					{"name": "hello", "command": `echo "hello from $OPSCONDUCTOR_AGENT_NAME"`},
					{"name": "where", "script": "echo \"job $OPSCONDUCTOR_JOB_NAME\"\necho warn >&2"},
				},
				"targets": []map[string]any{{"selector": "role=web"}},
			})
			e := execute(t, s, j.ID)
			if len(e.Tasks) != 2 {
				t.Fatalf("execution has %d tasks, want 2 (the web agents): %+v", len(e.Tasks), e.Tasks)
			}
			res := waitFinished(t, s, e.ID, 60*time.Second)
			if res.Execution.Status != "succeeded" {
				t.Fatalf("execution %s, want succeeded: %+v", res.Execution.Status, res.Results)
			}
			got := byAgent(res)
			if _, ran := got["db-1"]; ran || len(got) != 2 {
				t.Fatalf("targets = %v, want exactly web-1 and web-2", keys(got))
			}
			for _, name := range []string{"web-1", "web-2"} {
				r := got[name]
				if r.Task.Status != "succeeded" || len(r.Actions) != 2 {
					t.Fatalf("%s: %+v", name, r)
				}
				a0, a1 := r.Actions[0], r.Actions[1]
				if a0.Status != "succeeded" || a0.ExitCode != 0 || a0.Stdout != "hello from "+name+"\n" {
					t.Errorf("%s action 0 = %+v", name, a0)
				}
				if a1.Status != "succeeded" || a1.Stdout != "job greet-web\n" || a1.Stderr != "warn\n" {
					t.Errorf("%s action 1 = %+v", name, a1)
				}
			}
		})
	}
}

func keys(m map[string]taskResult) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestFailureTimeoutAndSkip: a failing action fails its target with its
// exit code and skips later actions unless continue_on_error; an action past
// its timeout is killed with its whole process group.
func TestFailureTimeoutAndSkip(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	s.StartAgent(t, "solo", "role=solo")
	s.WaitAgents(t, 1)
	target := []map[string]any{{"selector": "role=solo"}}

	t.Run("failure stops later actions", func(t *testing.T) {
		j := createJob(t, s, map[string]any{"name": "fails", "targets": target, "actions": []map[string]any{
			{"name": "boom", "command": "echo partial; exit 3"},
			{"name": "never", "command": "echo never"},
		}})
		r := waitFinished(t, s, execute(t, s, j.ID).ID, 60*time.Second)
		if r.Execution.Status != "failed" {
			t.Fatalf("execution %s, want failed", r.Execution.Status)
		}
		tr := r.Results[0]
		if tr.Task.Status != "failed" || !strings.Contains(tr.Task.Error, "exited with code 3") {
			t.Fatalf("task = %+v", tr.Task)
		}
		if a := tr.Actions[0]; a.Status != "failed" || a.ExitCode != 3 || a.Stdout != "partial\n" {
			t.Fatalf("action 0 = %+v", a)
		}
		if a := tr.Actions[1]; a.Status != "skipped" || a.Stdout != "" {
			t.Fatalf("action 1 = %+v, want skipped", a)
		}
	})

	t.Run("continue_on_error runs the rest", func(t *testing.T) {
		j := createJob(t, s, map[string]any{"name": "tolerates", "targets": target, "actions": []map[string]any{
			{"name": "flaky", "command": "exit 4", "continueOnError": true},
			{"name": "after", "command": "echo after"},
		}})
		r := waitFinished(t, s, execute(t, s, j.ID).ID, 60*time.Second)
		tr := r.Results[0]
		if a := tr.Actions[0]; a.Status != "failed" || a.ExitCode != 4 {
			t.Fatalf("action 0 = %+v", a)
		}
		if a := tr.Actions[1]; a.Status != "succeeded" || a.Stdout != "after\n" {
			t.Fatalf("action 1 = %+v", a)
		}
		if r.Execution.Status != "succeeded" {
			t.Fatalf("execution %s: a tolerated failure must not fail the target", r.Execution.Status)
		}
	})

	t.Run("correlation id reaches the agent", func(t *testing.T) {
		j := createJob(t, s, map[string]any{"name": "correlated", "targets": target, "actions": []map[string]any{
			{"command": "echo $OPSCONDUCTOR_CORRELATION_ID"},
		}})
		var out struct {
			Execution struct {
				ID            string `json:"id"`
				CorrelationID string `json:"correlationId"`
			} `json:"execution"`
		}
		hdr := http.Header{"X-Request-Id": {"corr-e2e-42"}, "Authorization": {"Bearer " + s.Token}}
		cptest.Must(t, http.StatusOK)(cptest.DoJSONHeader(t, "POST", s.URL+"/api/v1/jobs/"+j.ID+"/execute", hdr, map[string]any{}, &out))
		if out.Execution.CorrelationID != "corr-e2e-42" {
			t.Fatalf("execution correlation id = %q", out.Execution.CorrelationID)
		}
		r := waitFinished(t, s, out.Execution.ID, 60*time.Second)
		if got := r.Results[0].Actions[0].Stdout; got != "corr-e2e-42\n" {
			t.Fatalf("the action saw correlation id %q", got)
		}
	})

	t.Run("timeout kills the process group", func(t *testing.T) {
		pidFile := filepath.Join(t.TempDir(), "child.pid")
		j := createJob(t, s, map[string]any{"name": "hangs", "targets": target, "actions": []map[string]any{
			{"name": "hang", "command": "sleep 300 & echo $! > " + pidFile + "; wait", "timeout": "1s"},
			{"name": "never", "command": "echo never"},
		}})
		start := time.Now()
		r := waitFinished(t, s, execute(t, s, j.ID).ID, 60*time.Second)
		tr := r.Results[0]
		if tr.Task.Status != "timed_out" || tr.Actions[0].Status != "timed_out" || tr.Actions[1].Status != "skipped" {
			t.Fatalf("result = %+v", tr)
		}
		if took := time.Since(start); took > 30*time.Second {
			t.Fatalf("a 1s timeout took %s to end the task", took)
		}
		raw, err := os.ReadFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil {
			t.Fatal(err)
		}
		cptest.Eventually(t, 10*time.Second, func() error {
			if err := syscall.Kill(pid, 0); err == nil {
				return fmt.Errorf("background child %d of the timed-out action is still alive", pid)
			}
			return nil
		})
	})
}

// TestLeaseExtendedAndOutputCapped: a task running longer than the lease
// keeps it and completes; output past the per-task cap is cut with a
// visible marker and the cap is reported.
func TestLeaseExtendedAndOutputCapped(t *testing.T) {
	t.Parallel()
	const limit = 4096
	s := cptest.StartServer(t, "server", map[string]string{
		"DATABASE_URL":                storetest.NewURL(t, store.SQLite),
		"OPSCONDUCTOR_LEASE_DURATION": "2s",
		"OPSCONDUCTOR_REAP_INTERVAL":  "200ms",
		"OPSCONDUCTOR_OUTPUT_LIMIT":   strconv.Itoa(limit),
	})
	s.StartAgent(t, "worker", "role=worker")
	s.WaitAgents(t, 1)
	j := createJob(t, s, map[string]any{"name": "long-and-loud", "targets": []map[string]any{{"selector": "role=worker"}},
		"actions": []map[string]any{
			{"name": "slow", "command": "sleep 6; echo done"},
			{"name": "loud", "command": "head -c 20000 /dev/zero | tr '\\0' x; echo; echo tail-never-seen"},
		}})
	r := waitFinished(t, s, execute(t, s, j.ID).ID, 90*time.Second)
	if r.Execution.Status != "succeeded" {
		t.Fatalf("execution %s (a 6s action under a 2s lease must keep its lease): %+v", r.Execution.Status, r.Results)
	}
	tr := r.Results[0]
	if !tr.OutputTruncated || tr.OutputLimitBytes != strconv.Itoa(limit) {
		t.Fatalf("truncated=%v limit=%s, want true and %d", tr.OutputTruncated, tr.OutputLimitBytes, limit)
	}
	if tr.Actions[0].Stdout != "done\n" {
		t.Fatalf("slow action stdout = %q", tr.Actions[0].Stdout)
	}
	loud := tr.Actions[1].Stdout
	marker := fmt.Sprintf("[opsconductor: output truncated: the per-task limit of %d bytes was reached]", limit)
	if !strings.Contains(loud, marker) {
		t.Fatalf("loud stdout has no truncation marker; ends with %q", loud[max(0, len(loud)-120):])
	}
	if strings.Contains(loud, "tail-never-seen") {
		t.Fatal("output past the cap was kept")
	}
	if kept := strings.Count(loud, "x") + len("done\n"); kept != limit {
		t.Fatalf("kept %d bytes of output, want exactly the cap %d", kept, limit)
	}

	// Large output is paged: 1000 bytes at a time, to the end.
	var all strings.Builder
	for offset := 0; ; offset += 1000 {
		var page struct {
			Results []struct {
				Actions []struct {
					Stdout      string `json:"stdout"`
					StdoutBytes string `json:"stdoutBytes"`
					OutputMore  bool   `json:"outputMore"`
				} `json:"actions"`
			} `json:"results"`
		}
		cptest.Must(t, http.StatusOK)(s.Do(t, "GET", fmt.Sprintf("/api/v1/executions/%s/results?outputOffset=%d&outputLimit=1000", r.Execution.ID, offset), nil, &page))
		a := page.Results[0].Actions[1]
		if len(a.Stdout) > 1000 || a.StdoutBytes != strconv.Itoa(len(loud)) {
			t.Fatalf("page at %d: %d bytes, total %s", offset, len(a.Stdout), a.StdoutBytes)
		}
		all.WriteString(a.Stdout)
		if !a.OutputMore {
			break
		}
	}
	if all.String() != loud {
		t.Fatal("the pages do not add up to the output")
	}
}
