package execution

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// makeRemote stores an execution with one remote-host task per host, each
// claimable by the candidates.
func (b testBundle) makeRemote(t *testing.T, id string, hosts int, candidates ...string) []TaskRecord {
	t.Helper()
	return b.makeRemoteWith(t, ExecutionRecord{}, id, hosts, candidates...)
}

// makeRemoteWith is makeRemote with settings from base.
func (b testBundle) makeRemoteWith(t *testing.T, base ExecutionRecord, id string, hosts int, candidates ...string) []TaskRecord {
	t.Helper()
	var tasks []TaskRecord
	for i := range hosts {
		host := fmt.Sprintf("10.0.0.%d", i+1)
		tr := TaskRecord{ID: fmt.Sprintf("%s-t%03d", id, i), Host: host, Remote: []byte(`{"address":"` + host + `"}`),
			TargetKey: "remote:" + host + ":22", OutputLimit: 64}
		for _, c := range candidates {
			tr.Candidates = append(tr.Candidates, Candidate{AgentID: c, AgentName: "name-" + c})
		}
		tasks = append(tasks, tr)
	}
	rec := base
	rec.ID, rec.JobID, rec.JobName, rec.JobVersion, rec.Snapshot, rec.CorrelationID, rec.CreatedAt =
		id, "job-"+id, "job", 1, []byte(`{"name":"job"}`), "corr", time.Now().UTC()
	if _, err := b.st.ExecutionCreate(b.ctx, rec, tasks, ConcurrencyAllow, nil); err != nil {
		t.Fatal(err)
	}
	return tasks
}

