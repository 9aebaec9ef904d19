package schedule

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

var weekdays = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// clockMinutes reads "HH:MM" (00:00 to 24:00) as minutes of the day.
func clockMinutes(s string) (int, bool) {
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(h) != 2 || len(m) != 2 {
		return 0, false
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && mm != 0) {
		return 0, false
	}
	return hh*60 + mm, true
}

// validateBlackout checks a window; violations name fields under "blackout".
func validateBlackout(b *opsconductorv1.BlackoutWindow) []apperr.Violation {
	var vs []apperr.Violation
	add := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: "blackout." + field, Description: fmt.Sprintf(format, args...)})
	}
	if b == nil {
		return []apperr.Violation{{Field: "blackout", Description: "is required"}}
	}
	if strings.TrimSpace(b.GetName()) == "" || len(b.GetName()) > 128 {
		add("name", "must be 1-128 characters: skipped fires name it")
	}
	dated := b.GetStartTime() != nil || b.GetEndTime() != nil
	recurring := b.GetStartClock() != "" || b.GetEndClock() != "" || len(b.GetDays()) > 0
	switch {
	case dated && recurring:
		add("start_time", "set either start_time and end_time (dated) or start_clock and end_clock (recurring), not both")
	case dated:
		if b.GetStartTime() == nil || b.GetEndTime() == nil || !b.GetEndTime().AsTime().After(b.GetStartTime().AsTime()) {
			add("end_time", "a dated window needs start_time and a later end_time")
		}
	case recurring:
		start, ok1 := clockMinutes(b.GetStartClock())
		end, ok2 := clockMinutes(b.GetEndClock())
		switch {
		case !ok1:
			add("start_clock", "must be HH:MM, got %q", b.GetStartClock())
		case !ok2:
			add("end_clock", "must be HH:MM (up to 24:00), got %q", b.GetEndClock())
		case end <= start:
			add("end_clock", "must be after start_clock (a window across midnight is two windows)")
		}
		for i, d := range b.GetDays() {
			if !slices.Contains(weekdays, strings.ToLower(d)) {
				add(fmt.Sprintf("days[%d]", i), "must be one of %s, got %q", strings.Join(weekdays, ", "), d)
			}
		}
		if z := b.GetTimeZone(); z != "" {
			if _, err := time.LoadLocation(z); err != nil {
				add("time_zone", "unknown IANA time zone %q", z)
			}
		}
	default:
		add("start_time", "set start_time and end_time (a dated window) or start_clock and end_clock (a recurring one)")
	}
	if b.GetScheduleId() != "" && b.GetJobSelector() != "" {
		add("job_selector", "set at most one of schedule_id and job_selector")
	}
	if sel := b.GetJobSelector(); sel != "" {
		if _, err := label.ParseSelector(sel); err != nil {
			add("job_selector", "malformed label selector: %v", err)
		}
	}
	return vs
}

// covers reports whether the window holds instant at.
func covers(b *opsconductorv1.BlackoutWindow, at time.Time) bool {
	if b.GetStartTime() != nil {
		return !at.Before(b.GetStartTime().AsTime()) && at.Before(b.GetEndTime().AsTime())
	}
	loc := time.UTC
	if z := b.GetTimeZone(); z != "" {
		if l, err := time.LoadLocation(z); err == nil {
			loc = l
		}
	}
	local := at.In(loc)
	if len(b.GetDays()) > 0 && !slices.ContainsFunc(b.GetDays(), func(d string) bool { return strings.EqualFold(d, weekdays[local.Weekday()]) }) {
		return false
	}
	start, _ := clockMinutes(b.GetStartClock())
	end, _ := clockMinutes(b.GetEndClock())
	m := local.Hour()*60 + local.Minute()
	return m >= start && m < end
}

