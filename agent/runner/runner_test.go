package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/opsconductor/opsconductor/agent/executor"
	"github.com/opsconductor/opsconductor/agent/safety"
	"github.com/opsconductor/opsconductor/agent/state"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOutputBufferKeepsLimitPlusOne(t *testing.T) {
	b := newOutputBuffer(10)
	b.add(0, "stdout", []byte("hello "))
	b.add(0, "stdout", []byte("world"))
	b.add(0, "stderr", []byte("more"))
	b.add(1, "stdout", []byte("later"))
	got := b.take()
	if len(got) != 1 || string(got[0].data) != "hello world" {
		t.Fatalf("pending = %+v, want one merged chunk of 11 bytes", got)
	}
	if len(b.take()) != 0 {
		t.Fatal("take did not clear")
	}
}

// fakeClient is the control plane as the runner sees it, for unit tests.
type fakeClient struct {
	mu        sync.Mutex
	output    strings.Builder
	complete  *agentv1.CompleteTaskRequest
	loseLease bool
}

func (f *fakeClient) ExtendLease(context.Context, *connect.Request[agentv1.ExtendLeaseRequest]) (*connect.Response[agentv1.ExtendLeaseResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.loseLease {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("lease lost"))
	}
	return connect.NewResponse(&agentv1.ExtendLeaseResponse{}), nil
}