func TestRemoteTasksContract(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()

			t.Run("only candidates claim, as remote work", func(t *testing.T) {
				b := setup(t, d)
				b.makeRemote(t, "e1", 3, "j1", "j2")
				if c, err := b.st.TaskClaimRemote(b.ctx, "other", 10, time.Minute); err != nil || len(c) != 0 {
					t.Fatalf("a non-candidate claimed %d tasks (%v)", len(c), err)
				}
				if c, err := b.st.TaskClaimNext(b.ctx, "j1", 10, time.Minute); err != nil || len(c) != 0 {
					t.Fatalf("a local claim took %d remote tasks (%v)", len(c), err)
				}
				c1, err := b.st.TaskClaimRemote(b.ctx, "j1", 2, time.Minute)
				if err != nil || len(c1) != 2 {
					t.Fatalf("j1 claimed %d (%v), want 2", len(c1), err)
				}
				if c1[0].Task.AgentID != "j1" || c1[0].Task.AgentName != "name-j1" || c1[0].Task.Host == "" || string(c1[0].Task.Remote) == "" {
					t.Fatalf("claimed task = %+v", c1[0].Task)
				}
				c2, err := b.st.TaskClaimRemote(b.ctx, "j2", 10, time.Minute)
				if err != nil || len(c2) != 1 || c2[0].Task.AgentID != "j2" {
					t.Fatalf("j2 claimed %+v (%v), want the last one", c2, err)
				}
				queued, err := b.st.QueuedAgents(b.ctx, "e1")
				if err != nil || len(queued) != 0 {
					t.Fatalf("queued agents after all claimed = %v (%v)", queued, err)
				}
			})

			t.Run("agents with work: own queue, remote candidates, cancels to hear of", func(t *testing.T) {
				b := setup(t, d)
				b.makeRemote(t, "e1", 1, "j1", "j2")
				if _, err := b.st.ExecutionCreate(b.ctx, ExecutionRecord{ID: "e2", JobID: "job-e2", JobName: "job", JobVersion: 1,
					Snapshot: []byte(`{"name":"job"}`), CreatedAt: time.Now().UTC()},
					[]TaskRecord{{ID: "e2-a", AgentID: "a1", OutputLimit: 64}, {ID: "e2-b", AgentID: "a2", OutputLimit: 64}}, ConcurrencyAllow, nil); err != nil {
					t.Fatal(err)
				}
				want := func(stage string, ids ...string) {
					t.Helper()
					got, err := b.st.AgentsWithWork(b.ctx)
					slices.Sort(got)
					if err != nil || !slices.Equal(got, ids) {
						t.Fatalf("%s: agents with work = %v (%v), want %v", stage, got, err, ids)
					}
				}
				want("queued", "a1", "a2", "j1", "j2")
				if c, err := b.st.TaskClaimNext(b.ctx, "a1", 1, time.Minute); err != nil || len(c) != 1 {
					t.Fatalf("a1 claimed %d (%v)", len(c), err)
				}
				if c, err := b.st.TaskClaimRemote(b.ctx, "j1", 1, time.Minute); err != nil || len(c) != 1 {
					t.Fatalf("j1 claimed %d (%v)", len(c), err)
				}
				want("claimed: running tasks are no work", "a2")
				if _, err := b.st.ExecutionCancel(b.ctx, "e2", "tester", "", nil); err != nil {
					t.Fatal(err)
				}
				want("cancelled: a1 must hear of it, a2's queued task ended", "a1")
			})

			t.Run("queued agents are the candidates", func(t *testing.T) {
				b := setup(t, d)
				b.makeRemote(t, "e1", 2, "j1", "j2")
				queued, err := b.st.QueuedAgents(b.ctx, "e1")
				if err != nil || len(queued) != 2 {
					t.Fatalf("queued agents = %v (%v), want j1 and j2", queued, err)
				}
			})

			t.Run("a lost lease goes back to the pool without the agent that lost it", func(t *testing.T) {
				b := setup(t, d)
				b.makeRemote(t, "e1", 1, "j1", "j2")
				c, err := b.st.TaskClaimRemote(b.ctx, "j1", 1, time.Millisecond)
				if err != nil || len(c) != 1 {
					t.Fatalf("claim: %d, %v", len(c), err)
				}
				lost, err := b.st.TaskExpireLeases(b.ctx, time.Now().Add(time.Second), nil)
				if err != nil || len(lost) != 1 || !lost[0].Remote || !lost[0].Requeued {
					t.Fatalf("expired = %+v (%v), want one remote task requeued", lost, err)
				}
				task, err := b.st.TaskGet(b.ctx, c[0].Task.ID)
				if err != nil || task.Status != TaskQueued || task.AgentID != "" {
					t.Fatalf("task after loss = %+v (%v)", task, err)
				}
				if again, err := b.st.TaskClaimRemote(b.ctx, "j1", 1, time.Minute); err != nil || len(again) != 0 {
					t.Fatalf("the agent that lost it claimed it again: %d (%v)", len(again), err)
				}
				again, err := b.st.TaskClaimRemote(b.ctx, "j2", 1, time.Minute)
				if err != nil || len(again) != 1 || again[0].Task.LeaseGeneration != 2 {
					t.Fatalf("j2 claim = %+v (%v), want generation 2", again, err)
				}
				// The old lease's reports are refused.
				if err := b.st.TaskComplete(b.ctx, "j1", c[0].Task.ID, 1, TaskSucceeded, "", nil, nil); err == nil {
					t.Fatal("a report of the lost lease was accepted")
				}
			})

			t.Run("the last candidate keeps the task", func(t *testing.T) {
				b := setup(t, d)
				b.makeRemote(t, "e1", 1, "j1")
				if c, err := b.st.TaskClaimRemote(b.ctx, "j1", 1, time.Millisecond); err != nil || len(c) != 1 {
					t.Fatalf("claim: %d, %v", len(c), err)
				}
				if _, err := b.st.TaskExpireLeases(b.ctx, time.Now().Add(time.Second), nil); err != nil {
					t.Fatal(err)
				}
				if c, err := b.st.TaskClaimRemote(b.ctx, "j1", 1, time.Minute); err != nil || len(c) != 1 {
					t.Fatalf("the only jump agent could not take the task back: %d (%v)", len(c), err)
				}
			})

			t.Run("a revoked agent leaves the pool", func(t *testing.T) {
				b := setup(t, d)
				b.makeRemote(t, "e1", 2, "j1", "j2")
				if _, err := b.st.TaskLoseByAgent(b.ctx, "j1", "revoked", nil); err != nil {
					t.Fatal(err)
				}
				if c, err := b.st.TaskClaimRemote(b.ctx, "j1", 5, time.Minute); err != nil || len(c) != 0 {
					t.Fatalf("a revoked agent claimed %d (%v)", len(c), err)
				}
				if c, err := b.st.TaskClaimRemote(b.ctx, "j2", 5, time.Minute); err != nil || len(c) != 2 {
					t.Fatalf("j2 claimed %d (%v), want 2", len(c), err)
				}
			})

			t.Run("a task whose only jump agent is revoked ends", func(t *testing.T) {
				b := setup(t, d)
				tasks := b.makeRemote(t, "e1", 1, "j1")
				n, err := b.st.TaskLoseByAgent(b.ctx, "j1", "agent revoked", nil)
				if err != nil || n != 1 {
					t.Fatalf("lost %d (%v), want the stranded task", n, err)
				}
				task, err := b.st.TaskGet(b.ctx, tasks[0].ID)
				if err != nil || task.Status != TaskLost {
					t.Fatalf("task = %+v (%v)", task, err)
				}
				if e, _ := b.st.ExecutionGet(b.ctx, "e1"); !isFinal(e.Status) {
					t.Fatalf("execution still %s", e.Status)
				}
			})

			t.Run("exclusive runs on one remote host do not overlap", func(t *testing.T) {
				b := setup(t, d)
				b.makeRemoteWith(t, ExecutionRecord{Exclusive: true}, "e1", 1, "j1")
				b.makeRemoteWith(t, ExecutionRecord{Exclusive: true}, "e2", 1, "j2")
				if c, err := b.st.TaskClaimRemote(b.ctx, "j1", 1, time.Minute); err != nil || len(c) != 1 {
					t.Fatalf("j1 claimed %d (%v)", len(c), err)
				}
				if c, err := b.st.TaskClaimRemote(b.ctx, "j2", 1, time.Minute); err != nil || len(c) != 0 {
					t.Fatalf("j2 claimed %d tasks on a host an exclusive run holds (%v)", len(c), err)
				}
			})

			t.Run("fair share: each claim takes from the execution the agent runs least of", func(t *testing.T) {
				b := setup(t, d)
				b.makeRemote(t, "big", 10, "j1")
				b.makeRemote(t, "small", 2, "j1")
				c, err := b.st.TaskClaimRemote(b.ctx, "j1", 4, time.Minute)
				if err != nil || len(c) != 4 {
					t.Fatalf("claimed %d (%v)", len(c), err)
				}
				per := map[string]int{}
				for _, x := range c {
					per[x.Task.ExecutionID]++
				}
				if per["big"] != 2 || per["small"] != 2 {
					t.Fatalf("claims per execution = %v, want 2 and 2 (the older big run must not take every slot)", per)
				}
			})
		})
	}
}
