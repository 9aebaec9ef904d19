package remote

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/auth"
	interservicev1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/interservice/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/interservice/v1/interservicev1connect"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// flakyExecutions fails its first `failures` calls with Unavailable and
// counts every call it gets; it checks the service token.
type flakyExecutions struct {
	interservicev1connect.UnimplementedExecutionsInternalServiceHandler
	failures atomic.Int64
	calls    atomic.Int64
}

func (f *flakyExecutions) fail(h http.Header) error {
	n := f.calls.Add(1)
	if h.Get("Authorization") != "Bearer token-of-the-test" {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("no service token"))
	}
	if n <= f.failures.Load() {
		return connect.NewError(connect.CodeUnavailable, errors.New("not yet"))
	}
	return nil
}

func (f *flakyExecutions) JobLabels(_ context.Context, req *connect.Request[interservicev1.JobLabelsRequest]) (*connect.Response[interservicev1.JobLabelsResponse], error) {
	if err := f.fail(req.Header()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.JobLabelsResponse{Labels: map[string]string{"team": "ops"}}), nil
}

func (f *flakyExecutions) CheckHosts(_ context.Context, req *connect.Request[interservicev1.CheckHostsRequest]) (*connect.Response[interservicev1.CheckHostsResponse], error) {
	if err := f.fail(req.Header()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.CheckHostsResponse{}), nil
}

func (f *flakyExecutions) ScheduleRunning(_ context.Context, req *connect.Request[interservicev1.ScheduleRunningRequest]) (*connect.Response[interservicev1.ScheduleRunningResponse], error) {
	if err := f.fail(req.Header()); err != nil {
		return nil, err
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New("no such schedule"))
}

func serve(t *testing.T, h interservicev1connect.ExecutionsInternalServiceHandler) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(interservicev1connect.NewExecutionsInternalServiceHandler(h))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func testOptions() Options {
	return Options{Token: "token-of-the-test", Backoff: time.Millisecond, Retries: 3, Failures: 3, OpenFor: 2 * time.Second}
}

// TestRetriesIdempotentCallsOnly: a read that fails on the way is tried
// again and succeeds; a call that changes state is not repeated.
func TestRetriesIdempotentCallsOnly(t *testing.T) {
	ctx := context.Background()
	f := &flakyExecutions{}
	f.failures.Store(2)
	e := NewExecutions(NewService("executions", serve(t, f), testOptions(), zap.NewNop()))
	labels, err := e.JobLabels(ctx, "job")
	if err != nil || labels["team"] != "ops" || f.calls.Load() != 3 {
		t.Fatalf("idempotent call: %v %v after %d calls, want success on the 3rd", labels, err, f.calls.Load())
	}

	g := &flakyExecutions{}
	g.failures.Store(1)
	e = NewExecutions(NewService("executions", serve(t, g), testOptions(), zap.NewNop()))
	_, _, err = e.CheckHosts(withTestPrincipal(ctx), &opsconductorv1.Job{}, nil)
	if connect.CodeOf(err) != connect.CodeUnavailable || g.calls.Load() != 1 {
		t.Fatalf("call that changes state: %v after %d calls, want Unavailable after exactly 1", err, g.calls.Load())
	}
}

// TestBreaker: failures in a row open the breaker, which then fails
// calls at once with a message naming the service, without calling it;
// after OpenFor a trial call goes through and closes it. An answer such
// as NotFound is not a failure.
func TestBreaker(t *testing.T) {
	ctx := context.Background()
	f := &flakyExecutions{}
	f.failures.Store(1000)
	opts := testOptions()
	opts.Retries = -1 // no retries: one attempt per call
	svc := NewService("executions", serve(t, f), opts, zap.NewNop())
	e := NewExecutions(svc)
	for i := 0; i < 3; i++ {
		if _, err := e.JobLabels(ctx, "job"); connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if svc.State() != "open" {
		t.Fatalf("after 3 failures the breaker is %s", svc.State())
	}
	before := f.calls.Load()
	_, err := e.JobLabels(ctx, "job")
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "the executions service is unavailable: its circuit breaker is open") {
		t.Fatalf("call with the breaker open: %v", err)
	}
	if f.calls.Load() != before {
		t.Fatal("a call went through the open breaker")
	}

	f.failures.Store(0) // the service is back
	time.Sleep(2100 * time.Millisecond)
	if _, err := e.JobLabels(ctx, "job"); err != nil || svc.State() != "closed" {
		t.Fatalf("trial call after OpenFor: %v, breaker %s", err, svc.State())
	}

	// NotFound is an answer: many of them leave the breaker closed.
	for i := 0; i < 5; i++ {
		if _, err := e.ScheduleRunning(ctx, "nope"); connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("not found: %v", err)
		}
	}
	if svc.State() != "closed" {
		t.Fatalf("answers opened the breaker: %s", svc.State())
	}
}

// TestServiceTokenRequired: without the token the service refuses, and
// that is an answer, not a reason to retry.
func TestServiceTokenRequired(t *testing.T) {
	f := &flakyExecutions{}
	opts := testOptions()
	opts.Token = "wrong"
	e := NewExecutions(NewService("executions", serve(t, f), opts, zap.NewNop()))
	if _, err := e.JobLabels(context.Background(), "job"); connect.CodeOf(err) != connect.CodeUnauthenticated || f.calls.Load() != 1 {
		t.Fatalf("wrong token: %v after %d calls, want Unauthenticated after exactly 1", err, f.calls.Load())
	}
}

func withTestPrincipal(ctx context.Context) context.Context {
	return auth.WithPrincipal(ctx, auth.Principal{Name: "tester", Roles: []string{"admin"}})
}
