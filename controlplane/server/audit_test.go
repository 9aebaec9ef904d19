package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

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
	recs, err := log.List(context.Background(), 0, 1000)
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
