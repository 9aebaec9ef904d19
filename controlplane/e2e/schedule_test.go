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

// TestScheduleAPI: the seed's schedule paths over REST: create, list by
// job, get, preview, pause, resume, update (and a stale version), delete;
// bad input is a 400 that says what is wrong; a viewer may read but not
// write.
func TestScheduleAPI(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	s.StartAgent(t, "web-1", "role=web")
	s.WaitAgents(t, 1)
	j := createJob(t, s, map[string]any{"name": "nightly", "targets": []map[string]any{{"selector": "role=web"}},
		"actions": []map[string]any{{"command": "echo nightly"}}})

	type schedule struct {
		ID           string `json:"id"`
		Version      string `json:"version"`
		State        string `json:"state"`
		NextFireTime string `json:"nextFireTime"`
	}
	var created struct {
		Schedule schedule `json:"schedule"`
	}
	body := map[string]any{"schedule": map[string]any{"name": "nightly", "jobId": j.ID, "kind": "cron", "cron": "0 3 * * *", "timeZone": "Europe/Berlin"}}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/schedules", body, &created))
	if created.Schedule.State != "active" || created.Schedule.NextFireTime == "" {
		t.Fatalf("created = %+v", created)
	}
	id := created.Schedule.ID
	var list struct {
		Schedules []schedule `json:"schedules"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/schedules/job/"+j.ID, nil, &list))
	if len(list.Schedules) != 1 || list.Schedules[0].ID != id {
		t.Fatalf("schedules of the job = %+v", list)
	}
	var preview struct {
		Next []struct {
			Local string `json:"local"`
			UTC   string `json:"utc"`
		} `json:"next"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/schedules/validate", map[string]any{"schedule": body["schedule"], "count": 3}, &preview))
	if len(preview.Next) != 3 || !strings.HasSuffix(preview.Next[0].Local, "T03:00:00+01:00") && !strings.HasSuffix(preview.Next[0].Local, "T03:00:00+02:00") {
		t.Fatalf("preview = %+v", preview)
	}
	var bad struct {
		Message string `json:"message"`
	}
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/schedules", map[string]any{"schedule": map[string]any{
		"jobId": j.ID, "kind": "cron", "cron": "0 3 * * *", "timeZone": "Europe/Atlantis"}}, &bad))
	if !strings.Contains(bad.Message, "schedule.time_zone") || !strings.Contains(bad.Message, "unknown IANA time zone") {
		t.Fatalf("unknown zone: %q", bad.Message)
	}
	cptest.Must(t, http.StatusNotFound)(s.Do(t, "POST", "/api/v1/schedules", map[string]any{"schedule": map[string]any{
		"jobId": "no-such-job", "kind": "cron", "cron": "0 3 * * *"}}, nil))

	var one struct {
		Schedule schedule `json:"schedule"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/schedules/"+id+"/pause", map[string]any{}, &one))
	if one.Schedule.State != "paused" {
		t.Fatalf("paused = %+v", one)
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/schedules/"+id+"/resume", map[string]any{}, &one))
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/schedules/"+id, nil, &one))
	if one.Schedule.State != "active" || one.Schedule.Version != "3" {
		t.Fatalf("after resume = %+v", one)
	}
	update := map[string]any{"schedule": map[string]any{"id": id, "version": "1", "jobId": j.ID, "kind": "interval", "every": "3600s"}}
	cptest.Must(t, http.StatusConflict)(s.Do(t, "PUT", "/api/v1/schedules/"+id, update, nil))
	update["schedule"].(map[string]any)["version"] = "3"
	cptest.Must(t, http.StatusOK)(s.Do(t, "PUT", "/api/v1/schedules/"+id, update, &one))

	viewer := token(t, s, "viewer-sched", "viewer")
	if code := as(t, s, viewer, "GET", "/api/v1/schedules/"+id, nil, nil); code != http.StatusOK {
		t.Fatalf("viewer read: HTTP %d", code)
	}
	if code := as(t, s, viewer, "DELETE", "/api/v1/schedules/"+id, nil, nil); code != http.StatusForbidden {
		t.Fatalf("viewer delete: HTTP %d", code)
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "DELETE", "/api/v1/schedules/"+id, nil, nil))
	cptest.Must(t, http.StatusNotFound)(s.Do(t, "GET", "/api/v1/schedules/"+id, nil, nil))
}

// TestScheduleCLI: opsconductor schedule preview, create, list, fires,
// pause and delete, the way an operator would type them; the embedded
// (SQLite) store's single node fires the schedule.
func TestScheduleCLI(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)})
	s.StartAgent(t, "clock-agent", "role=clock")
	s.WaitAgents(t, 1)
	createJob(t, s, map[string]any{"name": "clocked", "targets": []map[string]any{{"selector": "role=clock"}},
		"actions": []map[string]any{{"command": "date"}}})

	// New York springs forward on 10 March 2030: 02:30 does not exist and
	// fires at 03:00 EDT. (A date far enough ahead that the test keeps
	// working for years: the preview starts at the window's start or now.)
	out, errOut, code := cli(t, s, "schedule", "preview", "--cron", "30 2 * * *", "--zone", "America/New_York", "--start", "2030-03-09T00:00:00Z", "--count", "2")
	if code != 0 || !strings.Contains(out, "2030-03-10T03:00:00-04:00") || !strings.Contains(out, "2030-03-10T07:00:00Z") {
		t.Fatalf("preview across the spring-forward night: code %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli(t, s, "schedule", "preview", "--cron", "0 9 * * *", "--zone", "Mars/Olympus")
	if code == 0 || !strings.Contains(errOut, "unknown IANA time zone") {
		t.Fatalf("a bad zone: code %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli(t, s, "schedule", "create", "--job", "clocked", "--cron", "@every 1s", "--overlap", "allow", "--name", "every second")
	if code != 0 || !strings.Contains(out, "created for job clocked") {
		t.Fatalf("create: code %d\n%s%s", code, out, errOut)
	}
	id := strings.Fields(out)[1]
	cptest.Eventually(t, 30*time.Second, func() error {
		out, _, _ := cli(t, s, "schedule", "fires", id)
		if strings.Count(out, " fired ") < 2 {
			return fmt.Errorf("fires so far:\n%s", out)
		}
		return nil
	})
	out, _, _ = cli(t, s, "schedule", "list", "--job", "clocked")
	if !strings.Contains(out, id) || !strings.Contains(out, "@every 1s") || !strings.Contains(out, "active") {
		t.Fatalf("list:\n%s", out)
	}
	if out, errOut, code = cli(t, s, "schedule", "pause", id); code != 0 {
		t.Fatalf("pause: %s%s", out, errOut)
	}
	if out, errOut, code = cli(t, s, "schedule", "delete", id); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: %s%s", out, errOut)
	}
}
