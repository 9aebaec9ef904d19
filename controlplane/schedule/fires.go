package schedule

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Fire outcomes.
const (
	OutcomeFiring  = "firing" // claimed, the execution not yet created
	OutcomeFired   = "fired"
	OutcomeSkipped = "skipped"
	OutcomeMissed  = "missed"
	OutcomeFailed  = "failed"
)

// FireRecord is one nominal fire of a schedule.
type FireRecord struct {
	ScheduleID   string
	ScheduledFor time.Time
	FiredAt      *time.Time
	Lateness     time.Duration
	Outcome      string
	Reason       string
	ExecutionID  string
	// Late: fired later than the scheduler's alert threshold (an extra
	// schedule.late event).
	Late bool
}

// upcoming is a schedule in the scheduler's window, as the cheap query
// reads it: enough to tell whether the parsed copy in memory is current.
type upcoming struct {
	id      string
	version int64
	next    time.Time
}

// Upcoming returns up to limit active schedules whose next fire time is at
// or before until, earliest first: their id, version and next fire time
// only (an index range, not a scan; the definitions are read once per
// version with Records).
func (s *Store) Upcoming(ctx context.Context, until time.Time, limit int) ([]upcoming, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, version, next_fire_at FROM schedules WHERE state = $1 AND next_fire_at <= $2
		ORDER BY next_fire_at, id LIMIT $3`, StateActive, until.UTC(), limit)
	if err != nil {
		return nil, fmt.Errorf("find upcoming schedules: %w", err)
	}
	defer rows.Close()
	var out []upcoming
	for rows.Next() {
		var u upcoming
		if err := rows.Scan(&u.id, &u.version, &u.next); err != nil {
			return nil, err
		}
		u.next = u.next.UTC()
		out = append(out, u)
	}
	return out, rows.Err()
}

// Records returns the schedules with these ids (those that still exist).
func (s *Store) Records(ctx context.Context, ids []string) ([]Record, error) {
	if s.db.Dialect() != store.Postgres {
		// The embedded store is one node with few schedules: one read each.
		var out []Record
		for _, id := range ids {
			r, err := s.Get(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
		return out, nil
	}
	rows, err := s.db.QueryContext(ctx, columns+` WHERE id = ANY($1::text[])`, ids)
	if err != nil {
		return nil, fmt.Errorf("read %d schedules: %w", len(ids), err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		r, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// ClaimSlot records that the slot is being fired. It reports true when
// this call claimed it; otherwise the slot's recorded outcome (a
// "firing" left by a crash may be taken up again: the execution is
// created idempotently).
func (s *Store) ClaimSlot(ctx context.Context, scheduleID string, first, slot time.Time) (bool, string, error) {
	return claimSlot(ctx, s.db, scheduleID, first, slot)
}

func claimSlot(ctx context.Context, q store.Querier, scheduleID string, first, slot time.Time) (bool, string, error) {
	// Only while the schedule is still active at this fire: a pause or an
	// edit since wins.
	res, err := q.ExecContext(ctx, `INSERT INTO schedule_executions (schedule_id, scheduled_for, outcome)
		SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM schedules WHERE id = $1 AND state = $4 AND next_fire_at IS NOT DISTINCT FROM $5)
		ON CONFLICT (schedule_id, scheduled_for) DO NOTHING`, scheduleID, slot.UTC(), OutcomeFiring, StateActive, first.UTC())
	if err != nil {
		return false, "", fmt.Errorf("claim fire %s of schedule %s: %w", slot.UTC().Format(time.RFC3339Nano), scheduleID, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return true, OutcomeFiring, nil
	}
	var outcome string
	err = q.QueryRowContext(ctx, `SELECT outcome FROM schedule_executions WHERE schedule_id = $1 AND scheduled_for = $2`,
		scheduleID, slot.UTC()).Scan(&outcome)
	if errors.Is(err, sql.ErrNoRows) {
		return false, "", nil // the schedule changed
	}
	if err != nil {
		return false, "", fmt.Errorf("read fire of schedule %s: %w", scheduleID, err)
	}
	return false, outcome, nil
}

// recordFire writes a slot's outcome (a claimed slot's, or a new one for
// a skipped or missed slot) with its events; a final outcome already there
// is kept.
func recordFire(ctx context.Context, tx *store.Tx, f FireRecord) error {
	var fired sql.NullTime
	if f.FiredAt != nil {
		fired = sql.NullTime{Time: f.FiredAt.UTC(), Valid: true}
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO schedule_executions (schedule_id, scheduled_for, fired_at, lateness_ms, execution_id, outcome, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (schedule_id, scheduled_for) DO UPDATE SET fired_at = excluded.fired_at, lateness_ms = excluded.lateness_ms,
			execution_id = excluded.execution_id, outcome = excluded.outcome, reason = excluded.reason
		WHERE schedule_executions.outcome = $8`,
		f.ScheduleID, f.ScheduledFor.UTC(), fired, f.Lateness.Milliseconds(), f.ExecutionID, f.Outcome, f.Reason, OutcomeFiring)
	if err != nil {
		return fmt.Errorf("record fire of schedule %s: %w", f.ScheduleID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil // already final
	}
	event := map[string]any{
		"schedule_id": f.ScheduleID, "scheduled_for": f.ScheduledFor.UTC(), "outcome": f.Outcome, "reason": f.Reason,
		"execution_id": f.ExecutionID, "lateness_ms": f.Lateness.Milliseconds(),
	}
	if _, err := outbox.Append(ctx, tx, "schedule."+f.Outcome, f.ScheduleID, 0, event); err != nil {
		return err
	}
	if f.Late {
		_, err = outbox.Append(ctx, tx, "schedule.late", f.ScheduleID, 0, event)
	}
	return err
}

