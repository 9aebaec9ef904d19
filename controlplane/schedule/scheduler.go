package schedule

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
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
	// PageSize is how many due schedules one query reads (default 1000).
	PageSize int
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
	if cfg.PageSize <= 0 {
		cfg.PageSize = 1000
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
		n, err := s.fireDuePage(ctx, s.cfg.PageSize)
		if err != nil || n < s.cfg.PageSize {
			return err
		}
	}
	return nil
}

// fireDuePage fires up to limit due schedules and says how many it saw.
// The page is split among the workers; each claims its share's slots in
// one transaction, fires them, and records and advances them in one
// more, so a fire costs a share of two commits, not three of its own.
func (s *Scheduler) fireDuePage(ctx context.Context, limit int) (int, error) {
	due, err := s.store.Due(ctx, s.now(), limit)
	if err != nil || len(due) == 0 {
		return 0, err
	}
	blackouts, err := s.store.Blackouts(ctx)
	if err != nil {
		return 0, err
	}
	workers := min(s.cfg.Workers, len(due))
	size := (len(due) + workers - 1) / workers
	var wg sync.WaitGroup
	for start := 0; start < len(due); start += size {
		chunk := due[start:min(start+size, len(due))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.fireChunk(ctx, chunk, blackouts); err != nil && ctx.Err() == nil {
				s.logger.Warn("fire schedules", zap.Int("schedules", len(chunk)), zap.Error(err))
			}
		}()
	}
	wg.Wait()
	return len(due), nil
}

// plan is what a due schedule comes to, worked out without the database:
// its missed slots, whether its latest slot fires, and how it moves on.
type plan struct {
	r    Record
	sc   *opsconductorv1.Schedule
	st   step
	fire bool      // the latest slot fires (if the claim succeeds)
	slot time.Time // that slot
	why  string    // said of the fire (a catch-up)
}

// planFor plans a due schedule at now; false when its jitter has not
// passed yet.
func (s *Scheduler) planFor(r Record, now time.Time) (plan, bool) {
	first := *r.NextFireAt
	p := plan{r: r, st: step{id: r.ID, expect: first, advance: true}}
	sc, err := toProto(r)
	var spec *Spec
	var vs []apperr.Violation
	if err == nil {
		spec, vs = SpecOf("schedule", sc)
	}
	if err != nil || len(vs) > 0 {
		// It was valid when saved; a zone database change could do this.
		s.logger.Error("schedule can no longer be read; completing it", zap.String("schedule_id", r.ID))
		p.st.last, p.st.state = first, StateCompleted
		return p, true
	}
	p.sc = sc
	jitter := sc.GetJitter().AsDuration()
	// Jitter delays the fire, not its nominal time.
	if now.Before(first.Add(Jitter(r.ID, first, jitter))) {
		return p, false
	}
	due := []time.Time{first}
	capped := false
	for t := first; ; {
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
		p.st.fires = append(p.st.fires, FireRecord{ScheduleID: r.ID, ScheduledFor: m, Outcome: OutcomeMissed,
			Reason: "a later fire was already due when the scheduler ran (it was not running at this time)"})
	}
	p.st.last, p.st.state = latest, StateActive
	if capped {
		next, _ := spec.Next(latest)
		p.st.next = &next
		return p, true
	}
	grace := DefaultMisfireGrace
	if g := sc.GetMisfireGrace(); g != nil {
		grace = g.AsDuration()
	}
	// Lateness counts from when the fire was meant to happen: the slot
	// plus its jitter.
	switch late := now.Sub(latest.Add(Jitter(r.ID, latest, jitter))); {
	case late <= grace:
		p.fire, p.slot = true, latest
	case sc.GetMisfirePolicy() == MisfireRunOnce:
		p.fire, p.slot = true, latest
		p.why = fmt.Sprintf("catch-up: %s late, past the misfire grace %s (misfire_policy run_once)", late.Round(time.Second), grace)
	default:
		p.st.fires = append(p.st.fires, FireRecord{ScheduleID: r.ID, ScheduledFor: latest, Outcome: OutcomeMissed,
			Reason: fmt.Sprintf("%s late, past the misfire grace %s (misfire_policy skip)", late.Round(time.Second), grace)})
	}
	if next, ok := spec.Next(now); ok {
		p.st.next = &next
	} else {
		p.st.state = StateCompleted
	}
	return p, true
}

