package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/controlplane/config"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1/agentv1connect"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// testServer is a whole control plane served in-process.
type testServer struct {
	url   string
	token string // bootstrap admin
	dbURL string
}

// do sends a REST call as the admin.
func (s testServer) do(t *testing.T, method, path string, body, out any) int {
	t.Helper()
	return cptest.DoJSONHeader(t, method, s.url+path, http.Header{"Authorization": {"Bearer " + s.token}}, body, out)
}

// startApp serves a whole control plane in-process on a loopback port.
// Tests poll fast, so the rate limit is off unless tweak turns it on.
func startApp(t *testing.T, d store.Dialect, tweak ...func(*config.Config)) testServer {
	t.Helper()
	cfg := config.Default()
	cfg.DatabaseURL = storetest.NewURL(t, d)
	cfg.RateLimit = 0
	for _, f := range tweak {
		f(&cfg)
	}
	cfg.BootstrapTokenFile = filepath.Join(t.TempDir(), "admin-token")
	cfg.InsecureHTTP = true
	ctx, cancel := context.WithCancel(context.Background())
	app, err := New(ctx, cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server stopped with %v", err)
		}
		app.Close()
	})
	raw, err := os.ReadFile(cfg.BootstrapTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	return testServer{url: "http://" + ln.Addr().String(), token: strings.TrimSpace(string(raw)), dbURL: cfg.DatabaseURL}
}

// openSchema opens the server's store of one service (for tests that
// write fixtures or look underneath); closed when the test ends.
func (s testServer) openSchema(t *testing.T, schema string) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), s.dbURL, schema, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

type rpcStatus struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details []struct {
		FieldViolations []struct {
			Field string `json:"field"`
		} `json:"fieldViolations"`
	} `json:"details"`
}

func (s rpcStatus) fields() []string {
	var out []string
	for _, d := range s.Details {
		for _, v := range d.FieldViolations {
			out = append(out, v.Field)
		}
	}
	return out
}

func validJob(name string) map[string]any {
	return map[string]any{
		"name":    name,
		"actions": []map[string]any{{"command": "true"}},
		"targets": []map[string]any{{"selector": "role=web"}},
	}
}