// Fires returns a schedule's fires, newest first.
func (s *Store) Fires(ctx context.Context, scheduleID string, limit int) ([]FireRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT scheduled_for, fired_at, lateness_ms, outcome, reason, execution_id FROM schedule_executions
		WHERE schedule_id = $1 ORDER BY scheduled_for DESC LIMIT $2`, scheduleID, limit)
	if err != nil {
		return nil, fmt.Errorf("list fires of schedule %s: %w", scheduleID, err)
	}
	defer rows.Close()
	var out []FireRecord
	for rows.Next() {
		f := FireRecord{ScheduleID: scheduleID}
		var fired sql.NullTime
		var lateMS int64
		if err := rows.Scan(&f.ScheduledFor, &fired, &lateMS, &f.Outcome, &f.Reason, &f.ExecutionID); err != nil {
			return nil, err
		}
		f.ScheduledFor, f.FiredAt, f.Lateness = f.ScheduledFor.UTC(), timePtr(fired), time.Duration(lateMS)*time.Millisecond
		out = append(out, f)
	}
	return out, rows.Err()
}

// advance moves an active schedule past a fire: the next fire time (nil:
// none, and state says completed), the last one. It changes nothing when
// the schedule changed meanwhile (edited, paused, advanced by another).
func advance(ctx context.Context, q store.Querier, id string, expect time.Time, next *time.Time, last time.Time, state string) (bool, error) {
	res, err := q.ExecContext(ctx, `UPDATE schedules SET next_fire_at = $1, last_fire_at = $2, state = $3
		WHERE id = $4 AND next_fire_at IS NOT DISTINCT FROM $5 AND state = $6`, nullTime(next), last.UTC(), state, id, expect.UTC(), StateActive)
	if err != nil {
		return false, fmt.Errorf("advance schedule %s: %w", id, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// step is what firing one due schedule decided: its slots' records and
// how it moves on. CommitSteps writes many in one transaction.
type step struct {
	fires   []FireRecord
	id      string
	expect  time.Time // the next fire time it was read with
	next    *time.Time
	last    time.Time
	state   string
	advance bool
}

// ClaimSlots claims, in one transaction, the slot of each schedule in
// ids (slots[i], while first[i] is still its next fire time), and returns
// per schedule whether it was claimed and the slot's outcome otherwise.
func (s *Store) ClaimSlots(ctx context.Context, ids []string, first, slots []time.Time) ([]bool, []string, error) {
	claimed, outcomes := make([]bool, len(ids)), make([]string, len(ids))
	if s.db.Dialect() == store.Postgres {
		err := s.db.InTx(ctx, func(tx *store.Tx) error { return claimSlotsPostgres(ctx, tx, ids, first, slots, claimed, outcomes) })
		return claimed, outcomes, err
	}
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		for i := range ids {
			var err error
			if claimed[i], outcomes[i], err = claimSlot(ctx, tx, ids[i], first[i], slots[i]); err != nil {
				return err
			}
		}
		return nil
	})
	return claimed, outcomes, err
}

// CommitSteps writes the records and advances of many fired schedules in
// one transaction.
func (s *Store) CommitSteps(ctx context.Context, steps []step) error {
	if s.db.Dialect() == store.Postgres {
		return s.db.InTx(ctx, func(tx *store.Tx) error { return commitStepsPostgres(ctx, tx, steps) })
	}
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		for _, st := range steps {
			for _, f := range st.fires {
				if err := recordFire(ctx, tx, f); err != nil {
					return err
				}
			}
			if st.advance {
				if _, err := advance(ctx, tx, st.id, st.expect, st.next, st.last, st.state); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// On Postgres a worker's share is claimed and recorded with a few
// multi-row statements (unnest of arrays) instead of one per fire; the
// per-row path above does the same on SQLite.
//
// A schedule is looked up by id and its expected next fire time compared
// with IS NOT DISTINCT FROM (the same as = here: neither is NULL), which
// no index serves: so the planner always takes the primary key. With =,
// and no statistics yet (thousands of schedules just created, all due at
// the same instant), it took the (state, next_fire_at) index instead and
// filtered thousands of rows per lookup: 40 times slower, in B6.

func utcTimes(ts []time.Time) []time.Time {
	out := make([]time.Time, len(ts))
	for i, t := range ts {
		out[i] = t.UTC()
	}
	return out
}

// noTime stands for NULL in a timestamp array.
var noTime = time.Unix(0, 0).UTC()

func claimSlotsPostgres(ctx context.Context, tx *store.Tx, ids []string, first, slots []time.Time, claimed []bool, outcomes []string) error {
	pos := make(map[string]int, len(ids))
	for i, id := range ids {
		pos[id] = i
	}
	rows, err := tx.QueryContext(ctx, `INSERT INTO schedule_executions (schedule_id, scheduled_for, outcome)
		SELECT v.id, v.slot, $4 FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS v(id, slot, first)
		WHERE EXISTS (SELECT 1 FROM schedules s WHERE s.id = v.id AND s.state = $5 AND s.next_fire_at IS NOT DISTINCT FROM v.first)
		ON CONFLICT (schedule_id, scheduled_for) DO NOTHING
		RETURNING schedule_id`, ids, utcTimes(slots), utcTimes(first), OutcomeFiring, StateActive)
	if err != nil {
		return fmt.Errorf("claim %d fires: %w", len(ids), err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		claimed[pos[id]], outcomes[pos[id]] = true, OutcomeFiring
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var restIDs []string
	var restSlots []time.Time
	for i, id := range ids {
		if !claimed[i] {
			restIDs, restSlots = append(restIDs, id), append(restSlots, slots[i].UTC())
		}
	}
	if len(restIDs) == 0 {
		return nil
	}
	rows, err = tx.QueryContext(ctx, `SELECT e.schedule_id, e.outcome FROM schedule_executions e
		JOIN unnest($1::text[], $2::timestamptz[]) AS v(id, slot) ON e.schedule_id = v.id AND e.scheduled_for = v.slot`, restIDs, restSlots)
	if err != nil {
		return fmt.Errorf("read %d fires: %w", len(restIDs), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, outcome string
		if err := rows.Scan(&id, &outcome); err != nil {
			return err
		}
		outcomes[pos[id]] = outcome
	}
	return rows.Err()
}

func commitStepsPostgres(ctx context.Context, tx *store.Tx, steps []step) error {
	var (
		ids, execs, outcomes, reasons []string
		slots, fired                  []time.Time
		lateness                      []int64
		byKey                         = map[string]FireRecord{}
	)
	key := func(id string, slot time.Time) string { return id + "/" + slot.UTC().Format(time.RFC3339Nano) }
	for _, st := range steps {
		for _, f := range st.fires {
			ids, slots, execs, outcomes, reasons = append(ids, f.ScheduleID), append(slots, f.ScheduledFor.UTC()), append(execs, f.ExecutionID),
				append(outcomes, f.Outcome), append(reasons, f.Reason)
			at := noTime
			if f.FiredAt != nil {
				at = f.FiredAt.UTC()
			}
			fired, lateness = append(fired, at), append(lateness, f.Lateness.Milliseconds())
			byKey[key(f.ScheduleID, f.ScheduledFor)] = f
		}
	}
	if len(ids) > 0 {
		rows, err := tx.QueryContext(ctx, `INSERT INTO schedule_executions (schedule_id, scheduled_for, fired_at, lateness_ms, execution_id, outcome, reason)
			SELECT v.id, v.slot, NULLIF(v.fired, $8::timestamptz), v.late, v.exec, v.outcome, v.reason
			FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[], $5::text[], $6::text[], $7::text[]) AS v(id, slot, fired, late, exec, outcome, reason)
			ON CONFLICT (schedule_id, scheduled_for) DO UPDATE SET fired_at = excluded.fired_at, lateness_ms = excluded.lateness_ms,
				execution_id = excluded.execution_id, outcome = excluded.outcome, reason = excluded.reason
			WHERE schedule_executions.outcome = $9
			RETURNING schedule_id, scheduled_for`, ids, slots, fired, lateness, execs, outcomes, reasons, noTime, OutcomeFiring)
		if err != nil {
			return fmt.Errorf("record %d fires: %w", len(ids), err)
		}
		var topics, aggs, payloads []string
		for rows.Next() {
			var id string
			var slot time.Time
			if err := rows.Scan(&id, &slot); err != nil {
				rows.Close()
				return err
			}
			f := byKey[key(id, slot)]
			body, err := json.Marshal(map[string]any{
				"schedule_id": f.ScheduleID, "scheduled_for": f.ScheduledFor.UTC(), "outcome": f.Outcome, "reason": f.Reason,
				"execution_id": f.ExecutionID, "lateness_ms": f.Lateness.Milliseconds(),
			})
			if err != nil {
				rows.Close()
				return err
			}
			topics, aggs, payloads = append(topics, "schedule."+f.Outcome), append(aggs, id), append(payloads, string(body))
			if f.Late {
				topics, aggs, payloads = append(topics, "schedule.late"), append(aggs, id), append(payloads, string(body))
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(topics) > 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO outbox (topic, aggregate_id, aggregate_seq, payload, created_at)
				SELECT v.topic, v.agg, 0, v.payload, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS v(topic, agg, payload)`,
				topics, aggs, payloads, time.Now().UTC()); err != nil {
				return fmt.Errorf("append %d schedule events: %w", len(topics), err)
			}
		}
	}
	var aIDs, states []string
	var expects, nexts, lasts []time.Time
	for _, st := range steps {
		if !st.advance {
			continue
		}
		next := noTime
		if st.next != nil {
			next = st.next.UTC()
		}
		aIDs, expects, nexts, lasts, states = append(aIDs, st.id), append(expects, st.expect.UTC()), append(nexts, next), append(lasts, st.last.UTC()), append(states, st.state)
	}
	if len(aIDs) == 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE schedules s SET next_fire_at = NULLIF(v.next, $6::timestamptz), last_fire_at = v.last, state = v.state
		FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[], $5::text[]) AS v(id, expect, next, last, state)
		WHERE s.id = v.id AND s.next_fire_at IS NOT DISTINCT FROM v.expect AND s.state = $7`, aIDs, expects, nexts, lasts, states, noTime, StateActive); err != nil {
		return fmt.Errorf("advance %d schedules: %w", len(aIDs), err)
	}
	return nil
}

// FireStats counts the fires due in [from, to) by outcome and returns the
// lateness of the fired ones (for the business metrics).
func (s *Store) FireStats(ctx context.Context, from, to time.Time) (map[string]int64, []time.Duration, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT outcome, lateness_ms FROM schedule_executions WHERE scheduled_for >= $1 AND scheduled_for < $2`,
		from.UTC(), to.UTC())
	if err != nil {
		return nil, nil, fmt.Errorf("summarise fires: %w", err)
	}
	defer rows.Close()
	byOutcome := map[string]int64{}
	var lateness []time.Duration
	for rows.Next() {
		var outcome string
		var ms int64
		if err := rows.Scan(&outcome, &ms); err != nil {
			return nil, nil, fmt.Errorf("scan fire: %w", err)
		}
		byOutcome[outcome]++
		if outcome == OutcomeFired {
			lateness = append(lateness, time.Duration(ms)*time.Millisecond)
		}
	}
	return byOutcome, lateness, rows.Err()
}

// current is what the scheduler checks of a schedule just before firing a
// slot it claimed ahead.
type current struct {
	version int64
	state   string
	next    *time.Time
}

// Current reads the version, state and next fire time of the schedules
// with these ids (absent: deleted).
func (s *Store) Current(ctx context.Context, ids []string) (map[string]current, error) {
	out := make(map[string]current, len(ids))
	if s.db.Dialect() != store.Postgres {
		for _, id := range ids {
			r, err := s.Get(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out[id] = current{version: r.Version, state: r.State, next: r.NextFireAt}
		}
		return out, nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, version, state, next_fire_at FROM schedules WHERE id = ANY($1::text[])`, ids)
	if err != nil {
		return nil, fmt.Errorf("read %d schedules: %w", len(ids), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var c current
		var next sql.NullTime
		if err := rows.Scan(&id, &c.version, &c.state, &next); err != nil {
			return nil, err
		}
		c.next = timePtr(next)
		out[id] = c
	}
	return out, rows.Err()
}