// applies reports whether the window concerns a schedule of a job with
// jobLabels (fetched only when a selector needs them).
func applies(b *opsconductorv1.BlackoutWindow, scheduleID string, jobLabels func() map[string]string) bool {
	switch {
	case b.GetScheduleId() != "":
		return b.GetScheduleId() == scheduleID
	case b.GetJobSelector() != "":
		sel, err := label.ParseSelector(b.GetJobSelector())
		return err == nil && sel.Matches(jobLabels())
	}
	return true
}

// BlackoutCreate stores a window.
func (s *Store) BlackoutCreate(ctx context.Context, id string, def []byte, by string, at time.Time) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO blackouts (id, definition, created_by, created_at) VALUES ($1, $2, $3, $4)`,
			id, string(def), by, at.UTC()); err != nil {
			return fmt.Errorf("insert blackout: %w", store.Translate(err))
		}
		_, err := outbox.Append(ctx, tx, "schedule.blackout.created", id, 0, map[string]string{"id": id, "by": by})
		return err
	})
}

// BlackoutDelete removes a window.
func (s *Store) BlackoutDelete(ctx context.Context, id string) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM blackouts WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("delete blackout %s: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("blackout %s: %w", id, store.ErrNotFound)
		}
		_, err = outbox.Append(ctx, tx, "schedule.blackout.deleted", id, 0, map[string]string{"id": id})
		return err
	})
}

// Blackouts returns every window.
func (s *Store) Blackouts(ctx context.Context) ([]*opsconductorv1.BlackoutWindow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, definition, created_by, created_at FROM blackouts ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list blackouts: %w", err)
	}
	defer rows.Close()
	var out []*opsconductorv1.BlackoutWindow
	for rows.Next() {
		var id, def, by string
		var at time.Time
		if err := rows.Scan(&id, &def, &by, &at); err != nil {
			return nil, err
		}
		b := &opsconductorv1.BlackoutWindow{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(def), b); err != nil {
			return nil, fmt.Errorf("decode blackout %s: %w", id, err)
		}
		b.Id, b.CreatedBy, b.CreateTime = id, by, timestamppb.New(at)
		out = append(out, b)
	}
	return out, rows.Err()
}

func (s *Service) CreateBlackout(ctx context.Context, req *connect.Request[opsconductorv1.CreateBlackoutRequest]) (*connect.Response[opsconductorv1.CreateBlackoutResponse], error) {
	b := req.Msg.GetBlackout()
	if vs := validateBlackout(b); len(vs) > 0 {
		return nil, apperr.Invalid("blackout", vs)
	}
	def := proto.Clone(b).(*opsconductorv1.BlackoutWindow)
	def.Id, def.CreatedBy, def.CreateTime = "", "", nil
	raw, err := protojson.Marshal(def)
	if err != nil {
		return nil, err
	}
	principal, _ := auth.PrincipalFrom(ctx)
	id, at := uuid.Must(uuid.NewV7()).String(), s.now().UTC().Truncate(time.Microsecond)
	if err := s.store.BlackoutCreate(ctx, id, raw, principal.Name, at); err != nil {
		return nil, err
	}
	def.Id, def.CreatedBy, def.CreateTime = id, principal.Name, timestamppb.New(at)
	return connect.NewResponse(&opsconductorv1.CreateBlackoutResponse{Blackout: def}), nil
}

func (s *Service) ListBlackouts(ctx context.Context, _ *connect.Request[opsconductorv1.ListBlackoutsRequest]) (*connect.Response[opsconductorv1.ListBlackoutsResponse], error) {
	bs, err := s.store.Blackouts(ctx)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.ListBlackoutsResponse{Blackouts: bs}), nil
}

func (s *Service) DeleteBlackout(ctx context.Context, req *connect.Request[opsconductorv1.DeleteBlackoutRequest]) (*connect.Response[opsconductorv1.DeleteBlackoutResponse], error) {
	if err := s.store.BlackoutDelete(ctx, req.Msg.GetId()); err != nil {
		if isNotFound(err) {
			return nil, apperr.NotFound("blackout %s not found", req.Msg.GetId())
		}
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.DeleteBlackoutResponse{}), nil
}
