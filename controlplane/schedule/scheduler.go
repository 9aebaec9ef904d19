package schedule

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// DefaultMisfireGrace is how late a fire may still run when a schedule
// sets no misfire_grace.
const DefaultMisfireGrace = time.Minute

// Run is one fire of a schedule, as the executions service gets it.
type Run struct {
	ScheduleID string
	JobID      string
	// Slot is the nominal fire time; with ScheduleID it makes the
	// execution idempotent, so a retried fire never runs twice.
	Slot       time.Time
	Parameters map[string]string
	Targets    []*opsconductorv1.Target
	// Queue: wait for the job's running execution (overlap_policy queue).
	Queue bool
	// As is what the schedule may do: the grants of whoever last saved or
	// resumed it (see RunAs).
	As []byte
}

// Firer creates the executions of fires; the executions service
// implements it.
type Firer interface {
	FireSchedule(ctx context.Context, r Run) (string, error)
	// ScheduleRunning reports whether an execution the schedule fired is
	// still queued or running.
	ScheduleRunning(ctx context.Context, scheduleID string) (bool, error)
	// JobLabels are the labels of the job (for blackout selectors).
	JobLabels(ctx context.Context, jobID string) (map[string]string, error)
	// FiredExecution is the execution FireSchedule made for the slot, if
	// any ("" when none): a fire taken up again after a crash finds it.
	FiredExecution(ctx context.Context, r Run) (string, error)
}

// SchedulerConfig tunes the scheduler.
type SchedulerConfig struct {
	// Tick is how often the active scheduler looks for due schedules
	// (default 200ms).
	Tick time.Duration
	// Retry is how often a standby replica tries to become active
	// (default 1s): the bound on a fail-over.
	Retry time.Duration
	// LateAfter: a fire later than this also emits a schedule.late event
	// (default 30s).
	LateAfter time.Duration
	// Workers fire that many due schedules at once (default 8): a minute
	// when thousands are due is not dispatched one by one.
	Workers int
	// MaxCatchUp bounds the missed slots one pass records for a schedule
	// (default 10000); the next pass goes on from there.
	MaxCatchUp int
}

// Scheduler fires due schedules. Every replica runs one; a Postgres
// advisory lock held on its own connection makes exactly one active (a
// crashed holder's session ends and the lock with it; a standby takes
// over within Retry). The unique (schedule, scheduled_for) key is the
// second guard: a slot is fired once even if two replicas thought they
// were active.
type Scheduler struct {
	db     *store.DB
	store  *Store
	firer  Firer
	now    func() time.Time
	cfg    SchedulerConfig
	logger *zap.Logger
}

// NewScheduler builds a scheduler; now nil means time.Now.
func NewScheduler(db *store.DB, st *Store, firer Firer, now func() time.Time, logger *zap.Logger, cfg SchedulerConfig) *Scheduler {
	if now == nil {
		now = time.Now
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 200 * time.Millisecond
	}
	if cfg.Retry <= 0 {
		cfg.Retry = time.Second
	}
	if cfg.LateAfter <= 0 {
		cfg.LateAfter = 30 * time.Second
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.MaxCatchUp <= 0 {
		cfg.MaxCatchUp = 10000
	}
	return &Scheduler{db: db, store: st, firer: firer, now: now, cfg: cfg, logger: logger.Named("scheduler")}
}

// lockKey names the scheduler's advisory lock.
const lockKey = "opsconductor.scheduler"

// Run takes part in the election and, while active, fires due schedules
// until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		lock, ok, err := s.db.TryLock(ctx, lockKey)
		if err != nil {
			s.logger.Warn("scheduler election", zap.Error(err))
		}
		if ok {
			s.logger.Info("this replica is the active scheduler")
			s.active(ctx, lock)
			lock.Release()
			if ctx.Err() == nil {
				s.logger.Warn("this replica is no longer the active scheduler")
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(s.cfg.Retry):
		}
	}
	return nil
}

