package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// splitDeployment is the four services in four processes, each with its
// own database, behind `opsconductor gateway`.
type splitDeployment struct {
	procs   map[string]*cptest.Server // by service
	env     map[string]map[string]string
	gateway *cptest.Server
}

func startSplit(t *testing.T) *splitDeployment {
	t.Helper()
	services := []string{"jobs", "executions", "scheduling", "audit"}
	addrs := map[string]string{}
	for _, s := range services {
		addrs[s] = cptest.FreeAddr(t)
	}
	token := "split-test-service-token-0123456789abcdef"
	d := &splitDeployment{procs: map[string]*cptest.Server{}, env: map[string]map[string]string{}}
	prefix := "test-split-" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-")
	for _, s := range services {
		env := map[string]string{
			"OPSCONDUCTOR_SERVICES":      s,
			"OPSCONDUCTOR_ADDR":          addrs[s],
			"DATABASE_URL":               storetest.NewURL(t, store.Postgres), // a database of its own
			"REDIS_URL":                  redisURL,
			"OPSCONDUCTOR_BUS":           "redis",
			"OPSCONDUCTOR_BUS_PREFIX":    prefix,
			"OPSCONDUCTOR_SERVICE_TOKEN": token,
			"OPSCONDUCTOR_SECRET_KEY":    "b3BzY29uZHVjdG9yLWxhYi1rZXktbm90LXNlY3JldCE=",
		}
		for _, other := range services {
			if other != s {
				env["OPSCONDUCTOR_"+strings.ToUpper(other)+"_URL"] = "http://" + addrs[other]
			}
		}
		d.env[s] = env
		d.procs[s] = cptest.StartServer(t, s, env)
	}
	t.Cleanup(func() { cptest.DropRedisKeys(redisURL, prefix) })
	admin := d.procs["jobs"].Token
	gwAddr := cptest.FreeAddr(t)
	args := []string{"gateway", "--addr", gwAddr, "--insecure-http"}
	for _, s := range services {
		args = append(args, "--"+s+"-url", "http://"+addrs[s])
	}
	cptest.Start(t, "gateway", filepath.Join(cptest.Binaries(t), "opsconductor"), args, nil)
	d.gateway = &cptest.Server{URL: "http://" + gwAddr, Token: admin, Client: http.DefaultClient}
	cptest.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get(d.gateway.URL + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return d
}

// restart starts service s again on its address and database (after a kill).
func (d *splitDeployment) restart(t *testing.T, s string) {
	t.Helper()
	d.procs[s] = cptest.StartServer(t, s+" (again)", d.env[s])
}

// connectCode calls procedure on base over the Connect protocol as the
// admin and returns the error code ("" when it succeeded).
func connectCode(t *testing.T, base, token, procedure string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/"+procedure, bytes.NewReader([]byte("{}")))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connect-Protocol-Version", "1") // or the transcoder takes it for REST
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	var e struct {
		Code string `json:"code"`
	}
	body, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(body, &e)
	if e.Code == "" {
		return fmt.Sprintf("HTTP %d", resp.StatusCode)
	}
	return e.Code
}

