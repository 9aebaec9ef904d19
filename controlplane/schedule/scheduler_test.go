package schedule

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// fakeFirer records fires (a unit test of the scheduler alone; the
// end-to-end test uses the real executions service).
type fakeFirer struct {
	mu       sync.Mutex
	runs     []Run
	running  bool
	fail     error
	existing map[int64]string // slot (Unix) -> an execution made before a crash
}

func (f *fakeFirer) FireSchedule(_ context.Context, r Run) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return "", f.fail
	}
	f.runs = append(f.runs, r)
	return fmt.Sprintf("exec-%d", len(f.runs)), nil
}

func (f *fakeFirer) ScheduleRunning(context.Context, string) (bool, error) { return f.running, nil }

func (f *fakeFirer) FiredExecution(_ context.Context, r Run) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.existing[r.Slot.Unix()], nil
}

func (f *fakeFirer) JobLabels(context.Context, string) (map[string]string, error) {
	return map[string]string{"team": "payments"}, nil
}

// rig is a schedule service and scheduler on one SQLite store with a
// clock the test moves.
type rig struct {
	now   time.Time
	svc   *Service
	sched *Scheduler
	firer *fakeFirer
	store *Store
}

func newRig(t *testing.T, start time.Time) *rig {
	t.Helper()
	return newRigOn(t, "sqlite", start)
}

// newRigOn is newRig on a store of dialect d (Postgres takes the
// multi-row path of the scheduler).
func newRigOn(t *testing.T, d store.Dialect, start time.Time) *rig {
	t.Helper()
	db := storetest.Open(t, d, Schema, Migrations())
	r := &rig{now: start, firer: &fakeFirer{}, store: NewStore(db)}
	clock := func() time.Time { return r.now }
	r.svc = NewService(r.store, plannerFunc(func(string) error { return nil }), clock, zap.NewNop())
	r.sched = NewScheduler(db, r.store, r.firer, clock, zap.NewNop(), SchedulerConfig{})
	return r
}

