package dispatch

import (
	"context"
	"crypto/ed25519"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/opsconductor/opsconductor/agent/identity"
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
	gateway  *Gateway
	execs    *execution.Store
	hub      *notify.Hub
	registry opsconductorv1connect.AgentRegistryServiceClient
	anon     agentv1connect.AgentServiceClient
	agent    agentv1connect.AgentServiceClient
	agentID  string
	url      string
}

// setup serves a gateway whose polls re-check the database only every
// minute, so anything faster is the wake-up's doing.
func setup(t *testing.T) testBundle {
	t.Helper()
	logger := zaptest.NewLogger(t)
	regStore := registry.NewStore(storetest.Open(t, store.SQLite, registry.Schema, registry.Migrations()))
	execs := execution.NewStore(storetest.Open(t, store.SQLite, execution.Schema, execution.Migrations()))
	lose := func(ctx context.Context, agentID, reason string) (int, error) {
		return execs.TaskLoseByAgent(ctx, agentID, reason, nil)
	}
	reg := registry.New(regStore, lose, logger, registry.Config{})
	hub := notify.New(nil, logger)
	g := New(reg, execs, hub, func() {}, prometheus.NewRegistry(), logger, Config{Recheck: time.Minute, LeaseDuration: time.Minute})
	mux := http.NewServeMux()
	opts := connect.WithInterceptors(interceptor.New(logger, nil))
	mux.Handle(agentv1connect.NewAgentServiceHandler(g, opts))
	mux.Handle(opsconductorv1connect.NewAgentRegistryServiceHandler(reg, opts))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	b := testBundle{gateway: g, execs: execs, hub: hub, url: srv.URL,
		registry: opsconductorv1connect.NewAgentRegistryServiceClient(srv.Client(), srv.URL),
		anon:     agentv1connect.NewAgentServiceClient(srv.Client(), srv.URL)}
	b.agentID, b.agent = b.enroll(t, "a1", b.joinToken(t, 0))
	return b
}

func (b testBundle) joinToken(t *testing.T, maxUses int32) string {
	t.Helper()
	tok, err := b.registry.CreateJoinToken(context.Background(), connect.NewRequest(&opsconductorv1.CreateJoinTokenRequest{MaxUses: maxUses}))
	if err != nil {
		t.Fatal(err)
	}
	return tok.Msg.GetToken()
}

// enroll makes a key pair, enrolls an agent with it and returns the agent
// id and a client that signs its calls.
func (b testBundle) enroll(t *testing.T, name, joinToken string) (string, agentv1connect.AgentServiceClient) {
	t.Helper()
	id, err := b.tryEnroll(name, joinToken)
	if err != nil {
		t.Fatal(err)
	}
	return id.id, id.client
}

type enrolled struct {
	id     string
	client agentv1connect.AgentServiceClient
}

func (b testBundle) tryEnroll(name, joinToken string) (enrolled, error) {
	key, err := identity.NewKey()
	if err != nil {
		return enrolled{}, err
	}
	enr, err := b.anon.Enroll(context.Background(), connect.NewRequest(&agentv1.EnrollRequest{JoinToken: joinToken, Name: name,
		ProtocolVersion: protocol.AgentProtocolVersion, PublicKey: key.Public().(ed25519.PublicKey)}))
	if err != nil {
		return enrolled{}, err
	}
	signer := identity.NewSigner(enr.Msg.GetAgentId(), key)
	return enrolled{enr.Msg.GetAgentId(), agentv1connect.NewAgentServiceClient(http.DefaultClient, b.url, connect.WithInterceptors(signer.Interceptor()))}, nil
}

func (b testBundle) queueTask(t *testing.T, id string) {
	t.Helper()
	b.queueTaskFor(t, id, b.agentID)
}

