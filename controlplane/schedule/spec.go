// Package schedule is the scheduling service: schedules that run a job at
// one instant (once), every fixed duration (interval) or on a cron
// expression (cron), in an IANA time zone, within an optional window.
//
// This file is the clock arithmetic: when a schedule fires next. Its
// daylight-saving rules (docs/scheduling.md):
//   - cron times are wall-clock times in the schedule's zone. A time that
//     does not exist on a spring-forward day fires once, at the instant
//     the gap ends (02:30 in New York fires at 03:00 local); several
//     missing times collapse into that one fire.
//   - a wall-clock time that occurs twice on a fall-back day fires once,
//     at its first occurrence.
//   - interval schedules and @every are elapsed time and ignore DST.
package schedule

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	// Zones must resolve the same everywhere, a minimal container
	// without /usr/share/zoneinfo included.
	_ "time/tzdata"
)

// Kinds of schedule.
const (
	KindOnce     = "once"
	KindInterval = "interval"
	KindCron     = "cron"
)

// MinInterval is the shortest interval (and @every) a schedule may have.
const MinInterval = time.Second

// Spec is when a schedule fires.
type Spec struct {
	Kind string
	// Cron is the expression of a cron schedule: 5 fields, 6 with
	// seconds first, or a descriptor (@hourly, @daily, @every 90s, ...).
	Cron string
	// At is the instant of a once schedule.
	At time.Time
	// Every and Anchor make an interval schedule: it fires at Anchor +
	// k×Every (Anchor defaults to Start, else the Unix epoch).
	Every  time.Duration
	Anchor time.Time
	// Zone the cron fields are read in (default UTC).
	Zone *time.Location
	// Start and End bound the fires (zero: open).
	Start, End time.Time

	cron  *cron.SpecSchedule // parsed Cron, fields read as wall-clock time
	every time.Duration      // a cron "@every" descriptor
}

// parser reads cron expressions: 5 fields, or 6 with seconds first, and
// descriptors.
var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Prepare checks the spec and readies it for Next. The error names what
// is wrong.
func (s *Spec) Prepare() error {
	if s.Zone == nil {
		s.Zone = time.UTC
	}
	if !s.Start.IsZero() && !s.End.IsZero() && !s.End.After(s.Start) {
		return fmt.Errorf("the window ends (%s) before it starts (%s)", s.End.Format(time.RFC3339), s.Start.Format(time.RFC3339))
	}
	switch s.Kind {
	case KindOnce:
		if s.At.IsZero() {
			return errors.New("a once schedule needs the instant it fires at")
		}
	case KindInterval:
		if s.Every < MinInterval {
			return fmt.Errorf("the interval must be at least %s, got %s", MinInterval, s.Every)
		}
		if s.Anchor.IsZero() {
			s.Anchor = s.Start
		}
	case KindCron:
		expr := strings.TrimSpace(s.Cron)
		if strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ=") {
			return errors.New("give the time zone as the schedule's zone, not inside the expression")
		}
		if d, ok := strings.CutPrefix(expr, "@every "); ok {
			// robfig rounds a sub-second delay up silently: check it here.
			every, err := time.ParseDuration(strings.TrimSpace(d))
			if err != nil {
				return fmt.Errorf("invalid cron expression %q: %v", expr, err)
			}
			if every < MinInterval || every%time.Second != 0 {
				return fmt.Errorf("@every must be a whole number of seconds, at least %s, got %s", MinInterval, every)
			}
			s.every = every
			return nil
		}
		parsed, err := parser.Parse(expr)
		if err != nil {
			return fmt.Errorf("invalid cron expression %q: %v", expr, err)
		}
		switch p := parsed.(type) {
		case *cron.SpecSchedule:
			// The fields are matched against wall-clock time, which
			// this package handles itself (see the DST rules).
			p.Location = time.UTC
			s.cron = p
		case cron.ConstantDelaySchedule:
			if p.Delay < MinInterval {
				return fmt.Errorf("@every must be at least %s", MinInterval)
			}
			s.every = p.Delay
		default:
			return fmt.Errorf("unsupported cron expression %q", expr)
		}
	default:
		return fmt.Errorf("kind must be %s, %s or %s, got %q", KindOnce, KindInterval, KindCron, s.Kind)
	}
	return nil
}