func (r *rig) create(t *testing.T, sc *opsconductorv1.Schedule) string {
	t.Helper()
	sc.JobId = "job-1"
	resp, err := r.svc.CreateSchedule(context.Background(), connect.NewRequest(&opsconductorv1.CreateScheduleRequest{Schedule: sc}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetSchedule().GetId()
}

// outcomes lists the fires oldest first as "HH:MM:SS outcome".
func (r *rig) outcomes(t *testing.T, id string) []string {
	t.Helper()
	fires, err := r.store.Fires(context.Background(), id, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := len(fires) - 1; i >= 0; i-- {
		out = append(out, fires[i].ScheduledFor.Format("15:04:05")+" "+fires[i].Outcome)
	}
	return out
}

func (r *rig) tick(t *testing.T) {
	t.Helper()
	if err := r.sched.FireDue(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func equal(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

func TestSchedulerFiresOnceEach(t *testing.T) {
	r := newRig(t, utc("2026-01-01T10:00:00Z"))
	id := r.create(t, &opsconductorv1.Schedule{Kind: KindInterval, Every: durationpb.New(10 * time.Second), Anchor: timestamppb.New(utc("2026-01-01T10:00:00Z"))})
	r.tick(t) // nothing due yet
	r.now = utc("2026-01-01T10:00:10.3Z")
	r.tick(t)
	r.tick(t) // a second look at the same moment fires nothing more
	r.now = utc("2026-01-01T10:00:20.1Z")
	r.tick(t)
	if got := r.outcomes(t, id); !equal(got, []string{"10:00:10 fired", "10:00:20 fired"}) {
		t.Fatalf("fires = %v", got)
	}
	if len(r.firer.runs) != 2 || !r.firer.runs[0].Slot.Equal(utc("2026-01-01T10:00:10Z")) {
		t.Fatalf("runs = %+v", r.firer.runs)
	}
}

// TestSchedulerMisfire: after downtime across several fire times, skip
// runs nothing (every slot recorded missed) and run_once runs exactly one
// catch-up (the latest slot); a slot still within the grace just runs late.
func TestSchedulerMisfire(t *testing.T) {
	for _, tt := range []struct {
		policy string
		want   []string
		runs   int
	}{
		{MisfireSkip, []string{"10:01:00 missed", "10:02:00 missed", "10:03:00 missed"}, 0},
		{MisfireRunOnce, []string{"10:01:00 missed", "10:02:00 missed", "10:03:00 fired"}, 1},
	} {
		t.Run(tt.policy, func(t *testing.T) {
			r := newRig(t, utc("2026-01-01T10:00:30Z"))
			id := r.create(t, &opsconductorv1.Schedule{Kind: KindCron, Cron: "* * * * *", MisfirePolicy: tt.policy, MisfireGrace: durationpb.New(20 * time.Second)})
			// The control plane was down from 10:00:30 to 10:03:45.
			r.now = utc("2026-01-01T10:03:45Z")
			r.tick(t)
			if got := r.outcomes(t, id); !equal(got, tt.want) || len(r.firer.runs) != tt.runs {
				t.Fatalf("fires = %v, runs %d; want %v, %d", got, len(r.firer.runs), tt.want, tt.runs)
			}
			// It goes on from now.
			r.now = utc("2026-01-01T10:04:05Z")
			r.tick(t)
			if got := r.outcomes(t, id); got[len(got)-1] != "10:04:00 fired" {
				t.Fatalf("after catching up: %v", got)
			}
		})
	}
	r := newRig(t, utc("2026-01-01T10:00:30Z"))
	id := r.create(t, &opsconductorv1.Schedule{Kind: KindCron, Cron: "* * * * *"})
	r.now = utc("2026-01-01T10:02:40Z") // 10:01 missed, 10:02 within the default grace
	r.tick(t)
	if got := r.outcomes(t, id); !equal(got, []string{"10:01:00 missed", "10:02:00 fired"}) {
		t.Fatalf("late within grace: %v", got)
	}
	// 40s late is past the alert threshold: an event says so.
	var topics []string
	rows, err := r.store.db.QueryContext(context.Background(), `SELECT topic FROM outbox ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var topic string
		_ = rows.Scan(&topic)
		topics = append(topics, topic)
	}
	rows.Close()
	if got := fmt.Sprint(topics); !strings.Contains(got, "schedule.missed schedule.fired schedule.late") {
		t.Fatalf("events = %s", got)
	}
}

// TestSchedulerOverlapAndFailures: overlap skip records skipped fires while
// the previous run runs; a refused fire is recorded failed with why; a once
// schedule completes after firing.
func TestSchedulerOverlapAndFailures(t *testing.T) {
	r := newRig(t, utc("2026-01-01T10:00:00Z"))
	id := r.create(t, &opsconductorv1.Schedule{Kind: KindInterval, Every: durationpb.New(time.Minute), OverlapPolicy: OverlapSkip})
	r.firer.running = true
	r.now = utc("2026-01-01T10:01:00.5Z")
	r.tick(t)
	r.firer.running, r.firer.fail = false, errors.New("job nightly has dangerous commands")
	r.now = utc("2026-01-01T10:02:00.5Z")
	r.tick(t)
	fires, _ := r.store.Fires(context.Background(), id, 10)
	if len(fires) != 2 || fires[1].Outcome != OutcomeSkipped || fires[0].Outcome != OutcomeFailed || fires[0].Reason != "job nightly has dangerous commands" {
		t.Fatalf("fires = %+v", fires)
	}
	if len(r.firer.runs) != 0 {
		t.Fatalf("ran %d", len(r.firer.runs))
	}

	once := r.create(t, &opsconductorv1.Schedule{Kind: KindOnce, At: timestamppb.New(utc("2026-01-01T10:05:00Z"))})
	r.firer.fail = nil
	r.now = utc("2026-01-01T10:05:01Z")
	r.tick(t)
	rec, err := r.store.Get(context.Background(), once)
	if err != nil || rec.State != StateCompleted || rec.NextFireAt != nil {
		t.Fatalf("once after firing = %+v, %v", rec, err)
	}
}

// TestSchedulerBulk: many schedules due in the same second all fire, each
// once, in one pass.
func TestSchedulerBulk(t *testing.T) {
	r := newRig(t, utc("2026-01-01T09:59:30Z"))
	var ids []string
	for range 200 {
		ids = append(ids, r.create(t, &opsconductorv1.Schedule{Kind: KindCron, Cron: "0 10 * * *", OverlapPolicy: OverlapAllow}))
	}
	r.now = utc("2026-01-01T10:00:00.5Z")
	r.tick(t)
	r.tick(t)
	if len(r.firer.runs) != 200 {
		t.Fatalf("%d runs for 200 schedules due at once", len(r.firer.runs))
	}
	for _, id := range ids {
		if got := r.outcomes(t, id); !equal(got, []string{"10:00:00 fired"}) {
			t.Fatalf("schedule %s: %v", id, got)
		}
	}
}

// TestSchedulerEdges: jitter delays a fire without making it late; a fire
// claimed before a crash is recorded with the execution it already made,
// not run again; a pause between reading and claiming wins; a long
// downtime is caught up in bounded passes without losing a slot.
func TestSchedulerEdges(t *testing.T) {
	ctx := context.Background()
	t.Run("jitter", func(t *testing.T) {
		r := newRig(t, utc("2026-01-01T10:00:00Z"))
		id := r.create(t, &opsconductorv1.Schedule{Kind: KindInterval, Every: durationpb.New(10 * time.Minute), Jitter: durationpb.New(5 * time.Minute),
			Anchor: timestamppb.New(utc("2026-01-01T10:00:00Z"))})
		slot := utc("2026-01-01T10:10:00Z")
		j := Jitter(id, slot, 5*time.Minute)
		r.now = slot.Add(j - time.Second)
		r.tick(t)
		if len(r.firer.runs) != 0 {
			t.Fatal("fired before its jitter")
		}
		r.now = slot.Add(j + time.Second)
		r.tick(t)
		if got := r.outcomes(t, id); !equal(got, []string{"10:10:00 fired"}) {
			t.Fatalf("fires = %v (jitter %s)", got, j)
		}
	})
	t.Run("a claimed slot taken up again", func(t *testing.T) {
		r := newRig(t, utc("2026-01-01T10:00:00Z"))
		id := r.create(t, &opsconductorv1.Schedule{Kind: KindCron, Cron: "* * * * *"})
		slot := utc("2026-01-01T10:01:00Z")
		if claimed, _, err := r.store.ClaimSlot(ctx, id, slot, slot); err != nil || !claimed {
			t.Fatalf("claim: %v %v", claimed, err)
		}
		r.firer.existing = map[int64]string{slot.Unix(): "exec-before-crash"}
		r.now = slot.Add(time.Second)
		r.tick(t)
		fires, _ := r.store.Fires(ctx, id, 5)
		if len(r.firer.runs) != 0 || len(fires) != 1 || fires[0].Outcome != OutcomeFired || fires[0].ExecutionID != "exec-before-crash" {
			t.Fatalf("runs %d, fires %+v", len(r.firer.runs), fires)
		}
	})
	t.Run("a pause wins over a claim", func(t *testing.T) {
		r := newRig(t, utc("2026-01-01T10:00:00Z"))
		id := r.create(t, &opsconductorv1.Schedule{Kind: KindCron, Cron: "* * * * *"})
		if _, err := r.svc.PauseSchedule(ctx, connect.NewRequest(&opsconductorv1.PauseScheduleRequest{Id: id})); err != nil {
			t.Fatal(err)
		}
		slot := utc("2026-01-01T10:01:00Z")
		if claimed, outcome, err := r.store.ClaimSlot(ctx, id, slot, slot); err != nil || claimed || outcome != "" {
			t.Fatalf("claim of a paused schedule: %v %q %v", claimed, outcome, err)
		}
	})
	t.Run("long downtime in bounded passes", func(t *testing.T) {
		r := newRig(t, utc("2026-01-01T10:00:00Z"))
		r.sched.cfg.MaxCatchUp = 4
		id := r.create(t, &opsconductorv1.Schedule{Kind: KindCron, Cron: "* * * * *"})
		r.now = utc("2026-01-01T10:10:30Z") // 10 slots passed
		for range 4 {
			r.tick(t)
		}
		got := r.outcomes(t, id)
		if len(got) != 10 || got[9] != "10:10:00 fired" {
			t.Fatalf("fires = %v", got)
		}
		for i, f := range got[:9] {
			if want := fmt.Sprintf("10:%02d:00 missed", i+1); f != want {
				t.Fatalf("fire %d = %q, want %q (%v)", i, f, want, got)
			}
		}
	})
}

// TestSchedulerOnBothStores runs the core cases on Postgres too, whose
// scheduler path claims and records with multi-row statements.
func TestSchedulerOnBothStores(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			r := newRigOn(t, d, utc("2026-01-01T09:59:30Z"))
			var ids []string
			for range 50 {
				ids = append(ids, r.create(t, &opsconductorv1.Schedule{Kind: KindCron, Cron: "0 * * * *", OverlapPolicy: OverlapAllow}))
			}
			skip := r.create(t, &opsconductorv1.Schedule{Kind: KindCron, Cron: "* * * * *", MisfireGrace: durationpb.New(10 * time.Second)})
			r.now = utc("2026-01-01T10:00:00.5Z")
			r.tick(t)
			r.tick(t)
			if len(r.firer.runs) != 51 {
				t.Fatalf("%d runs, want 51", len(r.firer.runs))
			}
			for _, id := range ids {
				if got := r.outcomes(t, id); !equal(got, []string{"10:00:00 fired"}) {
					t.Fatalf("schedule %s: %v", id, got)
				}
			}
			// Down for two minutes: the every-minute one misses 10:01 and,
			// past its grace, 10:02; then it goes on.
			r.now = utc("2026-01-01T10:02:30Z")
			r.tick(t)
			r.now = utc("2026-01-01T10:03:01Z")
			r.tick(t)
			if got := r.outcomes(t, skip); !equal(got, []string{"10:00:00 fired", "10:01:00 missed", "10:02:00 missed", "10:03:00 fired"}) {
				t.Fatalf("every-minute schedule: %v", got)
			}
			rec, err := r.store.Get(context.Background(), ids[0])
			if err != nil || !rec.NextFireAt.Equal(utc("2026-01-01T11:00:00Z")) || !rec.LastFireAt.Equal(utc("2026-01-01T10:00:00Z")) {
				t.Fatalf("advanced to %v / %v (%v)", rec.NextFireAt, rec.LastFireAt, err)
			}
			var events int
			if err := r.store.db.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM outbox WHERE topic LIKE 'schedule.%'`).Scan(&events); err != nil || events < 55 {
				t.Fatalf("%d schedule events (%v)", events, err)
			}
		})
	}
}

// TestSchedulerWindow covers the active scheduler's window: slots claimed
// ahead of their fire, a claim given up (and recorded) when its schedule
// is paused or moved meanwhile, an edit that keeps the slot, and a claim
// left by a scheduler that went away, fired once by the next.
func TestSchedulerWindow(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			anchor := utc("2026-01-01T10:00:00Z")
			r := newRigOn(t, d, anchor)
			every := func() *opsconductorv1.Schedule {
				return &opsconductorv1.Schedule{Kind: KindInterval, Every: durationpb.New(10 * time.Second), Anchor: timestamppb.New(anchor),
					OverlapPolicy: OverlapAllow}
			}
			kept, paused, edited, late := r.create(t, every()), r.create(t, every()), r.create(t, every()), r.create(t, every())
			w := newWindow()
			r.now = utc("2026-01-01T10:00:09Z")
			if _, err := r.sched.prepare(ctx, w, r.now, r.now.Add(2*time.Second)); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{kept, paused, edited, late} {
				if got := r.outcomes(t, id); !equal(got, []string{"10:00:10 firing"}) {
					t.Fatalf("schedule %s before its fire: %v, want the slot claimed ahead", id, got)
				}
				if e := w.entries[id]; e == nil || !e.claimed.Equal(utc("2026-01-01T10:00:10Z")) {
					t.Fatalf("schedule %s: the window does not hold its claim: %+v", id, e)
				}
			}
			if _, err := r.svc.PauseSchedule(ctx, connect.NewRequest(&opsconductorv1.PauseScheduleRequest{Id: paused})); err != nil {
				t.Fatal(err)
			}
			got, err := r.svc.GetSchedule(ctx, connect.NewRequest(&opsconductorv1.GetScheduleRequest{Id: edited}))
			if err != nil {
				t.Fatal(err)
			}
			sc := got.Msg.GetSchedule()
			sc.Parameters = map[string]string{"edition": "2"}
			if _, err := r.svc.UpdateSchedule(ctx, connect.NewRequest(&opsconductorv1.UpdateScheduleRequest{Schedule: sc})); err != nil {
				t.Fatal(err)
			}
			r.now = utc("2026-01-01T10:00:09.5Z")
			if _, err := r.sched.prepare(ctx, w, r.now, r.now.Add(2*time.Second)); err != nil {
				t.Fatal(err)
			}
			// Paused after the last refresh, just before its fire: the fire
			// re-checks and does not run it.
			if _, err := r.svc.PauseSchedule(ctx, connect.NewRequest(&opsconductorv1.PauseScheduleRequest{Id: late})); err != nil {
				t.Fatal(err)
			}
			r.now = utc("2026-01-01T10:00:10.02Z")
			before := len(r.firer.runs)
			r.sched.fireWindow(ctx, w, r.now, nil)
			if n := len(r.firer.runs) - before; n != 2 {
				t.Fatalf("%d fired at 10:00:10, want 2 (the paused ones not)", n)
			}
			if got := r.outcomes(t, late); !equal(got, []string{"10:00:10 skipped"}) {
				t.Fatalf("schedule paused just before its fire: %v, want its claim recorded skipped", got)
			}
			if got := r.outcomes(t, paused); !equal(got, []string{"10:00:10 skipped"}) {
				t.Fatalf("paused schedule: %v, want its claim recorded skipped", got)
			}
			fires, err := r.store.Fires(ctx, paused, 10)
			if err != nil || fires[0].Reason != released {
				t.Fatalf("paused schedule's fire: %+v (%v)", fires, err)
			}
			for _, id := range []string{kept, edited} {
				if got := r.outcomes(t, id); !equal(got, []string{"10:00:10 fired"}) {
					t.Fatalf("schedule %s: %v", id, got)
				}
			}
			for _, run := range r.firer.runs {
				if run.ScheduleID == edited && run.Parameters["edition"] != "2" {
					t.Fatalf("the edited schedule fired with %v, want its new parameters", run.Parameters)
				}
			}
			if e := w.entries[kept]; e == nil || !e.r.NextFireAt.Equal(utc("2026-01-01T10:00:20Z")) {
				t.Fatalf("after firing, the window holds %+v for the kept schedule, want its next fire", e)
			}

			// A scheduler claims 10:00:20 ahead and goes away; the next one
			// fires that slot once, late but within the grace.
			r.now = utc("2026-01-01T10:00:19Z")
			if _, err := r.sched.prepare(ctx, newWindow(), r.now, r.now.Add(2*time.Second)); err != nil {
				t.Fatal(err)
			}
			before = len(r.firer.runs)
			r.now = utc("2026-01-01T10:00:21Z")
			r.tick(t)
			r.tick(t)
			if n := len(r.firer.runs) - before; n != 2 {
				t.Fatalf("%d fires of 10:00:20 by the next scheduler, want 2 (kept and edited)", n)
			}
			if got := r.outcomes(t, kept); !equal(got, []string{"10:00:10 fired", "10:00:20 fired"}) {
				t.Fatalf("kept schedule: %v", got)
			}
		})
	}
}