func (f *fakeClient) ReportOutput(_ context.Context, req *connect.Request[agentv1.ReportOutputRequest]) (*connect.Response[agentv1.ReportOutputResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range req.Msg.GetChunks() {
		f.output.Write(c.GetData())
	}
	return connect.NewResponse(&agentv1.ReportOutputResponse{}), nil
}

func (f *fakeClient) CompleteTask(_ context.Context, req *connect.Request[agentv1.CompleteTaskRequest]) (*connect.Response[agentv1.CompleteTaskResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.complete = req.Msg
	return connect.NewResponse(&agentv1.CompleteTaskResponse{}), nil
}

func task(actions ...*opsconductorv1.Action) *agentv1.TaskAssignment {
	return &agentv1.TaskAssignment{TaskId: "t1", ExecutionId: "e1", LeaseGeneration: 1, OutputLimitBytes: 1 << 20, Actions: actions}
}

func TestRunReportsActionsInOrder(t *testing.T) {
	c := &fakeClient{}
	r := New(c, &executor.Shell{}, nil, zaptest.NewLogger(t), Config{LeaseDuration: time.Minute, AgentName: "a1"})
	r.Run(context.Background(), task(
		&opsconductorv1.Action{Name: "one", Command: "echo $OPSCONDUCTOR_AGENT_NAME"},
		&opsconductorv1.Action{Name: "two", Command: "exit 3", ContinueOnError: true},
		&opsconductorv1.Action{Name: "three", Command: "exit 4"},
		&opsconductorv1.Action{Name: "four", Command: "echo never"},
	))
	got := c.complete
	if got == nil {
		t.Fatal("task not completed")
	}
	if got.GetStatus() != "failed" || !strings.Contains(got.GetError(), "action 3 (three)") {
		t.Fatalf("status %s error %q", got.GetStatus(), got.GetError())
	}
	want := []string{"succeeded", "failed", "failed", "skipped"}
	for i, a := range got.GetActions() {
		if a.GetStatus() != want[i] {
			t.Fatalf("action %d status %s, want %s", i, a.GetStatus(), want[i])
		}
	}
	if c.output.String() != "a1\n" {
		t.Fatalf("output = %q", c.output.String())
	}
}

// TestOutputWithCompletion: when the control plane takes output with the
// completion, a short task's output goes there and no output call is
// made; when it does not, the output has a call of its own.
func TestOutputWithCompletion(t *testing.T) {
	for _, onComplete := range []bool{true, false} {
		t.Run(fmt.Sprintf("accepted=%v", onComplete), func(t *testing.T) {
			c := &fakeClient{}
			r := New(c, &executor.Shell{}, nil, zaptest.NewLogger(t), Config{LeaseDuration: time.Minute, FlushInterval: time.Hour, OutputOnComplete: onComplete})
			r.Run(context.Background(), task(&opsconductorv1.Action{Name: "one", Command: "echo hello"}))
			if c.complete == nil || c.complete.GetStatus() != "succeeded" {
				t.Fatalf("completion = %v", c.complete)
			}
			var withCompletion strings.Builder
			for _, ch := range c.complete.GetOutput() {
				withCompletion.Write(ch.GetData())
			}
			reported, sent := c.output.String(), withCompletion.String()
			if onComplete && (sent != "hello\n" || reported != "") {
				t.Fatalf("with the completion %q, in an output call %q; want all with the completion", sent, reported)
			}
			if !onComplete && (sent != "" || reported != "hello\n") {
				t.Fatalf("with the completion %q, in an output call %q; want all in an output call", sent, reported)
			}
		})
	}
}

// TestLostLeaseAbandonsTask: when the control plane refuses the lease, the
// runner stops the action and reports nothing more.
func TestLostLeaseAbandonsTask(t *testing.T) {
	c := &fakeClient{loseLease: true}
	r := New(c, &executor.Shell{KillGrace: 100 * time.Millisecond}, nil, zaptest.NewLogger(t), Config{LeaseDuration: 300 * time.Millisecond})
	start := time.Now()
	r.Run(context.Background(), task(&opsconductorv1.Action{Command: "sleep 30", Timeout: durationpb.New(time.Minute)}))
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("a task with a lost lease ran for %s", took)
	}
	if c.complete != nil {
		t.Fatalf("a task with a lost lease was reported: %+v", c.complete)
	}
}

// TestAgentRefusesDangerousCommands: without the control plane's override
// the agent refuses a dangerous action itself; with it, it runs. Nothing
// destructive is ever executed here: the refused command is a harmless
// echo that an operator rule marks as dangerous, and the built-in rules
// are checked by decision only.
func TestAgentRefusesDangerousCommands(t *testing.T) {
	checker, err := safety.New(safety.Config{ExtraRules: []safety.Rule{{
		ID: "test.forbidden-marker", Severity: safety.Critical, Pattern: `^echo opsconductor-forbidden-marker$`,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	marked := &opsconductorv1.Action{Name: "marked", Command: "echo opsconductor-forbidden-marker"}
	after := &opsconductorv1.Action{Name: "after", Command: "echo after"}

	c := &fakeClient{}
	New(c, &executor.Shell{}, checker, zaptest.NewLogger(t), Config{LeaseDuration: time.Minute}).Run(context.Background(), task(marked, after))
	got := c.complete
	if got.GetStatus() != "failed" || got.GetActions()[0].GetStatus() != "failed" || got.GetActions()[1].GetStatus() != "skipped" {
		t.Fatalf("result = %+v", got)
	}
	if !strings.Contains(got.GetActions()[0].GetError(), "refused by the agent's safety check") {
		t.Fatalf("error = %q", got.GetActions()[0].GetError())
	}
	if c.output.Len() != 0 {
		t.Fatalf("a refused action produced output %q", c.output.String())
	}

	c2 := &fakeClient{}
	over := task(marked)
	over.AllowDangerous = true
	New(c2, &executor.Shell{}, checker, zaptest.NewLogger(t), Config{LeaseDuration: time.Minute}).Run(context.Background(), over)
	if c2.complete.GetStatus() != "succeeded" || c2.output.String() != "opsconductor-forbidden-marker\n" {
		t.Fatalf("with the override: %+v, output %q", c2.complete, c2.output.String())
	}

	// The built-in rules, by decision only (never run).
	r := New(&fakeClient{}, &executor.Shell{}, nil, zaptest.NewLogger(t), Config{})
	if why := r.refuse(task(), &opsconductorv1.Action{Command: "sudo rm -rf /"}); why == "" {
		t.Fatal("the agent would run rm -rf /")
	}
	if why := r.refuse(task(), &opsconductorv1.Action{Command: "rm -rf ./build"}); why != "" {
		t.Fatalf("the agent refuses rm -rf ./build: %s", why)
	}
	if why := r.refuse(task(), &opsconductorv1.Action{Upload: &opsconductorv1.FileUpload{Destination: "/etc/shadow"}}); why == "" {
		t.Fatal("the agent would upload over /etc/shadow")
	}
	if why := r.refuse(task(), &opsconductorv1.Action{Upload: &opsconductorv1.FileUpload{Destination: "/etc/app.conf"}}); why != "" {
		t.Fatalf("the agent refuses an upload to /etc/app.conf: %s", why)
	}
}

// TestRetriesRecorded: an action that fails twice then succeeds is three
// attempts; each wait is at least the delay drawn and at most the cap plus
// a generous slack.
func TestRetriesRecorded(t *testing.T) {
	counter := filepath.Join(t.TempDir(), "count")
	c := &fakeClient{}
	r := New(c, &executor.Shell{}, nil, zaptest.NewLogger(t), Config{LeaseDuration: time.Minute, Jitter: NewJitter(7)})
	retry := &opsconductorv1.RetryPolicy{MaxAttempts: 5, InitialDelay: durationpb.New(100 * time.Millisecond), Multiplier: 2, MaxDelay: durationpb.New(150 * time.Millisecond)}
	r.Run(context.Background(), task(&opsconductorv1.Action{Name: "flaky", Retry: retry,
		Command: "n=$(cat " + counter + " 2>/dev/null || echo 0); n=$((n+1)); echo $n > " + counter + "; [ $n -ge 3 ]"}))
	got := c.complete.GetActions()[0]
	if got.GetStatus() != "succeeded" || len(got.GetAttempts()) != 3 {
		t.Fatalf("outcome %s with %d attempts, want succeeded after 3", got.GetStatus(), len(got.GetAttempts()))
	}
	b := BackoffFrom(retry)
	for i, a := range got.GetAttempts() {
		want := []string{"failed", "failed", "succeeded"}[i]
		if a.GetStatus() != want || a.GetNumber() != int32(i+1) {
			t.Fatalf("attempt %d = %+v", i+1, a)
		}
		if i == 0 {
			continue
		}
		delay := a.GetDelayBefore().AsDuration()
		gap := a.GetStartTime().AsTime().Sub(got.GetAttempts()[i-1].GetEndTime().AsTime())
		if delay > b.Planned(i) || gap < delay || gap > b.Max+2*time.Second {
			t.Fatalf("retry %d: delay %s (planned %s), gap %s", i, delay, b.Planned(i), gap)
		}
	}
}

// TestOutputMasksSecretsAcrossWrites: a secret split over several writes
// is still masked, and nothing else is lost.
func TestOutputMasksSecretsAcrossWrites(t *testing.T) {
	b := newOutputBuffer(1 << 20)
	b.setSecrets([]string{"hunter2"})
	for _, part := range []string{"pass=hun", "te", "r2;", " again hunter2 end"} {
		b.add(0, "stdout", []byte(part))
	}
	b.endAction(0)
	var got strings.Builder
	for _, c := range b.take() {
		got.Write(c.data)
	}
	if got.String() != "pass=********; again ******** end" {
		t.Fatalf("shipped %q", got.String())
	}
}

// TestSecretsMaskedEverywhere: a secret containing another is masked
// whole, and a secret in a refusal reason (which quotes the rendered
// command) never leaves the agent.
func TestSecretsMaskedEverywhere(t *testing.T) {
	b := newOutputBuffer(1 << 20)
	b.setSecrets([]string{"abc", "xabcx"})
	b.add(0, "stdout", []byte("[xabcx] [abc]"))
	b.endAction(0)
	var got strings.Builder
	for _, c := range b.take() {
		got.Write(c.data)
	}
	if got.String() != "[********] [********]" {
		t.Fatalf("overlapping secrets shipped as %q", got.String())
	}

	checker, err := safety.New(safety.Config{ExtraRules: []safety.Rule{{
		ID: "test.secret-marker", Severity: safety.Critical, Pattern: `opsconductor-marker`,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	c := &fakeClient{}
	tk := task(&opsconductorv1.Action{Name: "leaky", Command: "echo opsconductor-marker {{ .params.token }}"})
	tk.Parameters = map[string]string{"token": "s3cr3t-value"}
	tk.SecretValues = []string{"s3cr3t-value"}
	New(c, &executor.Shell{}, checker, zaptest.NewLogger(t), Config{LeaseDuration: time.Minute}).Run(context.Background(), tk)
	report := c.complete.GetError() + " " + c.complete.GetActions()[0].GetError()
	if !strings.Contains(report, "refused") {
		t.Fatalf("the action was not refused: %+v", c.complete)
	}
	if strings.Contains(report, "s3cr3t-value") {
		t.Fatalf("the refusal leaks the secret: %q", report)
	}
}

// TestRecoverFromJournal: entries a dead agent left are reported: a task
// cut off mid-action as unknown (with the actions that finished), a
// decided outcome as it was; the journal is then empty.
func TestRecoverFromJournal(t *testing.T) {
	j := &state.Journal{Dir: t.TempDir()}
	done, _ := protojson.Marshal(&agentv1.ActionOutcome{Index: 0, Name: "first", Status: "succeeded"})
	if err := j.Save(state.JournalEntry{TaskID: "cut", LeaseGeneration: 3, Actions: []json.RawMessage{done}, Running: 1}); err != nil {
		t.Fatal(err)
	}
	c := &fakeClient{}
	New(c, &executor.Shell{}, nil, zaptest.NewLogger(t), Config{Journal: j}).Recover(context.Background())
	got := c.complete
	if got.GetTaskId() != "cut" || got.GetLeaseGeneration() != 3 || got.GetStatus() != "unknown" || len(got.GetActions()) != 2 ||
		got.GetActions()[0].GetStatus() != "succeeded" || got.GetActions()[1].GetStatus() != "unknown" {
		t.Fatalf("reported %+v", got)
	}
	if left, _ := j.Load(); len(left) != 0 {
		t.Fatalf("journal after recovery: %+v", left)
	}
	// A normal run leaves nothing behind.
	r := New(c, &executor.Shell{}, nil, zaptest.NewLogger(t), Config{Journal: j, LeaseDuration: time.Minute})
	r.Run(context.Background(), task(&opsconductorv1.Action{Command: "true"}))
	if left, _ := j.Load(); len(left) != 0 {
		t.Fatalf("journal after a normal run: %+v", left)
	}
}
