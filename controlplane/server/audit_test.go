package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/audit"
	"github.com/opsconductor/opsconductor/controlplane/auth"
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

	db, err := store.Open(context.Background(), srv.dbURL, audit.Schema, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log := audit.NewLog(db)
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
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/jobs", validJob("audited-too"), nil))

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
