package dispatch

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/opsconductor/opsconductor/controlplane/execution"
	"github.com/opsconductor/opsconductor/controlplane/interceptor"
	"github.com/opsconductor/opsconductor/controlplane/notify"
	"github.com/opsconductor/opsconductor/controlplane/registry"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1/agentv1connect"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
	"github.com/opsconductor/opsconductor/proto/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type testBundle struct {
	gateway *Gateway
	execs   *execution.Store
	hub     *notify.Hub
	agent   agentv1connect.AgentServiceClient
	agentID string
}

// setup serves a gateway whose polls re-check the database only every
// minute, so anything faster is the wake-up's doing.
func setup(t *testing.T) testBundle {
	t.Helper()
	logger := zaptest.NewLogger(t)
	regStore := registry.NewStore(storetest.Open(t, store.SQLite, registry.Schema, registry.Migrations()))
	reg := registry.New(regStore, logger, registry.Config{})
	execs := execution.NewStore(storetest.Open(t, store.SQLite, execution.Schema, execution.Migrations()))
	hub := notify.New(nil, logger)
	g := New(reg, execs, hub, func() {}, prometheus.NewRegistry(), logger, Config{Recheck: time.Minute, LeaseDuration: time.Minute})
	mux := http.NewServeMux()
	opts := connect.WithInterceptors(interceptor.New(logger, nil))
	mux.Handle(agentv1connect.NewAgentServiceHandler(g, opts))
	mux.Handle(opsconductorv1connect.NewAgentRegistryServiceHandler(reg, opts))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	ctx := context.Background()
	tok, err := opsconductorv1connect.NewAgentRegistryServiceClient(srv.Client(), srv.URL).
		CreateJoinToken(ctx, connect.NewRequest(&opsconductorv1.CreateJoinTokenRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	anon := agentv1connect.NewAgentServiceClient(srv.Client(), srv.URL)
	enr, err := anon.Enroll(ctx, connect.NewRequest(&agentv1.EnrollRequest{JoinToken: tok.Msg.GetToken(), Name: "a1", ProtocolVersion: protocol.AgentProtocolVersion}))
	if err != nil {
		t.Fatal(err)
	}
	cred := enr.Msg.GetCredential()
	client := agentv1connect.NewAgentServiceClient(srv.Client(), srv.URL, connect.WithInterceptors(connect.UnaryInterceptorFunc(
		func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				req.Header().Set("Authorization", "Bearer "+cred)
				return next(ctx, req)
			}
		})))
	return testBundle{gateway: g, execs: execs, hub: hub, agent: client, agentID: enr.Msg.GetAgentId()}
}

func (b testBundle) queueTask(t *testing.T, id string) {
	t.Helper()
	err := b.execs.ExecutionCreate(context.Background(), execution.ExecutionRecord{
		ID: id, JobID: "j", JobName: "job", JobVersion: 1, CreatedAt: time.Now(),
		Snapshot: []byte(`{"name":"job","actions":[{"command":"true"}]}`),
	}, []execution.TaskRecord{{ID: id + "-task", AgentID: b.agentID, AgentName: "a1", OutputLimit: 1024}},
		func() { b.hub.Publish(context.Background(), notify.AgentKey(b.agentID)) })
	if err != nil {
		t.Fatal(err)
	}
}

func (b testBundle) poll(ctx context.Context, slots int32, wait time.Duration) (*agentv1.PollResponse, error) {
	resp, err := b.agent.Poll(ctx, connect.NewRequest(&agentv1.PollRequest{FreeSlots: slots, Wait: durationpb.New(wait)}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func TestPollReturnsEmptyAfterWait(t *testing.T) {
	b := setup(t)
	start := time.Now()
	resp, err := b.poll(context.Background(), 1, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetTasks()) != 0 {
		t.Fatalf("tasks = %v", resp.GetTasks())
	}
	if took := time.Since(start); took < 200*time.Millisecond || took > 10*time.Second {
		t.Fatalf("an empty 200ms poll took %s", took)
	}
}

func TestPollWokenByNewWork(t *testing.T) {
	b := setup(t)
	type result struct {
		resp *agentv1.PollResponse
		err  error
		at   time.Time
	}
	done := make(chan result, 1)
	go func() {
		resp, err := b.poll(context.Background(), 2, 30*time.Second)
		done <- result{resp, err, time.Now()}
	}()
	// Queue the work once the poll waits (no sleep: the metric says so).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if testutil.ToFloat64(b.gateway.pollsWaiting) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("poll never started waiting")
		}
		time.Sleep(5 * time.Millisecond)
	}
	queued := time.Now()
	b.queueTask(t, "e1")
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if len(r.resp.GetTasks()) != 1 {
			t.Fatalf("woken poll returned %d tasks", len(r.resp.GetTasks()))
		}
		ta := r.resp.GetTasks()[0]
		if ta.GetLeaseGeneration() != 1 || ta.GetActions()[0].GetPlugin() != "shell" || ta.GetActions()[0].GetName() != "action-1" || ta.GetActions()[0].GetTimeout().AsDuration() != time.Hour {
			t.Fatalf("assignment = %+v", ta)
		}
		if took := r.at.Sub(queued); took > 5*time.Second {
			t.Fatalf("woken poll returned %s after the work was queued", took)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("poll was not woken by new work")
	}
}

func TestPollAtFullCapacityTakesNoWork(t *testing.T) {
	b := setup(t)
	b.queueTask(t, "e1")
	resp, err := b.poll(context.Background(), 0, 100*time.Millisecond)
	if err != nil || len(resp.GetTasks()) != 0 {
		t.Fatalf("zero-slot poll = %v, %v", resp, err)
	}
	resp, err = b.poll(context.Background(), 1, time.Second)
	if err != nil || len(resp.GetTasks()) != 1 {
		t.Fatalf("one-slot poll = %v, %v", resp, err)
	}
}

func TestStaleReportsRefused(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	b.queueTask(t, "e1")
	resp, err := b.poll(ctx, 1, time.Second)
	if err != nil || len(resp.GetTasks()) != 1 {
		t.Fatalf("poll = %v, %v", resp, err)
	}
	id := resp.GetTasks()[0].GetTaskId()
	if _, err := b.agent.ExtendLease(ctx, connect.NewRequest(&agentv1.ExtendLeaseRequest{TaskId: id, LeaseGeneration: 1})); err != nil {
		t.Fatal(err)
	}
	_, err = b.agent.ExtendLease(ctx, connect.NewRequest(&agentv1.ExtendLeaseRequest{TaskId: id, LeaseGeneration: 9}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("stale extend: %v", err)
	}
	_, err = b.agent.ReportOutput(ctx, connect.NewRequest(&agentv1.ReportOutputRequest{TaskId: id, LeaseGeneration: 1,
		Chunks: []*agentv1.OutputChunk{{Stream: "stdin", Data: []byte("x")}}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("bad stream: %v", err)
	}
	_, err = b.agent.CompleteTask(ctx, connect.NewRequest(&agentv1.CompleteTaskRequest{TaskId: id, LeaseGeneration: 1, Status: "great"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("bad status: %v", err)
	}
	if _, err := b.agent.CompleteTask(ctx, connect.NewRequest(&agentv1.CompleteTaskRequest{TaskId: id, LeaseGeneration: 1, Status: "succeeded"})); err != nil {
		t.Fatal(err)
	}
	_, err = b.agent.CompleteTask(ctx, connect.NewRequest(&agentv1.CompleteTaskRequest{TaskId: id, LeaseGeneration: 1, Status: "succeeded"}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("duplicate completion: %v", err)
	}
}
