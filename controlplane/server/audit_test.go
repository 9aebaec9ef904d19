package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/opsconductor/opsconductor/controlplane/audit"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/config"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// TestEveryMutatingCallIsAudited calls every RPC the server mounts whose
// access option says it mutates (found from the descriptors, so a new one
// is covered without editing this test), as the admin, with an empty
// request: whatever the outcome, each leaves exactly one record in the
// audit log. A refused read is recorded too, secret values appear only
// as keyed hashes, and the chain verifies.
func TestEveryMutatingCallIsAudited(t *testing.T) {
	srv := startApp(t, store.SQLite)
	var want []string
	for _, sd := range Services() {
		methods := sd.Methods()
		for i := 0; i < methods.Len(); i++ {
			md := methods.Get(i)
			acc, _ := auth.AccessOf(md)
			if !acc.GetMutates() || acc.GetAudit() == opsconductorv1.AuditMode_AUDIT_MODE_EVENTS_ONLY {
				continue
			}
			if md.IsStreamingClient() || md.IsStreamingServer() {
				t.Fatalf("%s mutates and streams: this test sends unary calls only", md.FullName())
			}
			procedure := fmt.Sprintf("/%s/%s", sd.FullName(), md.Name())
			want = append(want, procedure)
			code := cptest.DoJSONHeader(t, "POST", srv.url+procedure, http.Header{"Authorization": {"Bearer " + srv.token}, "Connect-Protocol-Version": {"1"}}, map[string]any{}, nil)
			t.Logf("%s: HTTP %d", procedure, code)
		}
	}
	if len(want) < 30 {
		t.Fatalf("only %d mutating RPCs found: the descriptors were not read", len(want))
	}
	// A refused read, and a secret in a request.
	cptest.Must(t, http.StatusUnauthorized)(cptest.DoJSON(t, "GET", srv.url+"/api/v1/jobs", nil, nil))
	cptest.DoJSONHeader(t, "POST", srv.url+"/opsconductor.v1.CredentialService/CreateCredential",
		http.Header{"Authorization": {"Bearer " + srv.token}, "Connect-Protocol-Version": {"1"}}, map[string]any{"credential": map[string]any{"name": "db"}, "value": "hunter2-very-secret"}, nil)

	log := audit.NewLog(srv.openSchema(t, audit.Schema))
	recs, _, err := log.List(context.Background(), audit.LogFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	var secret audit.Record
	for _, r := range recs {
		got[r.Action]++
		if strings.Contains(r.Request, "hunter2") {
			t.Fatalf("a secret value in clear in the audit log: %+v", r)
		}
		if r.Action == "/opsconductor.v1.CredentialService/CreateCredential" && strings.Contains(r.Request, "hmac-sha256:") {
			secret = r
		}
	}
	for _, p := range want {
		n := got[p]
		if p == "/opsconductor.v1.CredentialService/CreateCredential" {
			n-- // called twice
		}
		if n != 1 {
			t.Errorf("%s: %d audit records, want 1", p, n)
		}
	}
	if got["/opsconductor.v1.JobService/ListJobs"] != 1 {
		t.Errorf("the refused ListJobs left %d records, want 1", got["/opsconductor.v1.JobService/ListJobs"])
	}
	if secret.Seq == 0 || secret.Actor == "" || secret.ActorKind != "token" || secret.Roles == "" {
		t.Errorf("the credential call's record: %+v; want the value as a keyed hash and the caller named", secret)
	}
	for _, r := range recs {
		if r.Action == "/opsconductor.v1.JobService/ListJobs" && (r.Outcome != "unauthenticated" || r.ActorKind != "anonymous") {
			t.Errorf("the refused call's record: %+v", r)
		}
	}
	v, err := log.Verify(context.Background())
	if err != nil || !v.OK || v.Records != int64(len(recs)) {
		t.Fatalf("verify: %+v (%v)", v, err)
	}
}

// TestEventsAndAuditAPI: the REST paths over what the audit service
// keeps: the services' events (through the bus), an external event,
// the audit log paged, and its verification.
func TestEventsAndAuditAPI(t *testing.T) {
	srv := startApp(t, store.SQLite)
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/jobs", validJob("audited"), nil))
	cptest.Must(t, http.StatusOK)(cptest.DoJSONHeader(t, "POST", srv.url+"/api/v1/jobs",
		http.Header{"Authorization": {"Bearer " + srv.token}, "X-Request-ID": {"change-1234"}}, validJob("audited-too"), nil))

	var st rpcStatus
	cptest.Must(t, http.StatusBadRequest)(srv.do(t, "POST", "/api/v1/events", map[string]any{"type": "execution.completed"}, &st))
	if fmt.Sprint(st.fields()) != "[type]" {
		t.Fatalf("a service family from outside: %+v", st)
	}
	var pub struct {
		ID string `json:"id"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/events", map[string]any{"type": "external.deploy_finished", "subject": "web",
		"correlationId": "change-42", "payload": map[string]any{"version": "1.2.3"}}, &pub))
	type eventsPage struct {
		Events []struct {
			ID, Type, Source, Subject, CorrelationID string
			Payload                                  map[string]any
		} `json:"events"`
		NextPageToken string `json:"nextPageToken"`
	}
	var ext eventsPage
	cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/api/v1/events?type=external.*", nil, &ext))
	if len(ext.Events) != 1 || ext.Events[0].ID != pub.ID || ext.Events[0].Payload["version"] != "1.2.3" || ext.Events[0].CorrelationID != "change-42" ||
		!strings.HasPrefix(ext.Events[0].Source, "external:") {
		t.Fatalf("external events: %+v", ext)
	}
	// The services' own events arrive through the outbox and the bus.
	cptest.Eventually(t, 20*time.Second, func() error {
		var jobs eventsPage
		if code := srv.do(t, "GET", "/api/v1/events?type=job.created", nil, &jobs); code != http.StatusOK {
			return fmt.Errorf("HTTP %d", code)
		}
		if len(jobs.Events) != 2 {
			return fmt.Errorf("%d job.created events", len(jobs.Events))
		}
		return nil
	})
	// The event carries the request's correlation id.
	var byRequest eventsPage
	cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/api/v1/events?correlationId=change-1234", nil, &byRequest))
	if len(byRequest.Events) != 1 || byRequest.Events[0].Type != "job.created" {
		t.Fatalf("events of request change-1234: %+v", byRequest)
	}

	// The audit log, a record a page.
	type auditPage struct {
		Records []struct {
			Seq     string `json:"seq"`
			Action  string `json:"action"`
			Outcome string `json:"outcome"`
		} `json:"records"`
		NextPageToken string `json:"nextPageToken"`
	}
	var actions []string
	token := ""
	for range 10 {
		var page auditPage
		cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/api/v1/audit?action=/opsconductor.v1.JobService/CreateJob&pageSize=1&pageToken="+token, nil, &page))
		for _, r := range page.Records {
			actions = append(actions, r.Action+" "+r.Outcome)
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	if fmt.Sprint(actions) != "[/opsconductor.v1.JobService/CreateJob ok /opsconductor.v1.JobService/CreateJob ok]" {
		t.Fatalf("audit records of CreateJob: %v", actions)
	}
	var v struct {
		OK      bool   `json:"ok"`
		Records string `json:"records"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/audit/verify", map[string]any{}, &v))
	if !v.OK || v.Records == "" || v.Records == "0" {
		t.Fatalf("verify: %+v", v)
	}
}

// TestMetricsMatchAHandCountedFixture writes executions, agents and
// schedule fires straight into the services' stores and checks
// GET /api/v1/metrics against numbers counted by hand (in the comments).
func TestMetricsMatchAHandCountedFixture(t *testing.T) {
	srv := startApp(t, store.SQLite)
	ctx := context.Background()
	execDB, agentsDB, schedDB := srv.openSchema(t, "executions"), srv.openSchema(t, "agents"), srv.openSchema(t, "scheduling")
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	// id, job, status, created (minutes after t0), duration (s; 0: not finished; -1: not started)
	fixture := []struct {
		id, job, status string
		createdMin      int
		durSec          int
	}{
		{"e1", "backup", "succeeded", 1, 10},
		{"e2", "backup", "succeeded", 2, 20},
		{"e3", "backup", "failed", 3, 30},
		{"e4", "backup", "succeeded", 4, 40},
		{"e5", "backup", "running", 5, 0},
		{"e6", "deploy", "succeeded", 6, 60},
		{"e7", "deploy", "cancelled", 7, 5},
		{"e8", "deploy", "queued", 8, -1},
		{"e9", "deploy", "succeeded", -1, 1000}, // before the window
	}
	for _, f := range fixture {
		created := t0.Add(time.Duration(f.createdMin) * time.Minute)
		var started, finished any
		if f.durSec >= 0 {
			started = created.Add(time.Second)
		}
		if f.durSec > 0 {
			finished = created.Add(time.Second + time.Duration(f.durSec)*time.Second)
		}
		if _, err := execDB.ExecContext(ctx, `INSERT INTO executions (id, job_id, job_name, job_version, snapshot, status, correlation_id, created_at, started_at, finished_at)
			VALUES ($1, $2, $3, 1, '{}', $4, '', $5, $6, $7)`, f.id, "job-"+f.job, f.job, f.status, created, started, finished); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC()
	for i, a := range []struct {
		seen    time.Time
		revoked bool
	}{{now, false}, {now.Add(-24 * time.Hour), false}, {now, true}} {
		if _, err := agentsDB.ExecContext(ctx, `INSERT INTO agents (id, name, labels, hostname, os, arch, agent_version, credential_hash, enrolled_at, last_seen_at, revoked)
			VALUES ($1, $2, '{}', 'h', 'linux', 'amd64', 'dev', 'x', $3, $4, $5)`, fmt.Sprintf("a%d", i), fmt.Sprintf("agent-%d", i), now, a.seen, a.revoked); err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range []struct {
		outcome string
		lateMS  int64
		min     int
	}{{"fired", 100, 1}, {"fired", 300, 2}, {"fired", 2000, 3}, {"missed", 0, 4}, {"skipped", 0, 5}, {"fired", 9000, -5}} {
		if _, err := schedDB.ExecContext(ctx, `INSERT INTO schedule_executions (schedule_id, scheduled_for, lateness_ms, outcome) VALUES ($1, $2, $3, $4)`,
			fmt.Sprintf("s%d", i), t0.Add(time.Duration(f.min)*time.Minute), f.lateMS, f.outcome); err != nil {
			t.Fatal(err)
		}
	}

	var m struct {
		Executions         string            `json:"executions"`
		ExecutionsByStatus map[string]string `json:"executionsByStatus"`
		SuccessRate        float64           `json:"successRate"`
		Duration           struct {
			Count                              string
			P50Seconds, P95Seconds, MaxSeconds float64
		} `json:"duration"`
		Jobs []struct {
			JobName     string            `json:"jobName"`
			Executions  string            `json:"executions"`
			ByStatus    map[string]string `json:"byStatus"`
			SuccessRate float64           `json:"successRate"`
			Duration    struct{ P50Seconds, P95Seconds float64 }
		} `json:"jobs"`
		AgentsOnline  string `json:"agentsOnline"`
		AgentsOffline string `json:"agentsOffline"`
		Schedules     struct {
			FiresByOutcome                                             map[string]string
			LatenessP50Seconds, LatenessP95Seconds, LatenessMaxSeconds float64
		} `json:"schedules"`
	}
	q := "/api/v1/metrics?startTime=" + t0.Format(time.RFC3339) + "&endTime=" + t0.Add(time.Hour).Format(time.RFC3339)
	cptest.Must(t, http.StatusOK)(srv.do(t, "GET", q, nil, &m))
	got := fmt.Sprintf("%+v", m)
	check := func(what string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s is wrong in %s", what, got)
		}
	}
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	// 8 in the window (e9 is before it): succeeded e1 e2 e4 e6, failed e3,
	// cancelled e7, running e5, queued e8.
	check("executions", m.Executions == "8")
	check("by status", fmt.Sprint(m.ExecutionsByStatus) == "map[cancelled:1 failed:1 queued:1 running:1 succeeded:4]")
	// 4 succeeded of 6 finished.
	check("success rate", near(m.SuccessRate, 4.0/6))
	// Finished durations 5 10 20 30 40 60: p50 (rank 3) 20, p95 (rank 6) 60.
	check("durations", m.Duration.Count == "6" && near(m.Duration.P50Seconds, 20) && near(m.Duration.P95Seconds, 60) && near(m.Duration.MaxSeconds, 60))
	// backup: 5, 3 of 4 finished succeeded, durations 10 20 30 40 (p50 rank
	// 2: 20, p95 rank 4: 40); deploy: 3, 1 of 2, durations 5 60.
	check("jobs", len(m.Jobs) == 2 && m.Jobs[0].JobName == "backup" && m.Jobs[0].Executions == "5" && near(m.Jobs[0].SuccessRate, 0.75) &&
		near(m.Jobs[0].Duration.P50Seconds, 20) && near(m.Jobs[0].Duration.P95Seconds, 40) &&
		m.Jobs[1].JobName == "deploy" && m.Jobs[1].Executions == "3" && near(m.Jobs[1].SuccessRate, 0.5) &&
		near(m.Jobs[1].Duration.P50Seconds, 5) && near(m.Jobs[1].Duration.P95Seconds, 60))
	// One seen now, one a day ago, one revoked (not counted).
	check("agents", m.AgentsOnline == "1" && m.AgentsOffline == "1")
	// In the window: fired 0.1 0.3 2 s (p50 rank 2: 0.3, p95 rank 3: 2),
	// one missed, one skipped; the fire 5 minutes before is not counted.
	check("schedules", fmt.Sprint(m.Schedules.FiresByOutcome) == "map[fired:3 missed:1 skipped:1]" && near(m.Schedules.LatenessP50Seconds, 0.3) &&
		near(m.Schedules.LatenessP95Seconds, 2) && near(m.Schedules.LatenessMaxSeconds, 2))

	var st rpcStatus
	cptest.Must(t, http.StatusBadRequest)(srv.do(t, "GET", "/api/v1/metrics?startTime="+t0.Format(time.RFC3339)+"&endTime="+t0.Format(time.RFC3339), nil, &st))
	if fmt.Sprint(st.fields()) != "[start_time]" {
		t.Fatalf("an empty window: %+v", st)
	}
}

// TestWebhookOverREST: a webhook made through the API gets the job.created
// event of a job made through the API, signed with its secret.
func TestWebhookOverREST(t *testing.T) {
	srv := startApp(t, store.SQLite)
	const secret = "a-secret-of-some-length"
	got := make(chan string, 10)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := audit.VerifySignature(secret, r.Header.Get("X-OpsConductor-Signature"), body, time.Now(), time.Minute); err != nil {
			got <- "bad signature: " + err.Error()
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		got <- r.Header.Get("X-OpsConductor-Event")
	}))
	defer receiver.Close()
	var created struct {
		Webhook struct {
			ID string `json:"id"`
		} `json:"webhook"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/webhooks", map[string]any{"webhook": map[string]any{"name": "chat", "url": receiver.URL,
		"eventTypes": []string{"job.created", "external.*"}}, "secret": secret}, &created))
	var listed struct {
		Webhooks []map[string]any `json:"webhooks"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/api/v1/webhooks", nil, &listed))
	if len(listed.Webhooks) != 1 || fmt.Sprint(listed.Webhooks[0]["secret"]) != "<nil>" {
		t.Fatalf("webhooks: %+v", listed)
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/jobs", validJob("announced"), nil))
	select {
	case e := <-got:
		if e != "job.created" {
			t.Fatalf("the receiver got %q", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery")
	}
	// An external system's event reaches webhooks too (through the audit
	// schema's outbox and the bus).
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/events", map[string]any{"type": "external.deploy_finished", "subject": "web"}, nil))
	select {
	case e := <-got:
		if e != "external.deploy_finished" {
			t.Fatalf("the receiver got %q", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery of the external event")
	}
	cptest.Eventually(t, 10*time.Second, func() error {
		var log struct {
			Attempts []struct {
				StatusCode int    `json:"statusCode"`
				State      string `json:"state"`
			} `json:"attempts"`
		}
		cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/api/v1/webhooks/"+created.Webhook.ID+"/deliveries", nil, &log))
		if len(log.Attempts) != 2 || log.Attempts[0].StatusCode != 200 || log.Attempts[0].State != "delivered" {
			return fmt.Errorf("delivery log: %+v", log)
		}
		return nil
	})
}

// TestServerOnRabbitMQ: a whole control plane with --bus rabbitmq (the
// machine's broker, a prefix of the test's own): a job's event reaches
// the audit store through RabbitMQ, and /metrics shows the connection.
func TestServerOnRabbitMQ(t *testing.T) {
	prefix := "srvtest-" + fmt.Sprint(time.Now().UnixNano())
	srv := startApp(t, store.SQLite, func(c *config.Config) {
		c.Bus, c.RabbitMQURL, c.BusPrefix = "rabbitmq", "amqp://guest:guest@127.0.0.1:5672/", prefix
	})
	t.Cleanup(func() {
		conn, err := amqp.Dial("amqp://guest:guest@127.0.0.1:5672/")
		if err != nil {
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return
		}
		defer ch.Close()
		for _, g := range []string{audit.Group, audit.NotifyGroup} {
			_, _ = ch.QueueDelete(prefix+".group."+g, false, false, false)
			_, _ = ch.QueueDelete(prefix+".dead."+g, false, false, false)
		}
		_ = ch.ExchangeDelete(prefix+".events", false, false)
		_ = ch.ExchangeDelete(prefix+".dead", false, false)
	})
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/jobs", validJob("through-rabbit"), nil))
	cptest.Eventually(t, 30*time.Second, func() error {
		var page struct {
			Events []struct{ Subject string } `json:"events"`
		}
		if code := srv.do(t, "GET", "/api/v1/events?type=job.created", nil, &page); code != http.StatusOK {
			return fmt.Errorf("HTTP %d", code)
		}
		if len(page.Events) != 1 {
			return fmt.Errorf("%d job.created events", len(page.Events))
		}
		return nil
	})
	resp, err := http.Get(srv.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"opsconductor_rabbitmq_connected 1", `opsconductor_bus_published_total{bus="rabbitmq"}`} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("/metrics lacks %s", want)
		}
	}
}
