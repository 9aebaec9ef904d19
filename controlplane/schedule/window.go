package schedule

import (
	"context"
	"time"

	"go.uber.org/zap"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// The active scheduler keeps the schedules whose next fire comes within
// its look-ahead in memory (a window), parsed once per version, and
// claims their slots before they are due, so that at the instant itself
// only the fire is left to do. The database stays the truth: the window
// is re-read (id, version and next fire time only: an index range) every
// tick, and a claim holds only while the schedule is still active at
// that next fire time.

// entry is a schedule in the window.
type entry struct {
	r    Record // its NextFireAt as last read
	sc   *opsconductorv1.Schedule
	spec *Spec // nil: it no longer reads (it is completed when due)
	// due is when it fires: its next fire time plus that slot's jitter.
	due time.Time
	// claimed is the slot this scheduler claimed ahead of the fire and has
	// not fired yet (zero: none).
	claimed time.Time
	// after is the slot after the next one (ok false: none), worked out
	// when the entry is placed, so that the fire does not wait for it.
	after   time.Time
	afterOK bool
}

// window is the schedules due within the look-ahead, by id.
type window struct {
	entries map[string]*entry
	// full: the last read filled a page, so more may be due.
	full bool
}

func newWindow() *window { return &window{entries: map[string]*entry{}} }

// released is said of a slot claimed ahead whose schedule changed, was
// paused or was deleted before the slot fired.
const released = "the schedule was changed, paused or deleted after this fire was prepared"

// refresh re-reads the window up to until. It returns the records of
// claims given up because their schedule moved on.
func (s *Scheduler) refresh(ctx context.Context, w *window, until time.Time) ([]FireRecord, error) {
	rows, err := s.store.Upcoming(ctx, until, s.cfg.PageSize)
	if err != nil {
		return nil, err
	}
	// A full page may leave schedules out that are still due: only those
	// up to the page's last row are known to have moved on
	// (by next fire time, then id: the page's order).
	known, knownID := until, ""
	if w.full = len(rows) == s.cfg.PageSize; w.full {
		known, knownID = rows[len(rows)-1].next, rows[len(rows)-1].id
	}
	movedOn := func(e *entry) bool {
		next := *e.r.NextFireAt
		return !w.full && !next.After(known) || next.Before(known) || next.Equal(known) && e.r.ID <= knownID
	}
	next := make(map[string]*entry, len(rows))
	var stale []string
	var releases []FireRecord
	for _, u := range rows {
		old := w.entries[u.id]
		if old == nil || old.r.Version != u.version {
			stale = append(stale, u.id)
			continue
		}
		if !old.r.NextFireAt.Equal(u.next) {
			// Advanced elsewhere (another replica that thought it was
			// active): what this one claimed is no longer its to fire.
			releases = append(releases, releaseOf(old)...)
			old.claimed = time.Time{}
			s.place(old, u.next)
		}
		next[u.id] = old
	}
	if len(stale) > 0 {
		recs, err := s.store.Records(ctx, stale)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if r.State != StateActive || r.NextFireAt == nil {
				continue
			}
			e := s.parse(r)
			if old := w.entries[r.ID]; old != nil && old.claimed.Equal(*r.NextFireAt) {
				e.claimed = old.claimed // edited, still at the claimed slot
			}
			next[r.ID] = e
		}
	}
	for id, old := range w.entries {
		if _, ok := next[id]; !ok && movedOn(old) {
			releases = append(releases, releaseOf(old)...)
		}
		if e := next[id]; e != nil && e != old && !e.claimed.Equal(old.claimed) {
			releases = append(releases, releaseOf(old)...)
		}
	}
	w.entries = next
	return releases, nil
}

func releaseOf(e *entry) []FireRecord {
	if e.claimed.IsZero() {
		return nil
	}
	return []FireRecord{{ScheduleID: e.r.ID, ScheduledFor: e.claimed, Outcome: OutcomeSkipped, Reason: released}}
}

// parse makes a window entry of a record; a definition that no longer
// reads (it was valid when saved: a zone database change could do this)
// leaves spec nil.
func (s *Scheduler) parse(r Record) *entry {
	e := &entry{r: r}
	sc, err := toProto(r)
	if err == nil {
		spec, vs := SpecOf("schedule", sc)
		if len(vs) == 0 {
			e.sc, e.spec = sc, spec
		}
	}
	s.place(e, *r.NextFireAt)
	return e
}

// place sets an entry's next fire time and when it is due.
func (s *Scheduler) place(e *entry, next time.Time) {
	e.r.NextFireAt = &next
	e.due = next
	if e.spec != nil {
		e.due = next.Add(Jitter(e.r.ID, next, e.sc.GetJitter().AsDuration()))
		e.after, e.afterOK = e.spec.Next(next)
	}
}

// claimAhead claims the slots of the entries due after now and up to
// until, so that their fire does not wait for a claim.
func (s *Scheduler) claimAhead(ctx context.Context, w *window, now, until time.Time) {
	var todo []*entry
	for _, e := range w.entries {
		if e.spec != nil && e.claimed.IsZero() && e.due.After(now) && !e.due.After(until) {
			todo = append(todo, e)
		}
	}
	s.inParallel(len(todo), func(lo, hi int) {
		part := todo[lo:hi]
		ids, slots := make([]string, len(part)), make([]time.Time, len(part))
		for i, e := range part {
			ids[i], slots[i] = e.r.ID, *e.r.NextFireAt
		}
		claimed, _, err := s.store.ClaimSlots(ctx, ids, slots, slots)
		if err != nil {
			if ctx.Err() == nil {
				s.logger.Warn("claim fires ahead", zap.Int("schedules", len(part)), zap.Error(err))
			}
			return // claimed when due instead
		}
		for i, e := range part {
			if claimed[i] {
				e.claimed = slots[i]
			}
			// Not claimed: a claim left by a crashed scheduler (taken up
			// when due), a slot already final, or a schedule that changed
			// (the next refresh sees it).
		}
	})
}

// takeDue removes and returns the entries due at now.
func (w *window) takeDue(now time.Time) []*entry {
	var due []*entry
	for id, e := range w.entries {
		if !e.due.After(now) {
			due = append(due, e)
			delete(w.entries, id)
		}
	}
	return due
}

// earliest is the first instant an entry of the window is due.
func (w *window) earliest() (time.Time, bool) {
	var first time.Time
	for _, e := range w.entries {
		if first.IsZero() || e.due.Before(first) {
			first = e.due
		}
	}
	return first, !first.IsZero()
}
