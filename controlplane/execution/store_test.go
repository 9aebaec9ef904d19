package execution

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

type testBundle struct {
	st  *Store
	ctx context.Context
}

func setup(t *testing.T, d store.Dialect) testBundle {
	t.Helper()
	return testBundle{st: NewStore(storetest.Open(t, d, Schema, Migrations())), ctx: context.Background()}
}

// makeExecution stores an execution with one queued task per agent.
func (b testBundle) makeExecution(t *testing.T, id string, agents ...string) []TaskRecord {
	t.Helper()
	return b.makeExecutionWith(t, ExecutionRecord{}, id, agents...)
}

// numberedEvents returns an execution's events, checking that they are
// numbered 1, 2, 3... without a gap.
func (b testBundle) numberedEvents(t *testing.T, executionID string) []*opsconductorv1.ExecutionEvent {
	t.Helper()
	evs, err := b.st.EventsAfter(b.ctx, executionID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, ev := range evs {
		if ev.GetSequence() != int64(i+1) {
			t.Fatalf("event %d of %s has sequence %d", i, executionID, ev.GetSequence())
		}
	}
	return evs
}

// makeExecutionWith is makeExecution with fan-out settings from base.
func (b testBundle) makeExecutionWith(t *testing.T, base ExecutionRecord, id string, agents ...string) []TaskRecord {
	t.Helper()
	var tasks []TaskRecord
	for i, a := range agents {
		tasks = append(tasks, TaskRecord{ID: fmt.Sprintf("%s-t%03d", id, i), AgentID: a, AgentName: "name-" + a, OutputLimit: 64})
	}
	woke := false
	rec := base
	rec.ID, rec.JobID, rec.JobName, rec.JobVersion, rec.Snapshot, rec.CorrelationID, rec.CreatedAt =
		id, "job-1", "job", 3, []byte(`{"name":"job"}`), "corr-1", time.Now().UTC()
	_, err := b.st.ExecutionCreate(b.ctx, rec, tasks, ConcurrencyAllow, func() { woke = true })
	if err != nil {
		t.Fatal(err)
	}
	if !woke {
		t.Fatal("after-commit hook did not run")
	}
	return tasks
}

func TestStoreContract(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()

			t.Run("create, get and list", func(t *testing.T) {
				b := setup(t, d)
				b.makeExecution(t, "e1", "a1", "a2")
				e, err := b.st.ExecutionGet(b.ctx, "e1")
				if err != nil {
					t.Fatal(err)
				}
				if e.Status != ExecQueued || e.JobVersion != 3 || e.CorrelationID != "corr-1" || string(e.Snapshot) != `{"name":"job"}` || e.StartedAt != nil {
					t.Fatalf("execution = %+v", e)
				}
				tasks, err := b.st.TaskListByExecution(b.ctx, "e1")
				if err != nil {
					t.Fatal(err)
				}
				if len(tasks) != 2 || tasks[0].Status != TaskQueued || tasks[0].AgentName != "name-a1" || tasks[0].OutputLimit != 64 {
					t.Fatalf("tasks = %+v", tasks)
				}
				if _, err := b.st.ExecutionGet(b.ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("unknown execution: %v", err)
				}
				if _, err := b.st.TaskGet(b.ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("unknown task: %v", err)
				}
				if err := b.st.Ping(b.ctx); err != nil {
					t.Fatal(err)
				}
			})

			t.Run("claim, extend, output, complete", func(t *testing.T) {
				b := setup(t, d)
				b.makeExecution(t, "e1", "a1", "a2")
				if claims, err := b.st.TaskClaimNext(b.ctx, "nobody", 5, time.Minute); err != nil || len(claims) != 0 {
					t.Fatalf("claim for an agent without tasks = %v, %v", claims, err)
				}
				claims, err := b.st.TaskClaimNext(b.ctx, "a1", 5, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if len(claims) != 1 {
					t.Fatalf("claimed %d tasks, want 1", len(claims))
				}
				c := claims[0]
				if c.Task.LeaseGeneration != 1 || c.Task.Status != TaskRunning || c.CorrelationID != "corr-1" || c.JobName != "job" || c.Task.LeaseExpiresAt == nil {
					t.Fatalf("claim = %+v", c)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "e1"); e.Status != ExecRunning || e.StartedAt == nil {
					t.Fatalf("execution after first claim = %+v", e)
				}
				// Another agent cannot touch it; a stale generation is refused.
				if _, _, err := b.st.TaskExtendLease(b.ctx, "a2", c.Task.ID, 1, time.Minute); !errors.Is(err, ErrLeaseLost) {
					t.Fatalf("extend by another agent: %v", err)
				}
				if _, _, err := b.st.TaskExtendLease(b.ctx, "a1", c.Task.ID, 0, time.Minute); !errors.Is(err, ErrLeaseLost) {
					t.Fatalf("extend with a stale generation: %v", err)
				}
				until, _, err := b.st.TaskExtendLease(b.ctx, "a1", c.Task.ID, 1, time.Hour)
				if err != nil || until.Before(time.Now().Add(59*time.Minute)) {
					t.Fatalf("extend = %v, %v", until, err)
				}
				// Output: 64-byte cap; the crossing chunk is cut and marked.
				trunc, err := b.st.TaskAppendOutput(b.ctx, "a1", c.Task.ID, 1, []OutputChunk{
					{ActionIndex: 0, Stream: "stdout", Data: []byte("hello\n")},
					{ActionIndex: 0, Stream: "stderr", Data: []byte("oops\n")},
				}, nil)
				if err != nil || trunc {
					t.Fatalf("append = %v, %v", trunc, err)
				}
				trunc, err = b.st.TaskAppendOutput(b.ctx, "a1", c.Task.ID, 1, []OutputChunk{
					{ActionIndex: 1, Stream: "stdout", Data: []byte(strings.Repeat("x", 100))},
					{ActionIndex: 1, Stream: "stdout", Data: []byte("dropped")},
				}, nil)
				if err != nil || !trunc {
					t.Fatalf("append past the cap = %v, %v", trunc, err)
				}
				trunc, err = b.st.TaskAppendOutput(b.ctx, "a1", c.Task.ID, 1, []OutputChunk{{ActionIndex: 1, Stream: "stdout", Data: []byte("later")}}, nil)
				if err != nil || !trunc {
					t.Fatalf("append after the cap = %v, %v", trunc, err)
				}
				if _, err := b.st.TaskAppendOutput(b.ctx, "a2", c.Task.ID, 1, nil, nil); !errors.Is(err, ErrLeaseLost) {
					t.Fatalf("append by another agent: %v", err)
				}
				out, err := b.st.OutputByExecution(b.ctx, "e1")
				if err != nil {
					t.Fatal(err)
				}
				var stdout1 string
				for _, ch := range out[c.Task.ID] {
					if ch.ActionIndex == 1 {
						stdout1 += string(ch.Data)
					}
				}
				want := strings.Repeat("x", 64-11) + TruncationMarker(64)
				if stdout1 != want {
					t.Fatalf("action 1 output = %q, want %q", stdout1, want)
				}
				start := time.Now().UTC().Truncate(time.Millisecond)
				err = b.st.TaskComplete(b.ctx, "a1", c.Task.ID, 1, TaskFailed, "action 2 failed", []ActionResult{
					{Index: 0, Name: "one", Status: TaskSucceeded, ExitCode: 0, StartedAt: &start, FinishedAt: &start},
					{Index: 1, Name: "two", Status: TaskFailed, ExitCode: 2, Error: "exited with code 2"},
				}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := b.st.TaskComplete(b.ctx, "a1", c.Task.ID, 1, TaskSucceeded, "", nil, nil); !errors.Is(err, ErrLeaseLost) {
					t.Fatalf("second completion: %v", err)
				}
				res, err := b.st.ActionResultsByExecution(b.ctx, "e1")
				if err != nil {
					t.Fatal(err)
				}
				rs := res[c.Task.ID]
				if len(rs) != 2 || rs[1].ExitCode != 2 || rs[1].Status != TaskFailed || rs[0].StartedAt == nil || !rs[0].StartedAt.Equal(start) || rs[1].StartedAt != nil {
					t.Fatalf("results = %+v", rs)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "e1"); e.Status != ExecRunning {
					t.Fatalf("execution with a queued task = %s, want running", e.Status)
				}
				// No max_parallel, no batches: a2's task never waited on
				// this one, so nobody needs waking.
				if waiting, err := b.st.AgentsWaitingOnTask(b.ctx, c.Task.ID); err != nil || len(waiting) != 0 {
					t.Fatalf("agents waiting on a task of an unlimited execution = %v (%v), want none", waiting, err)
				}
				c2, _ := b.st.TaskClaimNext(b.ctx, "a2", 1, time.Minute)
				if err := b.st.TaskComplete(b.ctx, "a2", c2[0].Task.ID, 1, TaskSucceeded, "", nil, nil); err != nil {
					t.Fatal(err)
				}
				e, _ := b.st.ExecutionGet(b.ctx, "e1")
				if e.Status != ExecFailed || e.FinishedAt == nil {
					t.Fatalf("execution after all tasks = %+v, want failed", e)
				}
			})

			t.Run("all succeeded", func(t *testing.T) {
				b := setup(t, d)
				b.makeExecution(t, "e1", "a1")
				c, _ := b.st.TaskClaimNext(b.ctx, "a1", 1, time.Minute)
				if err := b.st.TaskComplete(b.ctx, "a1", c[0].Task.ID, 1, TaskSucceeded, "", nil, nil); err != nil {
					t.Fatal(err)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "e1"); e.Status != ExecSucceeded {
					t.Fatalf("status = %s", e.Status)
				}
			})

			t.Run("expired lease makes the task lost", func(t *testing.T) {
				b := setup(t, d)
				b.makeExecution(t, "e1", "a1")
				c, _ := b.st.TaskClaimNext(b.ctx, "a1", 1, time.Second)
				lost, err := b.st.TaskExpireLeases(b.ctx, time.Now(), nil)
				if err != nil || len(lost) != 0 {
					t.Fatalf("expire before the lease ends = %v, %v", lost, err)
				}
				lost, err = b.st.TaskExpireLeases(b.ctx, time.Now().Add(2*time.Second), nil)
				if err != nil || len(lost) != 1 || lost[0].Requeued {
					t.Fatalf("expire after the lease ends = %v, %v", lost, err)
				}
				task, _ := b.st.TaskGet(b.ctx, c[0].Task.ID)
				if task.Status != TaskLost || task.Error == "" {
					t.Fatalf("task = %+v", task)
				}
				if err := b.st.TaskComplete(b.ctx, "a1", task.ID, 1, TaskSucceeded, "", nil, nil); !errors.Is(err, ErrLeaseLost) {
					t.Fatalf("late completion: %v", err)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "e1"); e.Status != ExecFailed {
					t.Fatalf("execution = %s, want failed", e.Status)
				}
			})

			t.Run("expired lease with requeue", func(t *testing.T) {
				b := setup(t, d)
				b.makeExecutionWith(t, ExecutionRecord{OnAgentLoss: "requeue"}, "e1", "a1")
				c, _ := b.st.TaskClaimNext(b.ctx, "a1", 1, time.Second)
				lost, err := b.st.TaskExpireLeases(b.ctx, time.Now().Add(2*time.Second), nil)
				if err != nil || len(lost) != 1 || !lost[0].Requeued {
					t.Fatalf("expire = %v, %v; want requeued", lost, err)
				}
				moved, err := b.st.TaskReassign(b.ctx, c[0].Task.ID, "a1", "a2", "name-a2")
				if err != nil || !moved {
					t.Fatalf("reassign = %v, %v", moved, err)
				}
				again, _ := b.st.TaskClaimNext(b.ctx, "a2", 1, time.Minute)
				if len(again) != 1 || again[0].Task.LeaseGeneration != 2 {
					t.Fatalf("claim on a2 = %+v, want generation 2", again)
				}
				// The first agent's stale report cannot change anything.
				if err := b.st.TaskComplete(b.ctx, "a1", c[0].Task.ID, 1, TaskFailed, "late", nil, nil); !errors.Is(err, ErrLeaseLost) {
					t.Fatalf("stale report: %v", err)
				}
				if err := b.st.TaskComplete(b.ctx, "a2", c[0].Task.ID, 2, TaskSucceeded, "", nil, nil); err != nil {
					t.Fatal(err)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "e1"); e.Status != ExecSucceeded {
					t.Fatalf("execution = %s", e.Status)
				}
			})

			t.Run("events are numbered per execution", func(t *testing.T) {
				b := setup(t, d)
				b.makeExecution(t, "e1", "a1")
				b.makeExecution(t, "e2", "a1")
				c, _ := b.st.TaskClaimNext(b.ctx, "a1", 1, time.Minute)
				if _, err := b.st.TaskAppendOutput(b.ctx, "a1", c[0].Task.ID, 1, []OutputChunk{{Stream: "stdout", Data: []byte("hi")}}, nil); err != nil {
					t.Fatal(err)
				}
				if err := b.st.TaskComplete(b.ctx, "a1", c[0].Task.ID, 1, TaskSucceeded, "", nil, nil); err != nil {
					t.Fatal(err)
				}
				evs := b.numberedEvents(t, "e1")
				var got []string
				for _, ev := range evs {
					got = append(got, ev.GetType()+":"+ev.GetStatus())
				}
				want := "execution.created:queued task.status:running execution.status:running task.output: task.status:succeeded execution.status:succeeded"
				if strings.Join(got, " ") != want {
					t.Fatalf("events = %v, want %s", got, want)
				}
				if evs[3].GetData() == nil || string(evs[3].GetData()) != "hi" {
					t.Fatalf("output event data = %q", evs[3].GetData())
				}
				rest, _ := b.st.EventsAfter(b.ctx, "e1", 4, 100)
				if len(rest) != 2 {
					t.Fatalf("events after 4 = %d, want 2", len(rest))
				}
				other, _ := b.st.EventsAfter(b.ctx, "e2", 0, 100)
				if len(other) != 1 {
					t.Fatalf("e2 events = %d, want 1", len(other))
				}
			})

			t.Run("output with the completion", func(t *testing.T) {
				b := setup(t, d)
				b.makeExecution(t, "e1", "a1")
				c, _ := b.st.TaskClaimNext(b.ctx, "a1", 1, time.Minute)
				if _, err := b.st.TaskAppendOutput(b.ctx, "a1", c[0].Task.ID, 1, []OutputChunk{{Stream: "stdout", Data: []byte("one ")}}, nil); err != nil {
					t.Fatal(err)
				}
				last := []OutputChunk{{Stream: "stdout", Data: []byte("two ")}, {Stream: "stderr", Data: []byte("three")}}
				if limited, err := b.st.TaskCompleteWithOutput(b.ctx, "a1", c[0].Task.ID, 1, TaskSucceeded, "", nil, last, nil); err != nil || limited {
					t.Fatalf("complete = %v (limited %v), want done and not limited (no max_parallel, no batches)", err, limited)
				}
				var got []string
				for _, ev := range b.numberedEvents(t, "e1") {
					got = append(got, ev.GetType()+":"+ev.GetStatus()+string(ev.GetData()))
				}
				want := "execution.created:queued task.status:running execution.status:running task.output:one  task.output:two  task.output:three " +
					"task.status:succeeded execution.status:succeeded"
				if strings.Join(got, " ") != want {
					t.Fatalf("events = %q, want %q", strings.Join(got, " "), want)
				}
				out, err := b.st.OutputByExecution(b.ctx, "e1")
				if err != nil {
					t.Fatal(err)
				}
				var text []string
				for _, ch := range out[c[0].Task.ID] {
					text = append(text, ch.Stream+":"+string(ch.Data))
				}
				if strings.Join(text, ",") != "stdout:one ,stdout:two ,stderr:three" {
					t.Fatalf("stored output = %q", text)
				}
				// A completion that lost its lease stores none of its output.
				if _, err := b.st.TaskCompleteWithOutput(b.ctx, "a1", c[0].Task.ID, 1, TaskSucceeded, "", nil, last, nil); !errors.Is(err, ErrLeaseLost) {
					t.Fatalf("second completion = %v, want ErrLeaseLost", err)
				}
				if again, _ := b.st.OutputByExecution(b.ctx, "e1"); len(again[c[0].Task.ID]) != 3 {
					t.Fatalf("output after a refused completion = %d chunks, want 3", len(again[c[0].Task.ID]))
				}
			})

			t.Run("cancel", func(t *testing.T) {
				b := setup(t, d)
				b.makeExecution(t, "e1", "a1", "a2")
				c, _ := b.st.TaskClaimNext(b.ctx, "a1", 1, time.Minute)
				agents, err := b.st.ExecutionCancel(b.ctx, "e1", "alice", "wrong change", nil)
				if err != nil || len(agents) != 1 || agents[0] != "a1" {
					t.Fatalf("cancel = %v, %v; want the running task's agent a1", agents, err)
				}
				tasks, _ := b.st.TaskListByExecution(b.ctx, "e1")
				for _, tk := range tasks {
					if tk.AgentID == "a2" && tk.Status != TaskCancelled {
						t.Fatalf("queued task after cancel: %+v", tk)
					}
				}
				if ids, _ := b.st.TaskCancelsForAgent(b.ctx, "a1"); len(ids) != 1 || ids[0] != c[0].Task.ID {
					t.Fatalf("cancels for a1 = %v", ids)
				}
				if _, cancel, err := b.st.TaskExtendLease(b.ctx, "a1", c[0].Task.ID, 1, time.Minute); err != nil || !cancel {
					t.Fatalf("extend after cancel = %v, %v; want the cancel flag", cancel, err)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "e1"); e.Status != ExecRunning || e.CancelledBy != "alice" || e.CancelReason != "wrong change" {
					t.Fatalf("execution while its running task stops = %+v", e)
				}
				if _, err := b.st.ExecutionCancel(b.ctx, "e1", "bob", "again", nil); err != nil {
					t.Fatalf("second cancel: %v", err)
				}
				if err := b.st.TaskComplete(b.ctx, "a1", c[0].Task.ID, 1, TaskCancelled, "cancelled", nil, nil); err != nil {
					t.Fatal(err)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "e1"); e.Status != ExecCancelled || e.CancelledBy != "alice" {
					t.Fatalf("execution after its last task = %+v, want cancelled by alice", e)
				}
				if _, err := b.st.ExecutionCancel(b.ctx, "e1", "bob", "", nil); err != nil {
					t.Fatalf("cancel of a cancelled execution: %v", err)
				}
				b.makeExecution(t, "e2", "a1")
				c2, _ := b.st.TaskClaimNext(b.ctx, "a1", 1, time.Minute)
				_ = b.st.TaskComplete(b.ctx, "a1", c2[0].Task.ID, 1, TaskSucceeded, "", nil, nil)
				if _, err := b.st.ExecutionCancel(b.ctx, "e2", "bob", "", nil); !errors.Is(err, ErrFinished) {
					t.Fatalf("cancel of a succeeded execution: %v", err)
				}
				if _, err := b.st.ExecutionCancel(b.ctx, "nope", "bob", "", nil); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("cancel of an unknown execution: %v", err)
				}
				b.makeExecution(t, "e3", "a2")
				if _, err := b.st.ExecutionCancel(b.ctx, "e3", "bob", "", nil); err != nil {
					t.Fatal(err)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "e3"); e.Status != ExecCancelled {
					t.Fatalf("an all-queued execution after cancel = %s, want cancelled at once", e.Status)
				}
			})

			t.Run("fan-out", func(t *testing.T) {
				b := setup(t, d)
				claim := func(agent string) string {
					c, err := b.st.TaskClaimNext(b.ctx, agent, 1, time.Minute)
					if err != nil {
						t.Fatal(err)
					}
					if len(c) == 0 {
						return ""
					}
					return c[0].Task.ID
				}
				complete := func(agent, id, status string) {
					if err := b.st.TaskComplete(b.ctx, agent, id, 1, status, "", nil, nil); err != nil {
						t.Fatal(err)
					}
				}
				// max_parallel 2 of 3.
				b.makeExecutionWith(t, ExecutionRecord{MaxParallel: 2}, "p", "a1", "a2", "a3")
				t1, t2 := claim("a1"), claim("a2")
				if t1 == "" || t2 == "" || claim("a3") != "" {
					t.Fatal("max_parallel 2 let a third task start (or blocked the first two)")
				}
				if limited, err := b.st.TaskCompleteWithOutput(b.ctx, "a1", t1, 1, TaskSucceeded, "", nil, nil, nil); err != nil || !limited {
					t.Fatalf("complete = %v (limited %v), want done and limited by max_parallel", err, limited)
				}
				if waiting, err := b.st.AgentsWaitingOnTask(b.ctx, t1); err != nil || !slices.Equal(waiting, []string{"a3"}) {
					t.Fatalf("agents waiting on a max_parallel task = %v (%v), want a3", waiting, err)
				}
				t3 := claim("a3")
				if t3 == "" {
					t.Fatal("a freed slot was not reused")
				}
				complete("a2", t2, TaskSucceeded)
				complete("a3", t3, TaskSucceeded)

				// Batches of 2: the second batch waits for the first.
				b.makeExecutionWith(t, ExecutionRecord{BatchSize: 2}, "b", "b1", "b2", "b3")
				u1, u2 := claim("b1"), claim("b2")
				if u1 == "" || u2 == "" || claim("b3") != "" {
					t.Fatal("the second batch started with the first")
				}
				complete("b1", u1, TaskSucceeded)
				if waiting, err := b.st.AgentsWaitingOnTask(b.ctx, u1); err != nil || !slices.Equal(waiting, []string{"b3"}) {
					t.Fatalf("agents waiting on a batched task = %v (%v), want b3", waiting, err)
				}
				if claim("b3") != "" {
					t.Fatal("the second batch started before the first ended")
				}
				complete("b2", u2, TaskFailed)
				if u3 := claim("b3"); u3 == "" {
					t.Fatal("the second batch did not open")
				} else {
					complete("b3", u3, TaskSucceeded)
				}

				// A later batch whose tasks all ended before it opened (its
				// agent was revoked) does not stall the rollout.
				b.makeExecutionWith(t, ExecutionRecord{BatchSize: 1}, "r", "r1", "r2", "r3")
				first := claim("r1")
				if _, err := b.st.TaskLoseByAgent(b.ctx, "r2", "agent revoked", nil); err != nil {
					t.Fatal(err)
				}
				complete("r1", first, TaskSucceeded)
				if last := claim("r3"); last == "" {
					t.Fatal("the third batch did not open after the second had nothing left to run")
				} else {
					complete("r3", last, TaskSucceeded)
				}

				// Exclusive: a second execution's task waits while the
				// first runs on the same agent, and the reverse.
				b.makeExecutionWith(t, ExecutionRecord{Exclusive: true}, "x1", "d1")
				b.makeExecution(t, "x2", "d1")
				w1 := claim("d1")
				if w1 == "" || claim("d1") != "" {
					t.Fatal("a task started on an agent held by an exclusive execution")
				}
				complete("d1", w1, TaskSucceeded)
				w2 := claim("d1")
				if w2 == "" {
					t.Fatal("the lock was not released")
				}
				b.makeExecutionWith(t, ExecutionRecord{Exclusive: true}, "x3", "d1")
				if claim("d1") != "" {
					t.Fatal("an exclusive task started while another execution ran on its agent")
				}
				complete("d1", w2, TaskSucceeded)
				if w3 := claim("d1"); w3 == "" {
					t.Fatal("the exclusive task did not start once the agent was free")
				} else {
					complete("d1", w3, TaskSucceeded)
				}

				// max_failures 0: the first failure skips what has not started.
				zero := 0
				b.makeExecutionWith(t, ExecutionRecord{MaxFailures: &zero}, "f", "c1", "c2", "c3")
				v1 := claim("c1")
				complete("c1", v1, TaskFailed)
				tasks, _ := b.st.TaskListByExecution(b.ctx, "f")
				for _, tk := range tasks {
					if tk.AgentID != "c1" && tk.Status != TaskSkipped {
						t.Fatalf("after the threshold: %+v", tk)
					}
				}
				e, _ := b.st.ExecutionGet(b.ctx, "f")
				if e.Status != ExecFailed || !strings.Contains(e.Reason, "failure threshold reached: 1 of 3") {
					t.Fatalf("execution after the threshold = %+v", e)
				}
			})

			t.Run("a later batch's queue deadline starts when its batch opens", func(t *testing.T) {
				b := setup(t, d)
				// Created 11 s ago: the first batch's 10 s are over.
				created := time.Now().UTC().Add(-11 * time.Second)
				tasks := []TaskRecord{
					{ID: "q-t0", AgentID: "q1", AgentName: "q1", OutputLimit: 64, QueueTimeout: 10 * time.Second},
					{ID: "q-t1", AgentID: "q2", AgentName: "q2", OutputLimit: 64, QueueTimeout: 10 * time.Second},
				}
				rec := ExecutionRecord{ID: "q", JobID: "job-q", JobName: "job", JobVersion: 1, Snapshot: []byte(`{}`), CorrelationID: "c", CreatedAt: created, BatchSize: 1}
				if _, err := b.st.ExecutionCreate(b.ctx, rec, tasks, ConcurrencyAllow, nil); err != nil {
					t.Fatal(err)
				}
				// The first batch's agent never comes: its task expires, the
				// second batch opens, and its task gets its own 10 s.
				n, err := b.st.TaskExpireQueued(b.ctx, time.Now(), nil)
				if err != nil || n != 1 {
					t.Fatalf("first expiry pass = %d, %v; want 1 (only the open batch)", n, err)
				}
				if task, _ := b.st.TaskGet(b.ctx, "q-t1"); task.Status != TaskQueued {
					t.Fatalf("second batch's task = %+v, want still queued", task)
				}
				if n, err := b.st.TaskExpireQueued(b.ctx, time.Now().Add(5*time.Second), nil); err != nil || n != 0 {
					t.Fatalf("second pass = %d, %v; want 0 (deadline counts from the batch opening)", n, err)
				}
				if n, err := b.st.TaskExpireQueued(b.ctx, time.Now().Add(11*time.Second), nil); err != nil || n != 1 {
					t.Fatalf("third pass = %d, %v; want 1", n, err)
				}
			})

			t.Run("an execution queued behind a finished one is released", func(t *testing.T) {
				b := setup(t, d)
				mk := func(id string) {
					rec := ExecutionRecord{ID: id, JobID: "job-s", JobName: "job", JobVersion: 1, Snapshot: []byte(`{}`), CorrelationID: "c", CreatedAt: time.Now().UTC()}
					tasks := []TaskRecord{{ID: id + "-t0", AgentID: "s1", AgentName: "s1", OutputLimit: 64, QueueTimeout: time.Hour}}
					if _, err := b.st.ExecutionCreate(b.ctx, rec, tasks, ConcurrencyQueue, nil); err != nil {
						t.Fatal(err)
					}
				}
				mk("s-first")
				mk("s-second")
				if e, _ := b.st.ExecutionGet(b.ctx, "s-second"); e.WaitingFor != "s-first" {
					t.Fatalf("second execution waits for %q, want s-first", e.WaitingFor)
				}
				// The race the safety net covers: the first finished without
				// seeing the second (simulated by finishing it behind the
				// store's back).
				if _, err := b.st.db.ExecContext(b.ctx, `UPDATE executions SET status = $1 WHERE id = $2`, ExecSucceeded, "s-first"); err != nil {
					t.Fatal(err)
				}
				if n, err := b.st.ExecutionReleaseStranded(b.ctx, time.Now()); err != nil || n != 1 {
					t.Fatalf("release = %d, %v; want 1", n, err)
				}
				e, _ := b.st.ExecutionGet(b.ctx, "s-second")
				var hasDeadline bool
				if err := b.st.db.QueryRowContext(b.ctx, `SELECT queue_expires_at IS NOT NULL FROM tasks WHERE id = $1`, "s-second-t0").Scan(&hasDeadline); err != nil {
					t.Fatal(err)
				}
				if e.WaitingFor != "" || !hasDeadline {
					t.Fatalf("after release: waiting_for %q, queue deadline started %v", e.WaitingFor, hasDeadline)
				}
				if n, err := b.st.ExecutionReleaseStranded(b.ctx, time.Now()); err != nil || n != 0 {
					t.Fatalf("second release = %d, %v; want 0", n, err)
				}
			})

			t.Run("ad-hoc runs do not share a job's concurrency", func(t *testing.T) {
				b := setup(t, d)
				for _, id := range []string{"adhoc-1", "adhoc-2"} {
					rec := ExecutionRecord{ID: id, JobName: "inline", Snapshot: []byte(`{}`), CorrelationID: "c", CreatedAt: time.Now().UTC()}
					tasks := []TaskRecord{{ID: id + "-t0", AgentID: "x1", AgentName: "x1", OutputLimit: 64}}
					if _, err := b.st.ExecutionCreate(b.ctx, rec, tasks, ConcurrencySkip, nil); err != nil {
						t.Fatalf("ad-hoc %s refused: %v (unrelated inline runs must not block each other)", id, err)
					}
				}
			})

			t.Run("cancelling a queued execution passes its waiters on", func(t *testing.T) {
				b := setup(t, d)
				mk := func(id string) {
					rec := ExecutionRecord{ID: id, JobID: "job-w", JobName: "job", JobVersion: 1, Snapshot: []byte(`{}`), CorrelationID: "c", CreatedAt: time.Now().UTC()}
					tasks := []TaskRecord{{ID: id + "-t0", AgentID: "w1", AgentName: "w1", OutputLimit: 64}}
					if _, err := b.st.ExecutionCreate(b.ctx, rec, tasks, ConcurrencyQueue, nil); err != nil {
						t.Fatal(err)
					}
				}
				mk("w-1")
				mk("w-2")
				mk("w-3")
				if _, err := b.st.ExecutionCancel(b.ctx, "w-2", "tester", "not needed", nil); err != nil {
					t.Fatal(err)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "w-3"); e.WaitingFor != "w-1" {
					t.Fatalf("third execution waits for %q after the second was cancelled, want w-1 (still queued)", e.WaitingFor)
				}
			})

			t.Run("1000 tasks, 20 claimers, each task claimed once", func(t *testing.T) {
				b := setup(t, d)
				for e := 0; e < 50; e++ {
					agents := make([]string, 20)
					for i := range agents {
						agents[i] = "shared-agent"
					}
					b.makeExecution(t, fmt.Sprintf("e%02d", e), agents...)
				}
				var mu sync.Mutex
				seen := map[string]int{}
				var wg sync.WaitGroup
				errs := make(chan error, 20)
				for w := 0; w < 20; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							claims, err := b.st.TaskClaimNext(b.ctx, "shared-agent", 3, time.Minute)
							if err != nil {
								errs <- err
								return
							}
							if len(claims) == 0 {
								return
							}
							mu.Lock()
							for _, c := range claims {
								seen[c.Task.ID]++
							}
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				if len(seen) != 1000 {
					t.Fatalf("claimed %d distinct tasks, want 1000", len(seen))
				}
				for id, n := range seen {
					if n != 1 {
						t.Fatalf("task %s claimed %d times", id, n)
					}
				}
			})
		})
	}
}

func TestPage(t *testing.T) {
	s := "héllo wörld" // é and ö are 2 bytes
	var got strings.Builder
	for off := int64(0); ; {
		p, more := page(s, off, 3)
		got.WriteString(p)
		off += int64(len(p))
		if !more {
			break
		}
		if p == "" {
			t.Fatal("an empty page with more to come")
		}
	}
	if got.String() != s {
		t.Fatalf("pages give %q", got.String())
	}
}