// fireChunk plans, claims (one transaction), fires, and records and
// advances (one transaction) a share of a page.
func (s *Scheduler) fireChunk(ctx context.Context, chunk []Record, blackouts []*opsconductorv1.BlackoutWindow) error {
	now := s.now()
	var plans []plan
	for _, r := range chunk {
		if p, ok := s.planFor(r, now); ok {
			plans = append(plans, p)
		}
	}
	var ids []string
	var firsts, slots []time.Time
	var which []int
	for i, p := range plans {
		if p.fire {
			ids, firsts, slots, which = append(ids, p.r.ID), append(firsts, p.st.expect), append(slots, p.slot), append(which, i)
		}
	}
	if len(ids) > 0 {
		claimed, outcomes, err := s.store.ClaimSlots(ctx, ids, firsts, slots)
		if err != nil {
			return err
		}
		for k, i := range which {
			if !claimed[k] && outcomes[k] != OutcomeFiring {
				continue // fired or skipped already, or the schedule changed
			}
			rec, err := s.fireSlot(ctx, plans[i], !claimed[k], blackouts)
			if err != nil {
				s.logger.Warn("fire schedule", zap.String("schedule_id", plans[i].r.ID), zap.Error(err))
				plans[i].st.advance = false // the slot stays claimed: the next pass takes it up
				continue
			}
			plans[i].st.fires = append(plans[i].st.fires, rec)
		}
	}
	steps := make([]step, len(plans))
	for i, p := range plans {
		steps[i] = p.st
	}
	return s.store.CommitSteps(ctx, steps)
}

// fireSlot fires a plan's claimed slot and returns its record. retaken:
// the slot was claimed before (a crash, or another replica that also
// thought it was active), so its execution may exist already.
func (s *Scheduler) fireSlot(ctx context.Context, p plan, retaken bool, blackouts []*opsconductorv1.BlackoutWindow) (FireRecord, error) {
	r, sc, slot := p.r, p.sc, p.slot
	jitter := Jitter(r.ID, slot, sc.GetJitter().AsDuration())
	record := func(outcome, reason, executionID string) FireRecord {
		at := s.now()
		late := at.Sub(slot.Add(jitter))
		return FireRecord{ScheduleID: r.ID, ScheduledFor: slot, FiredAt: &at, Lateness: at.Sub(slot),
			Outcome: outcome, Reason: reason, ExecutionID: executionID, Late: outcome == OutcomeFired && late > s.cfg.LateAfter}
	}
	run := Run{ScheduleID: r.ID, JobID: r.JobID, Slot: slot, Parameters: sc.GetParameters(), Targets: sc.GetTargets(),
		Queue: sc.GetOverlapPolicy() == OverlapQueue, As: r.RunAs}
	if retaken {
		id, err := s.firer.FiredExecution(ctx, run)
		if err != nil {
			return FireRecord{}, err
		}
		if id != "" {
			return record(OutcomeFired, p.why, id), nil
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
			return record(OutcomeSkipped, fmt.Sprintf("blackout window %q", b.GetName()), ""), nil
		}
	}
	if labelsErr != nil {
		// A blackout might have applied: do not guess.
		return record(OutcomeFailed, "could not read the job's labels to apply blackout windows: "+labelsErr.Error(), ""), nil
	}
	if overlap := sc.GetOverlapPolicy(); overlap == "" || overlap == OverlapSkip {
		running, err := s.firer.ScheduleRunning(ctx, r.ID)
		if err != nil {
			return FireRecord{}, err
		}
		if running {
			return record(OutcomeSkipped, "the previous run of this schedule is still running (overlap_policy skip)", ""), nil
		}
	}
	id, err := s.firer.FireSchedule(ctx, run)
	if err != nil {
		s.logger.Warn("schedule fire refused", zap.String("schedule_id", r.ID), zap.Time("scheduled_for", slot), zap.Error(err))
		return record(OutcomeFailed, err.Error(), ""), nil
	}
	s.logger.Debug("schedule fired", zap.String("schedule_id", r.ID), zap.Time("scheduled_for", slot), zap.String("execution_id", id),
		zap.Duration("lateness", s.now().Sub(slot)))
	return record(OutcomeFired, p.why, id), nil
}