// TestRESTErrors: bad input is 400 naming each bad field, unknown ids 404,
// stale versions and duplicates 409, malformed JSON 400 - never 500.
func TestRESTErrors(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.SQLite)
	var created struct {
		Job struct {
			ID      string `json:"id"`
			Version string `json:"version"`
		} `json:"job"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/jobs", validJob("ok-job"), &created))
	id := created.Job.ID
	// Version 2 exists after one update; version 1 is then stale.
	upd := validJob("ok-job")
	upd["version"] = 1
	cptest.Must(t, http.StatusOK)(srv.do(t, "PUT", "/api/v1/jobs/"+id, upd, nil))

	badJob := func(mutate func(j map[string]any)) map[string]any {
		j := validJob("bad-job")
		mutate(j)
		return j
	}
	tests := []struct {
		name       string
		method     string
		path       string
		body       any
		wantStatus int
		wantFields []string
	}{
		{"empty name", "POST", "/api/v1/jobs", badJob(func(j map[string]any) { j["name"] = "" }), 400, []string{"job.name"}},
		{"action without command", "POST", "/api/v1/jobs", badJob(func(j map[string]any) { j["actions"] = []map[string]any{{"name": "x"}} }), 400, []string{"job.actions[0].command"}},
		{"unknown plugin", "POST", "/api/v1/jobs", badJob(func(j map[string]any) { j["actions"] = []map[string]any{{"command": "true", "plugin": "telnet"}} }), 400, []string{"job.actions[0].plugin"}},
		{"malformed selector", "POST", "/api/v1/jobs", badJob(func(j map[string]any) { j["targets"] = []map[string]any{{"selector": "role"}} }), 400, []string{"job.targets[0].selector"}},
		{"negative timeout", "POST", "/api/v1/jobs", badJob(func(j map[string]any) { j["actions"] = []map[string]any{{"command": "true", "timeout": "-5s"}} }), 400, []string{"job.actions[0].timeout"}},
		{"every problem at once", "POST", "/api/v1/jobs", map[string]any{
			"name":    "",
			"actions": []map[string]any{{"plugin": "telnet", "timeout": "-1s"}},
			"targets": []map[string]any{{"selector": "a=b=c"}},
		}, 400, []string{"job.actions[0].command", "job.actions[0].plugin", "job.actions[0].timeout", "job.name", "job.targets[0].selector"}},
		{"no actions or targets", "POST", "/api/v1/jobs", map[string]any{"name": "empty"}, 400, []string{"job.actions", "job.targets"}},
		{"malformed JSON on create", "POST", "/api/v1/jobs", `{"name": "x",`, 400, nil},
		{"wrong JSON type", "POST", "/api/v1/jobs", `{"name": 5}`, 400, nil},
		{"malformed JSON on update", "PUT", "/api/v1/jobs/" + id, `not json`, 400, nil},
		{"malformed JSON on execute", "POST", "/api/v1/jobs/" + id + "/execute", `{{`, 400, nil},
		{"malformed JSON on create execution", "POST", "/api/v1/executions", `[`, 400, nil},
		{"duplicate name", "POST", "/api/v1/jobs", validJob("ok-job"), 409, nil},
		{"stale version", "PUT", "/api/v1/jobs/" + id, upd, 409, nil},
		{"update without version", "PUT", "/api/v1/jobs/" + id, validJob("ok-job"), 400, []string{"job.version"}},
		{"unknown job get", "GET", "/api/v1/jobs/no-such-job", nil, 404, nil},
		{"unknown job version", "GET", "/api/v1/jobs/" + id + "?version=9", nil, 404, nil},
		{"unknown job update", "PUT", "/api/v1/jobs/no-such-job", upd, 404, nil},
		{"unknown job delete", "DELETE", "/api/v1/jobs/no-such-job", nil, 404, nil},
		{"unknown job validate", "GET", "/api/v1/jobs/no-such-job/validate", nil, 404, nil},
		{"unknown job execute", "POST", "/api/v1/jobs/no-such-job/execute", map[string]any{}, 404, nil},
		{"unknown job create execution", "POST", "/api/v1/executions", map[string]any{"jobId": "no-such-job"}, 404, nil},
		{"missing job id on create execution", "POST", "/api/v1/executions", map[string]any{}, 400, []string{"job_id"}},
		{"unknown execution", "GET", "/api/v1/executions/no-such-execution", nil, 404, nil},
		{"unknown execution results", "GET", "/api/v1/executions/no-such-execution/results", nil, 404, nil},
		{"target matches no agent", "POST", "/api/v1/jobs/" + id + "/execute", map[string]any{}, 400, []string{"job.targets[0]"}},
		{"bad list selector", "GET", "/api/v1/jobs?labelSelector=a", nil, 400, []string{"label_selector"}},
		{"bad page token", "GET", "/api/v1/jobs?pageToken=@@", nil, 400, []string{"page_token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var st rpcStatus
			got := srv.do(t, tt.method, tt.path, tt.body, &st)
			if got != tt.wantStatus {
				t.Fatalf("HTTP %d, want %d (%+v)", got, tt.wantStatus, st)
			}
			if st.Message == "" {
				t.Fatalf("error without a message: %+v", st)
			}
			if tt.wantFields != nil && strings.Join(st.fields(), " ") != strings.Join(tt.wantFields, " ") {
				t.Fatalf("bad fields %v, want %v (message %q)", st.fields(), tt.wantFields, st.Message)
			}
			for _, f := range tt.wantFields {
				if !strings.Contains(st.Message, f) {
					t.Errorf("message %q does not name %s", st.Message, f)
				}
			}
		})
	}
}

// TestJobVersionsAndValidateOverREST: every version stays readable, and
// validate reports unmatched targets.
func TestJobVersionsAndValidateOverREST(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.Postgres)
	var created struct {
		Job struct {
			ID string `json:"id"`
		} `json:"job"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "POST", "/api/v1/jobs", validJob("v-job"), &created))
	upd := validJob("v-job")
	upd["version"] = 1
	upd["description"] = "second"
	cptest.Must(t, http.StatusOK)(srv.do(t, "PUT", "/api/v1/jobs/"+created.Job.ID, upd, nil))

	var v1 struct {
		Job struct {
			Version     string `json:"version"`
			Description string `json:"description"`
		} `json:"job"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/api/v1/jobs/"+created.Job.ID+"?version=1", nil, &v1))
	if v1.Job.Version != "1" || v1.Job.Description != "" {
		t.Fatalf("version 1 = %+v", v1.Job)
	}
	var versions struct {
		Versions []struct {
			Version string `json:"version"`
		} `json:"versions"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/api/v1/jobs/"+created.Job.ID+"/versions", nil, &versions))
	if len(versions.Versions) != 2 || versions.Versions[0].Version != "2" {
		t.Fatalf("versions = %+v", versions)
	}
	var val struct {
		Valid            bool `json:"valid"`
		UnmatchedTargets []struct {
			Field string `json:"field"`
		} `json:"unmatchedTargets"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/api/v1/jobs/"+created.Job.ID+"/validate", nil, &val))
	if val.Valid || len(val.UnmatchedTargets) != 1 || val.UnmatchedTargets[0].Field != "job.targets[0]" {
		t.Fatalf("validate = %+v, want invalid with job.targets[0] unmatched", val)
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "DELETE", "/api/v1/jobs/"+created.Job.ID, nil, nil))
	cptest.Must(t, http.StatusNotFound)(srv.do(t, "GET", "/api/v1/jobs/"+created.Job.ID, nil, nil))
}

// TestConnectAndGRPCCodes: the same handlers speak Connect and gRPC with
// the same error codes.
func TestConnectAndGRPCCodes(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.SQLite)
	h2c := &http.Client{Transport: &http.Transport{Protocols: new(http.Protocols)}}
	h2c.Transport.(*http.Transport).Protocols.SetUnencryptedHTTP2(true)
	auth := bearer(srv.token)
	clients := map[string]opsconductorv1connect.JobServiceClient{
		"connect": opsconductorv1connect.NewJobServiceClient(http.DefaultClient, srv.url, auth),
		"grpc":    opsconductorv1connect.NewJobServiceClient(h2c, srv.url, connect.WithGRPC(), auth),
		"grpcweb": opsconductorv1connect.NewJobServiceClient(http.DefaultClient, srv.url, connect.WithGRPCWeb(), auth),
	}
	for proto, c := range clients {
		t.Run(proto, func(t *testing.T) {
			ctx := context.Background()
			job := &opsconductorv1.Job{Name: "job-" + proto, Actions: []*opsconductorv1.Action{{Command: "true"}},
				Targets: []*opsconductorv1.Target{{Selector: "role=web"}}}
			resp, err := c.CreateJob(ctx, connect.NewRequest(&opsconductorv1.CreateJobRequest{Job: job}))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.CreateJob(ctx, connect.NewRequest(&opsconductorv1.CreateJobRequest{Job: &opsconductorv1.Job{}}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("empty job: %v, want InvalidArgument", err)
			}
			stale := resp.Msg.GetJob()
			stale.Version = 7
			_, err = c.UpdateJob(ctx, connect.NewRequest(&opsconductorv1.UpdateJobRequest{Job: stale}))
			if connect.CodeOf(err) != connect.CodeAborted {
				t.Fatalf("stale update: %v, want Aborted", err)
			}
			_, err = c.GetJob(ctx, connect.NewRequest(&opsconductorv1.GetJobRequest{Id: "nope"}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Fatalf("unknown job: %v, want NotFound", err)
			}
		})
	}
}

// TestIncompatibleAgentRefused: an agent speaking another protocol is told
// what to upgrade.
func TestIncompatibleAgentRefused(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.SQLite)
	c := agentv1connect.NewAgentServiceClient(http.DefaultClient, srv.url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, v := range []int32{0, 99} {
		_, err := c.Enroll(ctx, connect.NewRequest(&agentv1.EnrollRequest{JoinToken: "ocj_x", Name: "old", ProtocolVersion: v}))
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "upgrade") {
			t.Fatalf("protocol %d: %v, want FailedPrecondition saying what to upgrade", v, err)
		}
	}
	_, err := c.Enroll(ctx, connect.NewRequest(&agentv1.EnrollRequest{JoinToken: "ocj_wrong", Name: "x", ProtocolVersion: 1, PublicKey: make([]byte, 32)}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("bad join token: %v, want Unauthenticated", err)
	}
	_, err = c.Poll(ctx, connect.NewRequest(&agentv1.PollRequest{}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("poll without credential: %v, want Unauthenticated", err)
	}
}

// TestHealthVersionMetrics: the open endpoints answer.
func TestHealthVersionMetrics(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.SQLite)
	var health struct {
		Status string `json:"status"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/health", nil, &health))
	if health.Status != "ok" {
		t.Fatalf("health = %+v", health)
	}
	var version struct {
		AgentProtocolVersion int `json:"agentProtocolVersion"`
	}
	cptest.Must(t, http.StatusOK)(srv.do(t, "GET", "/version", nil, &version))
	if version.AgentProtocolVersion != 1 {
		t.Fatalf("version = %+v", version)
	}
	cptest.Must(t, http.StatusNotFound)(srv.do(t, "GET", "/api/v1/jobs/x", nil, nil))
	resp, err := http.Get(srv.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `opsconductor_rpc_calls_total{code="not_found",procedure="/opsconductor.v1.JobService/GetJob"} 1`) {
		t.Fatalf("metrics lack the RPC counter:\n%s", body)
	}
	if resp.Header.Get("X-Request-ID") == "" {
		t.Fatal("no X-Request-ID in the response")
	}

	// A refused call becomes an audit record in the outbox.
	cptest.Must(t, http.StatusUnauthorized)(cptest.DoJSON(t, "GET", srv.url+"/api/v1/jobs", nil, nil))
	cptest.Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(srv.url + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), `opsconductor_events_relayed_total{schema="auth",topic="audit.denied"}`) {
			return fmt.Errorf("no audit.denied event relayed yet")
		}
		return nil
	})
}

// bearer sends token with every unary call.
func bearer(token string) connect.ClientOption {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			return next(ctx, req)
		}
	}))
}