// TestSplitMode runs the end-to-end job flow with the four services in
// four processes, each with its own PostgreSQL database, behind the
// gateway, which routes each call by its path: an agent enrolls, a job
// is created (jobs) and run (executions, reading the job from jobs), a
// schedule fires it (scheduling, firing through executions), and the
// events and call records of every process reach the audit service's
// hash-chained log. A process answers Unimplemented (404 on REST) for
// the services it does not run.
func TestSplitMode(t *testing.T) {
	t.Parallel()
	d := startSplit(t)
	gw := d.gateway
	gw.StartAgent(t, "split-agent", "role=split")
	gw.WaitAgents(t, 1)
	j := createJob(t, gw, map[string]any{"name": "split-job", "targets": []map[string]any{{"selector": "role=split"}},
		"actions": []map[string]any{{"command": "echo across four processes"}}})
	first := waitFinished(t, gw, execute(t, gw, j.ID).ID, 30*time.Second)
	if first.Execution.Status != "succeeded" || first.Results[0].Actions[0].Stdout != "across four processes\n" {
		t.Fatalf("execution through the split deployment: %+v", first)
	}

	// A schedule (saved by scheduling after executions checked the
	// admin's rights) fires the job through executions.
	at := time.Now().Add(2 * time.Second).UTC().Format(time.RFC3339Nano)
	cptest.Must(t, http.StatusOK)(gw.Do(t, "POST", "/api/v1/schedules", map[string]any{"schedule": map[string]any{
		"name": "split-once", "jobId": j.ID, "kind": "once", "at": at}}, nil))
	cptest.Eventually(t, 30*time.Second, func() error {
		var list struct {
			Executions []struct {
				Status  string `json:"status"`
				Trigger string `json:"trigger"`
			} `json:"executions"`
		}
		cptest.Must(t, http.StatusOK)(gw.Do(t, "GET", "/api/v1/executions?jobId="+j.ID, nil, &list))
		for _, e := range list.Executions {
			if e.Trigger == "schedule" && e.Status == "succeeded" {
				return nil
			}
		}
		return fmt.Errorf("no succeeded scheduled execution yet: %+v", list.Executions)
	})

	// The audit service has the other processes' events and call records.
	cptest.Eventually(t, 30*time.Second, func() error {
		var events struct {
			Events []struct {
				Type string `json:"type"`
			} `json:"events"`
		}
		cptest.Must(t, http.StatusOK)(gw.Do(t, "GET", "/api/v1/events?subject="+first.Execution.ID, nil, &events))
		if len(events.Events) == 0 {
			return fmt.Errorf("no events of execution %s in the audit service yet", first.Execution.ID)
		}
		var records struct {
			Records []struct {
				Action    string `json:"action"`
				ActorKind string `json:"actorKind"`
			} `json:"records"`
		}
		cptest.Must(t, http.StatusOK)(gw.Do(t, "GET", "/api/v1/audit?action="+url.QueryEscape("/opsconductor.v1.JobService/CreateJob"), nil, &records))
		if len(records.Records) != 1 {
			return fmt.Errorf("the jobs process's record of CreateJob: %+v", records.Records)
		}
		return nil
	})
	var verify struct {
		OK      bool   `json:"ok"`
		Records string `json:"records"`
	}
	cptest.Must(t, http.StatusOK)(gw.Do(t, "POST", "/api/v1/audit/verify", map[string]any{}, &verify))
	if !verify.OK {
		t.Fatalf("the audit log of the split deployment does not verify: %+v", verify)
	}

	// Each process answers for its own services only.
	for service, calls := range map[string][2]string{
		"jobs":       {"opsconductor.v1.JobService/ListJobs", "opsconductor.v1.ExecutionService/ListExecutions"},
		"executions": {"opsconductor.v1.ExecutionService/ListExecutions", "opsconductor.v1.JobService/ListJobs"},
		"scheduling": {"opsconductor.v1.ScheduleService/ListSchedules", "opsconductor.v1.AuditService/ListEvents"},
		"audit":      {"opsconductor.v1.AuditService/ListEvents", "opsconductor.v1.ScheduleService/ListSchedules"},
	} {
		p := d.procs[service]
		own, foreign := calls[0], calls[1]
		if code := connectCode(t, p.URL, gw.Token, own); code != "" {
			t.Errorf("the %s process asked for its own %s: %q, want success", service, own, code)
		}
		if code := connectCode(t, p.URL, gw.Token, foreign); code != "unimplemented" {
			t.Errorf("the %s process asked for %s: %q, want unimplemented", service, foreign, code)
		}
	}
	for service, path := range map[string]string{"jobs": "/api/v1/executions", "executions": "/api/v1/jobs", "scheduling": "/api/v1/audit", "audit": "/api/v1/jobs"} {
		if code := d.procs[service].Do(t, "GET", path, nil, nil); code != http.StatusNotFound {
			t.Errorf("the %s process asked for GET %s: HTTP %d, want 404", service, path, code)
		}
	}
}