func (b testBundle) queueTaskFor(t *testing.T, id, agentID string) {
	t.Helper()
	_, err := b.execs.ExecutionCreate(context.Background(), execution.ExecutionRecord{
		ID: id, JobID: "j", JobName: "job", JobVersion: 1, CreatedAt: time.Now(),
		Snapshot: []byte(`{"name":"job","actions":[{"command":"true"}]}`),
	}, []execution.TaskRecord{{ID: id + "-task", AgentID: agentID, AgentName: "agent-" + agentID, OutputLimit: 1024}}, execution.ConcurrencyAllow,
		func() { b.hub.Publish(context.Background(), notify.AgentKey(agentID)) })
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

// TestAgentsTouchOnlyTheirOwnTasks: agent A cannot take, extend, report on
// or complete a task leased to agent B.
func TestAgentsTouchOnlyTheirOwnTasks(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	bID, bClient := b.enroll(t, "b", b.joinToken(t, 0))
	b.queueTaskFor(t, "eb", bID)
	// A's poll does not see B's task.
	resp, err := b.poll(ctx, 4, 100*time.Millisecond)
	if err != nil || len(resp.GetTasks()) != 0 {
		t.Fatalf("agent A got %v, %v", resp, err)
	}
	got, err := bClient.Poll(ctx, connect.NewRequest(&agentv1.PollRequest{FreeSlots: 1, Wait: durationpb.New(time.Second)}))
	if err != nil || len(got.Msg.GetTasks()) != 1 {
		t.Fatalf("agent B poll = %v, %v", got, err)
	}
	task := got.Msg.GetTasks()[0]
	id, gen := task.GetTaskId(), task.GetLeaseGeneration()
	_, err = b.agent.ExtendLease(ctx, connect.NewRequest(&agentv1.ExtendLeaseRequest{TaskId: id, LeaseGeneration: gen}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("A extending B's lease: %v", err)
	}
	_, err = b.agent.ReportOutput(ctx, connect.NewRequest(&agentv1.ReportOutputRequest{TaskId: id, LeaseGeneration: gen,
		Chunks: []*agentv1.OutputChunk{{Stream: "stdout", Data: []byte("forged")}}}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("A reporting for B's task: %v", err)
	}
	_, err = b.agent.CompleteTask(ctx, connect.NewRequest(&agentv1.CompleteTaskRequest{TaskId: id, LeaseGeneration: gen, Status: "succeeded"}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("A completing B's task: %v", err)
	}
	if _, err := bClient.CompleteTask(ctx, connect.NewRequest(&agentv1.CompleteTaskRequest{TaskId: id, LeaseGeneration: gen, Status: "succeeded"})); err != nil {
		t.Fatalf("B completing its own task: %v", err)
	}
	out, _ := b.execs.OutputByExecution(ctx, "eb")
	if len(out) != 0 {
		t.Fatalf("forged output was stored: %v", out)
	}
}

// TestRevokedAgent: a revoked agent's next call fails and its running task
// ends as lost.
func TestRevokedAgent(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	b.queueTask(t, "e1")
	resp, err := b.poll(ctx, 1, time.Second)
	if err != nil || len(resp.GetTasks()) != 1 {
		t.Fatalf("poll = %v, %v", resp, err)
	}
	rev, err := b.registry.RevokeAgent(ctx, connect.NewRequest(&opsconductorv1.RevokeAgentRequest{Id: b.agentID, Reason: "host decommissioned"}))
	if err != nil || rev.Msg.GetTasksLost() != 1 {
		t.Fatalf("revoke = %v, %v", rev, err)
	}
	if _, err := b.poll(ctx, 1, time.Second); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("poll after revoke: %v, want PermissionDenied", err)
	}
	task, _ := b.execs.TaskGet(ctx, resp.GetTasks()[0].GetTaskId())
	if task.Status != execution.TaskLost || !strings.Contains(task.Error, "host decommissioned") {
		t.Fatalf("task after revoke = %+v", task)
	}
	if e, _ := b.execs.ExecutionGet(ctx, "e1"); e.Status != execution.ExecFailed {
		t.Fatalf("execution after revoke = %s, want failed", e.Status)
	}
	_, err = b.registry.RevokeAgent(ctx, connect.NewRequest(&opsconductorv1.RevokeAgentRequest{Id: "nope"}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("revoke unknown: %v", err)
	}
}

// TestSingleUseJoinToken: a used single-use join token cannot enrol a
// second agent; the token's labels become the agent's.
func TestSingleUseJoinToken(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	tok, err := b.registry.CreateJoinToken(ctx, connect.NewRequest(&opsconductorv1.CreateJoinTokenRequest{MaxUses: 1, Labels: map[string]string{"env": "prod"}}))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := identity.NewKey()
	enr, err := b.anon.Enroll(ctx, connect.NewRequest(&agentv1.EnrollRequest{JoinToken: tok.Msg.GetToken(), Name: "first",
		Labels: map[string]string{"env": "dev", "role": "web"}, ProtocolVersion: protocol.AgentProtocolVersion, PublicKey: key.Public().(ed25519.PublicKey)}))
	if err != nil {
		t.Fatal(err)
	}
	if l := enr.Msg.GetLabels(); l["env"] != "prod" || l["role"] != "web" {
		t.Fatalf("labels = %v, want the token's env=prod over the agent's env=dev", l)
	}
	if _, err := b.tryEnroll("second", tok.Msg.GetToken()); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("second enrolment with a single-use token: %v", err)
	}
}

// TestRotateKeyOverTheWire: after RotateKey the agent signs with its new key.
func TestRotateKeyOverTheWire(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	newKey, _ := identity.NewKey()
	if _, err := b.agent.RotateKey(ctx, connect.NewRequest(&agentv1.RotateKeyRequest{PublicKey: newKey.Public().(ed25519.PublicKey)})); err != nil {
		t.Fatal(err)
	}
	c := agentv1connect.NewAgentServiceClient(http.DefaultClient, b.url, connect.WithInterceptors(identity.NewSigner(b.agentID, newKey).Interceptor()))
	if _, err := c.Poll(ctx, connect.NewRequest(&agentv1.PollRequest{Wait: durationpb.New(10 * time.Millisecond)})); err != nil {
		t.Fatalf("poll with the new key: %v", err)
	}
	// The old key still signs calls during the grace period, but it may
	// not rotate the identity again (a stolen old key would take it over).
	if _, err := b.agent.Poll(ctx, connect.NewRequest(&agentv1.PollRequest{Wait: durationpb.New(10 * time.Millisecond)})); err != nil {
		t.Fatalf("poll with the previous key in its grace period: %v", err)
	}
	thiefKey, _ := identity.NewKey()
	if _, err := b.agent.RotateKey(ctx, connect.NewRequest(&agentv1.RotateKeyRequest{PublicKey: thiefKey.Public().(ed25519.PublicKey)})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("rotation signed with the previous key: %v, want permission denied", err)
	}
	if _, err := c.RotateKey(ctx, connect.NewRequest(&agentv1.RotateKeyRequest{PublicKey: []byte("short")})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("malformed key: %v", err)
	}
}

// TestUndeliverableTaskFailsAlone: a task the control plane cannot turn
// into an assignment (here a corrupt snapshot) ends failed with the reason,
// and the other tasks claimed in the same poll are still delivered.
func TestUndeliverableTaskFailsAlone(t *testing.T) {
	b := setup(t)
	_, err := b.execs.ExecutionCreate(context.Background(), execution.ExecutionRecord{
		ID: "bad", JobID: "j", JobName: "job", JobVersion: 1, CreatedAt: time.Now().Add(-time.Second),
		Snapshot: []byte(`{"name": 42}`),
	}, []execution.TaskRecord{{ID: "bad-task", AgentID: b.agentID, AgentName: "a1", OutputLimit: 1024}}, execution.ConcurrencyAllow, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.queueTask(t, "good")
	resp, err := b.poll(context.Background(), 2, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetTasks()) != 1 || resp.GetTasks()[0].GetTaskId() != "good-task" {
		t.Fatalf("poll delivered %v, want only good-task", resp.GetTasks())
	}
	bad, err := b.execs.TaskGet(context.Background(), "bad-task")
	if err != nil {
		t.Fatal(err)
	}
	if bad.Status != execution.TaskFailed || !strings.Contains(bad.Error, "could not deliver") {
		t.Fatalf("undeliverable task = %+v, want failed with the reason", bad)
	}
}

// TestRecheckWakesAgentsWithWork: a task queued with no wake-up (one lost
// between replicas) wakes its agent at RunRecheck's next round; an agent
// with nothing to do is not woken.
func TestRecheckWakesAgentsWithWork(t *testing.T) {
	b := setup(t)
	idleID, _ := b.enroll(t, "idle", b.joinToken(t, 0))
	g := New(b.gateway.registry, b.execs, b.hub, func() {}, prometheus.NewRegistry(), zaptest.NewLogger(t), Config{Recheck: 20 * time.Millisecond, LeaseDuration: time.Minute})
	busy, stopBusy := b.hub.Subscribe(notify.AgentKey(b.agentID))
	defer stopBusy()
	idle, stopIdle := b.hub.Subscribe(notify.AgentKey(idleID))
	defer stopIdle()

	_, err := b.execs.ExecutionCreate(context.Background(), execution.ExecutionRecord{
		ID: "e-unheard", JobID: "j", JobName: "job", JobVersion: 1, CreatedAt: time.Now(),
		Snapshot: []byte(`{"name":"job","actions":[{"command":"true"}]}`),
	}, []execution.TaskRecord{{ID: "e-unheard-task", AgentID: b.agentID, AgentName: "agent-a1", OutputLimit: 1024}}, execution.ConcurrencyAllow, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-busy:
		t.Fatal("woken before any round: the test would prove nothing")
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.RunRecheck(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-busy:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent with a queued task was not woken by the rounds")
	}
	// Several rounds later, the agent without work has heard nothing.
	for range 3 {
		select {
		case <-busy:
		case <-time.After(10 * time.Second):
			t.Fatal("the rounds stopped waking the agent with a queued task")
		}
	}
	select {
	case <-idle:
		t.Fatal("an agent without work was woken")
	default:
	}
	// Taken: nothing left to wake it for.
	if resp, err := b.poll(context.Background(), 1, time.Second); err != nil || len(resp.GetTasks()) != 1 {
		t.Fatalf("poll = %v, %v; want the task", resp, err)
	}
	agents, err := b.execs.AgentsWithWork(context.Background())
	if err != nil || len(agents) != 0 {
		t.Fatalf("agents with work after the claim = %v, %v; want none", agents, err)
	}
}