func (s *Scheduler) active(ctx context.Context, lock *store.SessionLock) {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	for {
		if !lock.Held(ctx) {
			return
		}
		if err := s.FireDue(ctx); err != nil && ctx.Err() == nil {
			s.logger.Warn("fire due schedules", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// FireDue fires every schedule due now (the active scheduler calls it
// every tick; tests call it with an injected clock).
func (s *Scheduler) FireDue(ctx context.Context) error {
	// A page at a time, until nothing is due (or a bound, should some
	// schedule keep failing to advance): thousands due in the same second
	// do not wait a tick per page.
	for range 100 {
		n, err := s.fireDuePage(ctx, 1000)
		if err != nil || n < 1000 {
			return err
		}
	}
	return nil
}

// fireDuePage fires up to limit due schedules and says how many it saw.
func (s *Scheduler) fireDuePage(ctx context.Context, limit int) (int, error) {
	due, err := s.store.Due(ctx, s.now(), limit)
	if err != nil || len(due) == 0 {
		return 0, err
	}
	blackouts, err := s.store.Blackouts(ctx)
	if err != nil {
		return 0, err
	}
	// Schedules are independent (each slot has its own unique key), so
	// they fire side by side.
	work := make(chan Record)
	var wg sync.WaitGroup
	for range min(s.cfg.Workers, len(due)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				if err := s.fireSchedule(ctx, r, blackouts); err != nil {
					s.logger.Warn("fire schedule", zap.String("schedule_id", r.ID), zap.Error(err))
				}
			}
		}()
	}
	for _, r := range due {
		work <- r
	}
	close(work)
	wg.Wait()
	return len(due), nil
}

// fireSchedule handles a due schedule: the slots that passed (missed, or
// the latest fired), then the next fire time.
func (s *Scheduler) fireSchedule(ctx context.Context, r Record, blackouts []*opsconductorv1.BlackoutWindow) error {
	sc, err := toProto(r)
	if err != nil {
		return err
	}
	spec, vs := SpecOf("schedule", sc)
	if len(vs) > 0 {
		// It was valid when saved; a zone database change could do this.
		_, err := s.store.Advance(ctx, r.ID, *r.NextFireAt, nil, *r.NextFireAt, StateCompleted)
		s.logger.Error("schedule can no longer be read; completing it", zap.String("schedule_id", r.ID), zap.String("why", vs[0].Description))
		return err
	}
	now := s.now()
	slot := *r.NextFireAt
	jitter := sc.GetJitter().AsDuration()
	// Jitter delays the fire, not its nominal time.
	if now.Before(slot.Add(Jitter(r.ID, slot, jitter))) {
		return nil
	}
	due := []time.Time{slot}
	capped := false
	for t := slot; ; {
		next, ok := spec.Next(t)
		if !ok || next.After(now) {
			break
		}
		if len(due) == s.cfg.MaxCatchUp {
			capped = true
			break
		}
		due, t = append(due, next), next
	}
	latest := due[len(due)-1]
	missed := due[:len(due)-1]
	if capped {
		// More than one pass's worth: record these and go on from the
		// next slot in the next pass; nothing runs for them.
		missed = due
	}
	for _, m := range missed {
		if err := s.store.RecordFire(ctx, FireRecord{ScheduleID: r.ID, ScheduledFor: m, Outcome: OutcomeMissed,
			Reason: "a later fire was already due when the scheduler ran (it was not running at this time)"}); err != nil {
			return err
		}
	}
	if capped {
		next, _ := spec.Next(latest)
		_, err := s.store.Advance(ctx, r.ID, slot, &next, latest, StateActive)
		return err
	}
	grace := DefaultMisfireGrace
	if g := sc.GetMisfireGrace(); g != nil {
		grace = g.AsDuration()
	}
	// Lateness counts from when the fire was meant to happen: the slot
	// plus its jitter.
	switch late := now.Sub(latest.Add(Jitter(r.ID, latest, jitter))); {
	case late <= grace:
		err = s.fireSlot(ctx, r, sc, slot, latest, blackouts, "")
	case sc.GetMisfirePolicy() == MisfireRunOnce:
		err = s.fireSlot(ctx, r, sc, slot, latest, blackouts, fmt.Sprintf("catch-up: %s late, past the misfire grace %s (misfire_policy run_once)", late.Round(time.Second), grace))
	default:
		err = s.store.RecordFire(ctx, FireRecord{ScheduleID: r.ID, ScheduledFor: latest, Outcome: OutcomeMissed,
			Reason: fmt.Sprintf("%s late, past the misfire grace %s (misfire_policy skip)", late.Round(time.Second), grace)})
	}
	if err != nil {
		return err
	}
	state := StateActive
	nextPtr := (*time.Time)(nil)
	if next, ok := spec.Next(now); ok {
		nextPtr = &next
	} else {
		state = StateCompleted
	}
	_, err = s.store.Advance(ctx, r.ID, slot, nextPtr, latest, state)
	return err
}

// fireSlot creates the execution of one slot, once: the slot is claimed
// first, and the execution is idempotent on (schedule, slot), so a fire
// retried after a crash cannot run twice.
//
// first is the schedule's next fire time as read: the claim only happens
// while it still is (a pause or an edit since wins).
func (s *Scheduler) fireSlot(ctx context.Context, r Record, sc *opsconductorv1.Schedule, first, slot time.Time, blackouts []*opsconductorv1.BlackoutWindow, why string) error {
	claimed, outcome, err := s.store.ClaimSlot(ctx, r.ID, first, slot)
	if err != nil {
		return err
	}
	if !claimed && outcome != OutcomeFiring {
		return nil // fired or skipped already, or the schedule changed
	}
	jitter := Jitter(r.ID, slot, sc.GetJitter().AsDuration())
	record := func(outcome, reason, executionID string) error {
		at := s.now()
		late := at.Sub(slot.Add(jitter))
		return s.store.RecordFire(ctx, FireRecord{ScheduleID: r.ID, ScheduledFor: slot, FiredAt: &at, Lateness: at.Sub(slot),
			Outcome: outcome, Reason: reason, ExecutionID: executionID, Late: outcome == OutcomeFired && late > s.cfg.LateAfter})
	}
	run := Run{ScheduleID: r.ID, JobID: r.JobID, Slot: slot, Parameters: sc.GetParameters(), Targets: sc.GetTargets(),
		Queue: sc.GetOverlapPolicy() == OverlapQueue, As: r.RunAs}
	if !claimed {
		// Taken up again (a crash, or another replica that also thought
		// it was active): the execution may exist already.
		id, err := s.firer.FiredExecution(ctx, run)
		if err != nil {
			return err
		}
		if id != "" {
			return record(OutcomeFired, why, id)
		}
	}
	var labels map[string]string
	var labelsErr error
	jobLabels := func() map[string]string {
		if labels == nil && labelsErr == nil {
			if labels, labelsErr = s.firer.JobLabels(ctx, r.JobID); labels == nil {
				labels = map[string]string{}
			}
		}
		return labels
	}
	for _, b := range blackouts {
		if covers(b, slot) && applies(b, r.ID, jobLabels) {
			return record(OutcomeSkipped, fmt.Sprintf("blackout window %q", b.GetName()), "")
		}
	}
	if labelsErr != nil {
		// A blackout might have applied: do not guess.
		return record(OutcomeFailed, "could not read the job's labels to apply blackout windows: "+labelsErr.Error(), "")
	}
	overlap := sc.GetOverlapPolicy()
	if overlap == "" || overlap == OverlapSkip {
		running, err := s.firer.ScheduleRunning(ctx, r.ID)
		if err != nil {
			return err
		}
		if running {
			return record(OutcomeSkipped, "the previous run of this schedule is still running (overlap_policy skip)", "")
		}
	}
	id, err := s.firer.FireSchedule(ctx, run)
	if err != nil {
		s.logger.Warn("schedule fire refused", zap.String("schedule_id", r.ID), zap.Time("scheduled_for", slot), zap.Error(err))
		return record(OutcomeFailed, err.Error(), "")
	}
	s.logger.Info("schedule fired", zap.String("schedule_id", r.ID), zap.Time("scheduled_for", slot), zap.String("execution_id", id),
		zap.Duration("lateness", s.now().Sub(slot)))
	return record(OutcomeFired, why, id)
}
