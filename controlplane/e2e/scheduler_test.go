package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

type scheduleFire struct {
	ScheduledFor time.Time `json:"scheduledFor"`
	Outcome      string    `json:"outcome"`
	Reason       string    `json:"reason"`
	ExecutionID  string    `json:"executionId"`
}

func fires(t *testing.T, s *cptest.Server, id string) []scheduleFire {
	t.Helper()
	var out struct {
		Fires []scheduleFire `json:"fires"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/schedules/"+id+"/fires?limit=1000", nil, &out))
	return out.Fires
}

// TestSchedulerFailover: two control-plane processes share Postgres; an
// @every 1s schedule fires; the active scheduler is SIGKILLed and the
// other takes over. Every nominal slot from the first to the last is
// recorded exactly once, fired or missed (misfire policy skip), never
// twice, and each fired slot made exactly one execution.
func TestSchedulerFailover(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)}
	a := cptest.StartServer(t, "server-a", env)
	b := cptest.StartServer(t, "server-b", env)
	b.Token = a.Token
	a.StartAgent(t, "worker", "role=worker")
	a.WaitAgents(t, 1)
	j := createJob(t, a, map[string]any{"name": "tick", "targets": []map[string]any{{"selector": "role=worker"}},
		"actions": []map[string]any{{"command": "true"}}})
	var created struct {
		Schedule struct {
			ID string `json:"id"`
		} `json:"schedule"`
	}
	cptest.Must(t, http.StatusOK)(a.Do(t, "POST", "/api/v1/schedules", map[string]any{"schedule": map[string]any{
		"jobId": j.ID, "kind": "cron", "cron": "@every 1s", "overlapPolicy": "allow", "misfireGrace": "2s"}}, &created))
	id := created.Schedule.ID
	waitFires := func(s *cptest.Server, n int) {
		t.Helper()
		cptest.Eventually(t, 30*time.Second, func() error {
			if got := len(fires(t, s, id)); got < n {
				return fmt.Errorf("%d fires, want %d", got, n)
			}
			return nil
		})
	}
	waitFires(a, 3)
	active, standby := a, b
	if !strings.Contains(a.Output(), "this replica is the active scheduler") {
		active, standby = b, a
	}
	before := len(fires(t, standby, id))
	active.Process.Kill()
	waitFires(standby, before+4)
	if !strings.Contains(standby.Output(), "this replica is the active scheduler") {
		t.Fatal("the standby never became the active scheduler")
	}
	cptest.Must(t, http.StatusOK)(standby.Do(t, "POST", "/api/v1/schedules/"+id+"/pause", map[string]any{}, nil))

	got := fires(t, standby, id) // newest first
	seen := map[time.Time]bool{}
	execs := map[string]bool{}
	fired := 0
	for i, f := range got {
		if seen[f.ScheduledFor] {
			t.Fatalf("slot %s recorded twice", f.ScheduledFor)
		}
		seen[f.ScheduledFor] = true
		if i > 0 && got[i-1].ScheduledFor.Sub(f.ScheduledFor) != time.Second {
			t.Fatalf("slots %s and %s are not one second apart: a slot was lost", f.ScheduledFor, got[i-1].ScheduledFor)
		}
		switch f.Outcome {
		case "fired":
			fired++
			if f.ExecutionID == "" || execs[f.ExecutionID] {
				t.Fatalf("fired slot %s has execution %q (seen before: %v)", f.ScheduledFor, f.ExecutionID, execs[f.ExecutionID])
			}
			execs[f.ExecutionID] = true
		case "missed":
		case "firing":
			// The slot claimed last before the pause may still be in flight.
			if i != 0 {
				t.Fatalf("slot %s left firing", f.ScheduledFor)
			}
		default:
			t.Fatalf("slot %s: %s (%s)", f.ScheduledFor, f.Outcome, f.Reason)
		}
	}
	var list struct {
		Executions []struct {
			ID         string `json:"id"`
			Trigger    string `json:"trigger"`
			ScheduleID string `json:"scheduleId"`
		} `json:"executions"`
	}
	cptest.Must(t, http.StatusOK)(standby.Do(t, "GET", "/api/v1/executions?jobId="+j.ID+"&pageSize=100", nil, &list))
	if len(list.Executions) < fired {
		t.Fatalf("%d executions for %d fired slots", len(list.Executions), fired)
	}
	for _, e := range list.Executions {
		if !execs[e.ID] && len(list.Executions) > fired+1 {
			t.Fatalf("execution %s belongs to no recorded fire: a slot ran twice", e.ID)
		}
	}
	var one struct {
		Execution struct {
			Trigger    string `json:"trigger"`
			ScheduleID string `json:"scheduleId"`
		} `json:"execution"`
	}
	for e := range execs {
		cptest.Must(t, http.StatusOK)(standby.Do(t, "GET", "/api/v1/executions/"+e, nil, &one))
		if one.Execution.Trigger != "schedule" || one.Execution.ScheduleID != id {
			t.Fatalf("execution %s: trigger %q schedule %q", e, one.Execution.Trigger, one.Execution.ScheduleID)
		}
		break
	}
	t.Logf("%d slots: %d fired, the rest missed across the fail-over", len(got), fired)
}

// TestScheduleOverlapSkip: an @every 1s schedule of a job that takes 3s,
// with overlap_policy skip, records skipped fires while its run is still
// going, and starts no extra runs.
func TestScheduleOverlapSkip(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)})
	s.StartAgent(t, "slow-agent", "role=slow")
	s.WaitAgents(t, 1)
	j := createJob(t, s, map[string]any{"name": "slow", "targets": []map[string]any{{"selector": "role=slow"}},
		"actions": []map[string]any{{"command": "sleep 3"}}})
	var created struct {
		Schedule struct {
			ID string `json:"id"`
		} `json:"schedule"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/schedules", map[string]any{"schedule": map[string]any{
		"jobId": j.ID, "kind": "cron", "cron": "@every 1s", "overlapPolicy": "skip"}}, &created))
	id := created.Schedule.ID
	cptest.Eventually(t, 30*time.Second, func() error {
		skipped := 0
		for _, f := range fires(t, s, id) {
			if f.Outcome == "skipped" && strings.Contains(f.Reason, "still running") {
				skipped++
			}
		}
		if skipped < 3 {
			return fmt.Errorf("%d skipped fires", skipped)
		}
		return nil
	})
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/schedules/"+id+"/pause", map[string]any{}, nil))
	fired := 0
	for _, f := range fires(t, s, id) {
		if f.Outcome == "fired" {
			fired++
		}
	}
	var list struct {
		Executions []struct {
			ID        string    `json:"id"`
			CreatedAt time.Time `json:"createTime"`
			EndTime   time.Time `json:"endTime"`
		} `json:"executions"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions?jobId="+j.ID+"&pageSize=100", nil, &list))
	if len(list.Executions) != fired {
		t.Fatalf("%d executions for %d fired slots", len(list.Executions), fired)
	}
	// No two runs of the schedule overlapped.
	for i := 1; i < len(list.Executions); i++ {
		newer, older := list.Executions[i-1], list.Executions[i]
		if !older.EndTime.IsZero() && newer.CreatedAt.Before(older.EndTime) {
			t.Fatalf("execution %s started at %s, before %s ended at %s", newer.ID, newer.CreatedAt, older.ID, older.EndTime)
		}
	}
}

// TestScheduleKeepsItsCreatorsRights: a developer schedules a job on dev
// agents, then changes the job to reach production (protected) agents,
// which developers may not run on. The schedule's later fires fail, saying
// why; nothing runs on production.
func TestScheduleKeepsItsCreatorsRights(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)})
	s.StartAgent(t, "prod-1", "env=prod")
	s.StartAgent(t, "dev-1", "env=dev")
	s.WaitAgents(t, 2)
	dev := token(t, s, "dev-scheduler", "developer")
	var created struct {
		Job job `json:"job"`
	}
	body := map[string]any{"name": "sneaky", "targets": []map[string]any{{"selector": "env=dev"}}, "actions": []map[string]any{{"command": "true"}}}
	cptest.Must(t, http.StatusOK)(as(t, s, dev, "POST", "/api/v1/jobs", body, &created))
	var sched struct {
		Schedule struct {
			ID string `json:"id"`
		} `json:"schedule"`
	}
	cptest.Must(t, http.StatusOK)(as(t, s, dev, "POST", "/api/v1/schedules", map[string]any{"schedule": map[string]any{
		"jobId": created.Job.ID, "kind": "cron", "cron": "@every 1s", "overlapPolicy": "allow"}}, &sched))
	id := sched.Schedule.ID
	cptest.Eventually(t, 30*time.Second, func() error {
		for _, f := range fires(t, s, id) {
			if f.Outcome == "fired" {
				return nil
			}
		}
		return fmt.Errorf("no fire yet")
	})
	body["id"], body["version"] = created.Job.ID, "1"
	body["targets"] = []map[string]any{{"selector": "env=prod"}}
	cptest.Must(t, http.StatusOK)(as(t, s, dev, "PUT", "/api/v1/jobs/"+created.Job.ID, body, nil))
	cptest.Eventually(t, 30*time.Second, func() error {
		for _, f := range fires(t, s, id) {
			if f.Outcome == "failed" && strings.Contains(f.Reason, "executions:run-protected") {
				return nil
			}
		}
		return fmt.Errorf("no refused fire yet")
	})
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/schedules/"+id+"/pause", map[string]any{}, nil))
	var list struct {
		Executions []struct {
			Tasks []struct {
				AgentName string `json:"agentName"`
			} `json:"tasks"`
		} `json:"executions"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions?jobId="+created.Job.ID+"&pageSize=100", nil, &list))
	for _, e := range list.Executions {
		for _, task := range e.Tasks {
			if task.AgentName == "prod-1" {
				t.Fatal("the schedule ran the job on a protected agent")
			}
		}
	}
}