// TestSplitModeAuditOutage kills the audit process: jobs still run (their
// events and call records wait in the other processes' outboxes), audit
// queries fail at once with the gateway's breaker open and a clear error;
// once the audit process is back the backlog reaches it, the breaker
// closes and the log still verifies.
func TestSplitModeAuditOutage(t *testing.T) {
	t.Parallel()
	d := startSplit(t)
	gw := d.gateway
	gw.StartAgent(t, "outage-agent", "role=outage")
	gw.WaitAgents(t, 1)
	j := createJob(t, gw, map[string]any{"name": "outage-job", "targets": []map[string]any{{"selector": "role=outage"}},
		"actions": []map[string]any{{"command": "echo while audit is down"}}})

	d.procs["audit"].Kill()
	during := waitFinished(t, gw, execute(t, gw, j.ID).ID, 30*time.Second)
	if during.Execution.Status != "succeeded" {
		t.Fatalf("execution while the audit service is down: %+v", during)
	}

	// Audit queries fail; after a few the breaker opens and says so.
	var last string
	cptest.Eventually(t, 30*time.Second, func() error {
		var e struct {
			Code    int    `json:"code"` // REST errors carry the gRPC code number
			Message string `json:"message"`
		}
		code := gw.Do(t, "GET", "/api/v1/audit", nil, &e)
		if code != http.StatusServiceUnavailable {
			return fmt.Errorf("audit query while the audit service is down: HTTP %d %+v", code, e)
		}
		last = e.Message
		if !strings.Contains(e.Message, "the audit service is unavailable: its circuit breaker is open") {
			return fmt.Errorf("breaker not open yet: %s", e.Message)
		}
		return nil
	})
	t.Logf("audit query with the breaker open: %s", last)
	var health struct {
		Checks map[string]string `json:"checks"`
	}
	cptest.Must(t, http.StatusOK)(cptest.DoJSON(t, "GET", gw.URL+"/health", nil, &health))
	if !strings.HasPrefix(health.Checks["service.audit"], "breaker open") || !strings.HasPrefix(health.Checks["service.jobs"], "breaker closed") {
		t.Fatalf("gateway health: %+v", health.Checks)
	}

	// Back: the backlog arrives and the breaker closes.
	d.restart(t, "audit")
	cptest.Eventually(t, 60*time.Second, func() error {
		var events struct {
			Events []struct {
				Type    string `json:"type"`
				Payload struct {
					Status string `json:"status"`
				} `json:"payload"`
			} `json:"events"`
		}
		if code := gw.Do(t, "GET", "/api/v1/events?subject="+during.Execution.ID, nil, &events); code != http.StatusOK {
			return fmt.Errorf("events: HTTP %d", code)
		}
		finished := false
		for _, e := range events.Events {
			finished = finished || (e.Type == "execution.status" && e.Payload.Status == "succeeded")
		}
		if !finished {
			return fmt.Errorf("the events of execution %s have not all arrived: %+v", during.Execution.ID, events.Events)
		}
		var records struct {
			Records []struct {
				Action   string    `json:"action"`
				Time     time.Time `json:"time"`
				CalledAt time.Time `json:"calledAt"`
			} `json:"records"`
		}
		if code := gw.Do(t, "GET", "/api/v1/audit?action="+url.QueryEscape("/opsconductor.v1.ExecutionService/ExecuteJob"), nil, &records); code != http.StatusOK {
			return fmt.Errorf("audit: HTTP %d", code)
		}
		if len(records.Records) != 1 {
			return fmt.Errorf("the record of the ExecuteJob made during the outage: %+v", records.Records)
		}
		// It keeps the time of the call, from before the audit service
		// came back and appended it.
		if r := records.Records[0]; r.CalledAt.IsZero() || !r.CalledAt.Before(r.Time) {
			t.Fatalf("the record made during the outage: called at %v, appended at %v", r.CalledAt, r.Time)
		}
		return nil
	})
	// The breaker lets a few trial calls through, and closes once they
	// have all succeeded.
	cptest.Eventually(t, 30*time.Second, func() error {
		cptest.Must(t, http.StatusOK)(gw.Do(t, "GET", "/api/v1/audit", nil, nil))
		cptest.Must(t, http.StatusOK)(cptest.DoJSON(t, "GET", gw.URL+"/health", nil, &health))
		if !strings.HasPrefix(health.Checks["service.audit"], "breaker closed") {
			return fmt.Errorf("gateway health after the audit service came back: %+v", health.Checks)
		}
		return nil
	})
	var verify struct {
		OK bool `json:"ok"`
	}
	cptest.Must(t, http.StatusOK)(gw.Do(t, "POST", "/api/v1/audit/verify", map[string]any{}, &verify))
	if !verify.OK {
		t.Fatal("the audit log does not verify after the outage")
	}
}
