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
	// PageSize is how many schedules of the window one query reads
	// (default 20000).
	PageSize int
	// Lateness, if set, observes each fire's lateness in seconds (fired_at
	// - scheduled_for), for the Prometheus histogram.
	Lateness interface{ Observe(float64) }
	// Lookahead is how far ahead the active scheduler reads schedules
	// into memory and claims their slots (default 2s), so that a fire
	// waits for neither.
	Lookahead time.Duration
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
		cfg.PageSize = 20000
	}
	if cfg.Lookahead < cfg.Tick {
		cfg.Lookahead = max(2*time.Second, cfg.Tick)
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
	w := newWindow()
	var blackouts []*opsconductorv1.BlackoutWindow
	var refreshAt time.Time // zero: now
	postponed := false
	for {
		// What is due fires first: a refresh never delays it.
		s.fireWindow(ctx, w, s.now(), blackouts)
		now := s.now()
		if !now.Before(refreshAt) {
			// A refresh reads the whole window: not when a fire is due
			// before it would be done (but not twice in a row, so that a
			// window that is always about to fire is still re-read).
			if first, ok := w.earliest(); ok && !postponed && first.Before(now.Add(s.cfg.Tick/2)) {
				postponed, refreshAt = true, first
			} else {
				if !lock.Held(ctx) {
					return // its claims made ahead are taken up by the next active one
				}
				// On an error the last blackouts read stay in force: a
				// failed read must not let a fire through a freeze.
				if b, err := s.prepare(ctx, w, now, now.Add(s.cfg.Lookahead)); err != nil {
					if ctx.Err() == nil {
						s.logger.Warn("read the schedules due soon", zap.Error(err))
					}
				} else {
					blackouts = b
				}
				postponed, refreshAt = false, now.Add(s.cfg.Tick)
			}
		}
		wake := refreshAt
		if first, ok := w.earliest(); ok && first.Before(wake) {
			wake = first
		}
		if !s.sleep(ctx, wake) {
			return
		}
	}
}

// sleep waits until the instant (by the scheduler's clock); false when
// ctx ended first.
func (s *Scheduler) sleep(ctx context.Context, until time.Time) bool {
	t := time.NewTimer(until.Sub(s.now()))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// prepare re-reads the window up to until, records the claims it gave up
// and claims the slots due after now and up to until; it returns the
// blackout windows to apply.
func (s *Scheduler) prepare(ctx context.Context, w *window, now, until time.Time) ([]*opsconductorv1.BlackoutWindow, error) {
	// Blackouts first: nothing enters the window before they are known.
	blackouts, err := s.store.Blackouts(ctx)
	if err != nil {
		return nil, err
	}
	releases, err := s.refresh(ctx, w, until)
	if err != nil {
		return nil, err
	}
	if len(releases) > 0 {
		if err := s.store.CommitSteps(ctx, []step{{fires: releases}}); err != nil {
			return nil, err
		}
	}
	if until.After(now) {
		s.claimAhead(ctx, w, now, until)
	}
	return blackouts, nil
}

// FireDue fires every schedule due now (the active scheduler does the
// same each tick, ahead of time; tests call it with an injected clock).
func (s *Scheduler) FireDue(ctx context.Context) error {
	w := newWindow()
	// A page at a time, until nothing is due (or a bound, should some
	// schedule keep failing to advance).
	for range 100 {
		now := s.now()
		blackouts, err := s.prepare(ctx, w, now, now)
		if err != nil {
			return err
		}
		if n := s.fireWindow(ctx, w, now, blackouts); n == 0 || !w.full {
			return nil
		}
	}
	return nil
}

// fireWindow fires the entries of the window due at now, a share per
// worker, and puts those that moved on back in the window at their next
// fire time. It returns how many it fired.
func (s *Scheduler) fireWindow(ctx context.Context, w *window, now time.Time, blackouts []*opsconductorv1.BlackoutWindow) int {
	due := w.takeDue(now)
	moved := make([][]*entry, len(due))
	s.inParallel(len(due), func(lo, hi int) {
		var err error
		if moved[lo], err = s.fireChunk(ctx, due[lo:hi], now, blackouts); err != nil && ctx.Err() == nil {
			s.logger.Warn("fire schedules", zap.Int("schedules", hi-lo), zap.Error(err))
		}
	})
	for _, es := range moved {
		for _, e := range es {
			w.entries[e.r.ID] = e
		}
	}
	return len(due)
}

// inParallel splits n items among the workers and waits for them: f gets
// a share [lo, hi).
func (s *Scheduler) inParallel(n int, f func(lo, hi int)) {
	if n == 0 {
		return
	}
	workers := min(s.cfg.Workers, n)
	size := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += size {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(lo, min(lo+size, n))
		}()
	}
	wg.Wait()
}

// plan is what a due schedule comes to, worked out without the database:
// its missed slots, whether its latest slot fires, and how it moves on.
type plan struct {
	e    *entry
	st   step
	fire bool      // the latest slot fires (if the claim succeeds)
	slot time.Time // that slot
	why  string    // said of the fire (a catch-up)
}