// Next returns the first nominal fire time strictly after after, or false
// when the schedule never fires again (past its end, or a once schedule
// already past).
func (s *Spec) Next(after time.Time) (time.Time, bool) {
	if !s.Start.IsZero() && after.Before(s.Start) {
		after = s.Start.Add(-time.Nanosecond)
	}
	var next time.Time
	switch {
	case s.Kind == KindOnce:
		if !s.At.After(after) {
			return time.Time{}, false
		}
		next = s.At
	case s.Kind == KindInterval:
		next = nextInterval(s.Anchor, s.Every, after)
	case s.every > 0:
		// @every counts from the epoch, so every replica and restart
		// agrees on the slots.
		next = nextInterval(time.Time{}, s.every, after)
	case s.cron != nil:
		var ok bool
		if next, ok = s.nextCron(after); !ok {
			return time.Time{}, false
		}
	default:
		return time.Time{}, false
	}
	if !s.End.IsZero() && next.After(s.End) {
		return time.Time{}, false
	}
	return next, true
}

// nextInterval is the first anchor + k×every strictly after after.
func nextInterval(anchor time.Time, every time.Duration, after time.Time) time.Time {
	if anchor.IsZero() {
		anchor = time.Unix(0, 0).UTC()
	}
	if after.Before(anchor) {
		return anchor
	}
	k := after.Sub(anchor)/every + 1
	return anchor.Add(k * every)
}

// nextCron walks the wall-clock times the cron fields match (as civil
// times, encoded in UTC where there is no DST) and maps each to its
// instant in the zone, until one lies after after.
func (s *Spec) nextCron(after time.Time) (time.Time, bool) {
	// Starting from after's own wall-clock reading is enough: a later
	// reading in a repeated hour whose first occurrence is already past
	// is skipped by the check below, and an earlier reading can never
	// first occur after after.
	civil := civilOf(after.In(s.Zone))
	limit := civil.AddDate(5, 0, 0) // robfig gives up after 5 years too
	for {
		civil = s.cron.Next(civil)
		if civil.IsZero() || civil.After(limit) {
			return time.Time{}, false
		}
		if inst := instantOf(civil, s.Zone); inst.After(after) {
			return inst, true
		}
	}
}

// civilOf is t's wall-clock reading, encoded as a UTC time.
func civilOf(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
}

// instantOf is the instant a wall-clock time (encoded in UTC) means in
// zone: its first occurrence when it occurs twice, the end of the gap
// when it does not occur at all.
func instantOf(civil time.Time, zone *time.Location) time.Time {
	t := time.Date(civil.Year(), civil.Month(), civil.Day(), civil.Hour(), civil.Minute(), civil.Second(), civil.Nanosecond(), zone)
	// Go picks one of two occurrences: look for an earlier one. Offsets
	// change by at most a few hours, in 15-minute steps.
	first := time.Time{}
	for d := -3 * time.Hour; d <= 3*time.Hour; d += 15 * time.Minute {
		if u := t.Add(d); civilOf(u.In(zone)).Equal(civil) && (first.IsZero() || u.Before(first)) {
			first = u
		}
	}
	if !first.IsZero() {
		return first
	}
	// It does not exist (a spring-forward gap): the first instant whose
	// wall clock reads later than it is the end of the gap.
	lo, hi := t.Add(-3*time.Hour), t.Add(3*time.Hour)
	for hi.Sub(lo) > time.Second {
		mid := lo.Add(hi.Sub(lo) / 2)
		if civilOf(mid.In(zone)).After(civil) {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi.Truncate(time.Second)
}