// planFor plans a due entry at now.
func (s *Scheduler) planFor(e *entry, now time.Time) plan {
	r, first := e.r, *e.r.NextFireAt
	p := plan{e: e, st: step{id: r.ID, expect: first, advance: true}}
	if e.spec == nil {
		s.logger.Error("schedule can no longer be read; completing it", zap.String("schedule_id", r.ID))
		p.st.last, p.st.state = first, StateCompleted
		return p
	}
	sc, spec := e.sc, e.spec
	jitter := sc.GetJitter().AsDuration()
	due := []time.Time{first}
	capped := false
	for t, next, ok := first, e.after, e.afterOK; ; next, ok = spec.Next(t) {
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
		return p
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
	next, ok := e.after, e.afterOK
	if len(due) > 1 || (ok && !next.After(now)) {
		next, ok = spec.Next(now) // caught up: the slot after the latest
	}
	if ok {
		p.st.next = &next
	} else {
		p.st.state = StateCompleted
	}
	return p
}

// fireChunk plans, claims what was not claimed ahead (one transaction),
// fires, and records and advances (one transaction) a share of the due
// entries. It returns the entries that moved on to a next fire, placed
// there.
func (s *Scheduler) fireChunk(ctx context.Context, chunk []*entry, now time.Time, blackouts []*opsconductorv1.BlackoutWindow) ([]*entry, error) {
	plans := make([]plan, len(chunk))
	for i, e := range chunk {
		plans[i] = s.planFor(e, now)
	}
	claimed := make([]bool, len(plans))
	outcomes := make([]string, len(plans))
	var ids []string
	var firsts, slots []time.Time
	var which []int
	for i, p := range plans {
		switch {
		case !p.fire:
		case p.e.claimed.Equal(p.slot):
			claimed[i], outcomes[i] = true, OutcomeFiring
		default:
			ids, firsts, slots, which = append(ids, p.e.r.ID), append(firsts, p.st.expect), append(slots, p.slot), append(which, i)
		}
	}
	if err := s.recheck(ctx, plans, claimed); err != nil {
		return nil, err
	}
	if len(ids) > 0 {
		c, o, err := s.store.ClaimSlots(ctx, ids, firsts, slots)
		if err != nil {
			return nil, err
		}
		for k, i := range which {
			claimed[i], outcomes[i] = c[k], o[k]
		}
	}
	for i := range plans {
		if !plans[i].fire || (!claimed[i] && outcomes[i] != OutcomeFiring) {
			continue // fired or skipped already, or the schedule changed
		}
		// Claimed ahead by this scheduler: not fired yet. Claimed before
		// (a crash, or another replica that also thought it was active):
		// its execution may exist already.
		retaken := !claimed[i]
		rec, err := s.fireSlot(ctx, plans[i], retaken, blackouts)
		if err != nil {
			s.logger.Warn("fire schedule", zap.String("schedule_id", plans[i].e.r.ID), zap.Error(err))
			plans[i].st.advance = false // the slot stays claimed: the next pass takes it up
			continue
		}
		plans[i].st.fires = append(plans[i].st.fires, rec)
	}
	steps := make([]step, len(plans))
	for i, p := range plans {
		steps[i] = p.st
	}
	if err := s.store.CommitSteps(ctx, steps); err != nil {
		return nil, err
	}
	var moved []*entry
	for _, p := range plans {
		if p.st.advance && p.st.state == StateActive && p.st.next != nil {
			p.e.claimed = time.Time{}
			s.place(p.e, *p.st.next)
			moved = append(moved, p.e)
		}
	}
	return moved, nil
}

// recheck reads, in one query, the schedules whose slot was claimed
// ahead (up to a tick before they were last read): one paused, deleted or
// moved to another time since is not fired, and its claim is recorded
// skipped; one edited but still at this slot waits for the next pass,
// which fires it with its new definition.
func (s *Scheduler) recheck(ctx context.Context, plans []plan, claimed []bool) error {
	var ids []string
	for i, p := range plans {
		if claimed[i] {
			ids = append(ids, p.e.r.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	cur, err := s.store.Current(ctx, ids)
	if err != nil {
		return err
	}
	for i := range plans {
		if !claimed[i] {
			continue
		}
		p := &plans[i]
		c, ok := cur[p.e.r.ID]
		switch {
		case ok && c.state == StateActive && c.next != nil && c.next.Equal(p.st.expect) && c.version == p.e.r.Version:
			continue // as read: fire it
		case ok && c.state == StateActive && c.next != nil && c.next.Equal(p.st.expect):
			// Edited, same slot: the claim stays for the next pass.
		default:
			p.st.fires = append(p.st.fires, FireRecord{ScheduleID: p.e.r.ID, ScheduledFor: p.slot, Outcome: OutcomeSkipped, Reason: released})
		}
		p.fire, p.st.advance, claimed[i] = false, false, false
	}
	return nil
}

// fireSlot fires a plan's claimed slot and returns its record. retaken:
// the slot was claimed before (a crash, or another replica that also
// thought it was active), so its execution may exist already.
func (s *Scheduler) fireSlot(ctx context.Context, p plan, retaken bool, blackouts []*opsconductorv1.BlackoutWindow) (FireRecord, error) {
	r, sc, slot := p.e.r, p.e.sc, p.slot
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
	rec := record(OutcomeFired, p.why, id)
	if s.cfg.Lateness != nil {
		s.cfg.Lateness.Observe(rec.Lateness.Seconds())
	}
	s.logger.Debug("schedule fired", zap.String("schedule_id", r.ID), zap.Time("scheduled_for", slot), zap.String("execution_id", id),
		zap.Duration("lateness", rec.Lateness))
	return rec, nil
}
