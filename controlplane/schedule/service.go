package schedule

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// Policies.
const (
	MisfireSkip    = "skip"
	MisfireRunOnce = "run_once"
	OverlapAllow   = "allow"
	OverlapSkip    = "skip"
	OverlapQueue   = "queue"
)

// Limits.
const (
	MaxJitter  = time.Hour
	MaxPreview = 100
)

// Planner checks that the caller may run a job with these parameters and
// targets, as a dry run would; the executions service implements it.
type Planner interface {
	PlanRun(ctx context.Context, jobID string, parameters map[string]string, targets []*opsconductorv1.Target) error
}

// Service implements opsconductorv1connect.ScheduleServiceHandler.
type Service struct {
	store   *Store
	planner Planner
	now     func() time.Time
	logger  *zap.Logger
}

var _ opsconductorv1connect.ScheduleServiceHandler = (*Service)(nil)

// NewService builds the service; now is the clock (nil: time.Now).
func NewService(st *Store, planner Planner, now func() time.Time, logger *zap.Logger) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{store: st, planner: planner, now: now, logger: logger.Named("schedule")}
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$`)

// SpecOf reads the timing of a schedule; violations name its fields under
// prefix.
func SpecOf(prefix string, sc *opsconductorv1.Schedule) (*Spec, []apperr.Violation) {
	var vs []apperr.Violation
	add := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: prefix + "." + field, Description: fmt.Sprintf(format, args...)})
	}
	// Schedules work in whole seconds (as cron does): finer instants would
	// not survive a round trip through Postgres's microseconds intact.
	spec := &Spec{Kind: sc.GetKind(), Cron: sc.GetCron(), At: sc.GetAt().AsTime().Truncate(time.Second), Every: sc.GetEvery().AsDuration(),
		Start: sc.GetStartTime().AsTime().Truncate(time.Second), End: sc.GetEndTime().AsTime().Truncate(time.Second),
		Anchor: sc.GetAnchor().AsTime().Truncate(time.Second)}
	if sc.GetAt() == nil {
		spec.At = time.Time{}
	}
	if sc.GetStartTime() == nil {
		spec.Start = time.Time{}
	}
	if sc.GetEndTime() == nil {
		spec.End = time.Time{}
	}
	if sc.GetAnchor() == nil {
		spec.Anchor = time.Time{}
	}
	zone := sc.GetTimeZone()
	if zone == "" {
		zone = "UTC"
	}
	loc, err := time.LoadLocation(zone)
	if err != nil {
		add("time_zone", "unknown IANA time zone %q (such as Europe/Berlin or America/New_York)", zone)
		return nil, vs
	}
	spec.Zone = loc
	// Fields that do not belong to the kind are refused, not ignored.
	switch spec.Kind {
	case KindCron:
		if sc.GetCron() == "" {
			add("cron", "is required for a cron schedule")
		}
	case KindOnce:
		if sc.GetAt() == nil {
			add("at", "is required for a once schedule (an RFC 3339 instant)")
		}
	case KindInterval:
		if sc.GetEvery() == nil {
			add("every", "is required for an interval schedule (such as 300s)")
		} else if sc.GetEvery().AsDuration()%time.Second != 0 {
			add("every", "must be a whole number of seconds")
		}
	}
	if spec.Kind != KindCron && sc.GetCron() != "" {
		add("cron", "is for cron schedules only")
	}
	if spec.Kind != KindOnce && sc.GetAt() != nil {
		add("at", "is for once schedules only")
	}
	if spec.Kind != KindInterval && (sc.GetEvery() != nil || sc.GetAnchor() != nil) {
		add("every", "and anchor are for interval schedules only")
	}
	if len(vs) > 0 {
		return nil, vs
	}
	if err := spec.Prepare(); err != nil {
		field := map[string]string{KindCron: "cron", KindOnce: "at", KindInterval: "every"}[spec.Kind]
		if field == "" {
			field = "kind"
		}
		if !spec.Start.IsZero() && !spec.End.IsZero() && !spec.End.After(spec.Start) {
			field = "end_time"
		}
		add(field, "%v", err)
		return nil, vs
	}
	return spec, nil
}

// validate checks a whole schedule at now: its timing (and that it fires
// at all from now on), its policies and its job reference.
func validate(sc *opsconductorv1.Schedule, now time.Time) (*Spec, []apperr.Violation) {
	if sc == nil {
		return nil, []apperr.Violation{{Field: "schedule", Description: "is required"}}
	}
	spec, vs := SpecOf("schedule", sc)
	add := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: "schedule." + field, Description: fmt.Sprintf(format, args...)})
	}
	if sc.GetJobId() == "" {
		add("job_id", "must name the job to run")
	}
	if n := sc.GetName(); n != "" && !namePattern.MatchString(n) {
		add("name", "must be 1-128 letters, digits, spaces, '.', '_' or '-'")
	}
	if j := sc.GetJitter().AsDuration(); j < 0 || j > MaxJitter {
		add("jitter", "must be between 0 and %s", MaxJitter)
	}
	if p := sc.GetMisfirePolicy(); p != "" && p != MisfireSkip && p != MisfireRunOnce {
		add("misfire_policy", "must be %s or %s, got %q", MisfireSkip, MisfireRunOnce, p)
	}
	if g := sc.GetMisfireGrace(); g != nil && g.AsDuration() <= 0 {
		add("misfire_grace", "must be positive (unset: 60s)")
	}
	if p := sc.GetOverlapPolicy(); p != "" && !slices.Contains([]string{OverlapAllow, OverlapSkip, OverlapQueue}, p) {
		add("overlap_policy", "must be %s, %s or %s, got %q", OverlapAllow, OverlapSkip, OverlapQueue, p)
	}
	if spec != nil {
		first, ok := spec.Next(now)
		if !ok {
			add(map[bool]string{true: "at", false: "end_time"}[spec.Kind == KindOnce], "the schedule would never fire after now (%s)", now.UTC().Format(time.RFC3339))
		}
		// A delay as long as the gap to the next fire would run into it.
		if j := sc.GetJitter().AsDuration(); ok && j > 0 {
			at := first
			for range 5 {
				next, more := spec.Next(at)
				if !more {
					break
				}
				if gap := next.Sub(at); j >= gap {
					add("jitter", "must be shorter than the time between fires (%s)", gap)
					break
				}
				at = next
			}
		}
	}
	return spec, vs
}

// definition is what is stored of a schedule: without its runtime fields.
func definition(sc *opsconductorv1.Schedule) ([]byte, error) {
	def := proto.Clone(sc).(*opsconductorv1.Schedule)
	def.Id, def.Version, def.State, def.NextFireTime, def.LastFireTime, def.CreatedBy, def.CreateTime, def.UpdateTime = "", 0, "", nil, nil, "", nil, nil
	return protojson.Marshal(def)
}

func toProto(r Record) (*opsconductorv1.Schedule, error) {
	sc := &opsconductorv1.Schedule{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r.Definition, sc); err != nil {
		return nil, fmt.Errorf("decode schedule %s: %w", r.ID, err)
	}
	sc.Id, sc.Version, sc.State, sc.CreatedBy = r.ID, r.Version, r.State, r.CreatedBy
	sc.CreateTime, sc.UpdateTime = timestamppb.New(r.CreatedAt), timestamppb.New(r.UpdatedAt)
	if r.NextFireAt != nil && r.State == StateActive {
		sc.NextFireTime = timestamppb.New(*r.NextFireAt)
	}
	if r.LastFireAt != nil {
		sc.LastFireTime = timestamppb.New(*r.LastFireAt)
	}
	return sc, nil
}

func notFound(id string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return apperr.NotFound("schedule %s not found", id)
	}
	return err
}

// check validates sc and asks the executions service whether the caller
// may run its job so; it returns the spec and the next fire time.
func (s *Service) check(ctx context.Context, sc *opsconductorv1.Schedule) (*Spec, time.Time, error) {
	now := s.now()
	spec, vs := validate(sc, now)
	if len(vs) > 0 {
		return nil, time.Time{}, apperr.Invalid("schedule", vs)
	}
	if s.planner != nil {
		if err := s.planner.PlanRun(ctx, sc.GetJobId(), sc.GetParameters(), sc.GetTargets()); err != nil {
			return nil, time.Time{}, err
		}
	}
	next, _ := spec.Next(now)
	return spec, next, nil
}

func (s *Service) CreateSchedule(ctx context.Context, req *connect.Request[opsconductorv1.CreateScheduleRequest]) (*connect.Response[opsconductorv1.CreateScheduleResponse], error) {
	sc := req.Msg.GetSchedule()
	_, next, err := s.check(ctx, sc)
	if err != nil {
		return nil, err
	}
	def, err := definition(sc)
	if err != nil {
		return nil, err
	}
	principal, _ := auth.PrincipalFrom(ctx)
	as, err := auth.EncodeGrants(principal)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	r := Record{ID: uuid.Must(uuid.NewV7()).String(), Version: 1, JobID: sc.GetJobId(), Definition: def, State: StateActive, NextFireAt: &next,
		RunAs: as, CreatedBy: principal.Name, CreatedAt: now, UpdatedAt: now}
	if err := s.store.Create(ctx, r); err != nil {
		return nil, err
	}
	s.logger.Info("schedule created", zap.String("schedule_id", r.ID), zap.String("job_id", r.JobID), zap.Time("next_fire", next), zap.String("by", principal.Name))
	out, err := toProto(r)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.CreateScheduleResponse{Schedule: out}), nil
}

func (s *Service) list(ctx context.Context, jobID, state string) (*connect.Response[opsconductorv1.ListSchedulesResponse], error) {
	if state != "" && !slices.Contains([]string{StateActive, StatePaused, StateCompleted}, state) {
		return nil, apperr.InvalidField("state", "must be %s, %s or %s", StateActive, StatePaused, StateCompleted)
	}
	rs, err := s.store.List(ctx, jobID, state)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListSchedulesResponse{}
	for _, r := range rs {
		sc, err := toProto(r)
		if err != nil {
			return nil, err
		}
		resp.Schedules = append(resp.Schedules, sc)
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) ListSchedules(ctx context.Context, req *connect.Request[opsconductorv1.ListSchedulesRequest]) (*connect.Response[opsconductorv1.ListSchedulesResponse], error) {
	return s.list(ctx, req.Msg.GetJobId(), req.Msg.GetState())
}

func (s *Service) ListJobSchedules(ctx context.Context, req *connect.Request[opsconductorv1.ListJobSchedulesRequest]) (*connect.Response[opsconductorv1.ListSchedulesResponse], error) {
	if req.Msg.GetJobId() == "" {
		return nil, apperr.InvalidField("job_id", "must not be empty")
	}
	return s.list(ctx, req.Msg.GetJobId(), "")
}

func (s *Service) GetSchedule(ctx context.Context, req *connect.Request[opsconductorv1.GetScheduleRequest]) (*connect.Response[opsconductorv1.GetScheduleResponse], error) {
	r, err := s.store.Get(ctx, req.Msg.GetId())
	if err != nil {
		return nil, notFound(req.Msg.GetId(), err)
	}
	sc, err := toProto(r)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.GetScheduleResponse{Schedule: sc}), nil
}

func (s *Service) UpdateSchedule(ctx context.Context, req *connect.Request[opsconductorv1.UpdateScheduleRequest]) (*connect.Response[opsconductorv1.UpdateScheduleResponse], error) {
	sc := req.Msg.GetSchedule()
	cur, err := s.store.Get(ctx, sc.GetId())
	if err != nil {
		return nil, notFound(sc.GetId(), err)
	}
	if sc.GetVersion() != cur.Version {
		return nil, apperr.Stale("schedule %s is at version %d, not %d: read it again and reapply your change", cur.ID, cur.Version, sc.GetVersion())
	}
	_, next, err := s.check(ctx, sc)
	if err != nil {
		return nil, err
	}
	def, err := definition(sc)
	if err != nil {
		return nil, err
	}
	principal, _ := auth.PrincipalFrom(ctx)
	if cur.RunAs, err = auth.EncodeGrants(principal); err != nil {
		return nil, err
	}
	cur.Definition, cur.JobID, cur.NextFireAt, cur.UpdatedAt = def, sc.GetJobId(), &next, s.now().UTC().Truncate(time.Microsecond)
	if cur.State == StateCompleted {
		cur.State = StateActive
	}
	return save(ctx, s, cur, "schedule.updated", func(out *opsconductorv1.Schedule) *connect.Response[opsconductorv1.UpdateScheduleResponse] {
		return connect.NewResponse(&opsconductorv1.UpdateScheduleResponse{Schedule: out})
	})
}

// save writes r at its version and answers with wrap.
func save[T any](ctx context.Context, s *Service, r Record, topic string, wrap func(*opsconductorv1.Schedule) *connect.Response[T]) (*connect.Response[T], error) {
	v, err := s.store.Update(ctx, r, topic)
	switch {
	case errors.Is(err, store.ErrConflict):
		return nil, apperr.Stale("%v: read it again and reapply your change", err)
	case err != nil:
		return nil, notFound(r.ID, err)
	}
	r.Version = v
	out, err := toProto(r)
	if err != nil {
		return nil, err
	}
	return wrap(out), nil
}

// mayManage checks the caller may run the schedule's job as it would run:
// pausing, resuming or deleting another team's schedules needs that.
func (s *Service) mayManage(ctx context.Context, r Record) error {
	if s.planner == nil {
		return nil
	}
	sc, err := toProto(r)
	if err != nil {
		return err
	}
	return s.planner.PlanRun(ctx, sc.GetJobId(), sc.GetParameters(), sc.GetTargets())
}

func (s *Service) DeleteSchedule(ctx context.Context, req *connect.Request[opsconductorv1.DeleteScheduleRequest]) (*connect.Response[opsconductorv1.DeleteScheduleResponse], error) {
	r, err := s.store.Get(ctx, req.Msg.GetId())
	if err != nil {
		return nil, notFound(req.Msg.GetId(), err)
	}
	// A schedule whose job is gone can still be deleted; one the caller
	// may not run cannot.
	if err := s.mayManage(ctx, r); denied(err) {
		return nil, err
	}
	if err := s.store.Delete(ctx, req.Msg.GetId()); err != nil {
		return nil, notFound(req.Msg.GetId(), err)
	}
	return connect.NewResponse(&opsconductorv1.DeleteScheduleResponse{}), nil
}

func (s *Service) PauseSchedule(ctx context.Context, req *connect.Request[opsconductorv1.PauseScheduleRequest]) (*connect.Response[opsconductorv1.PauseScheduleResponse], error) {
	r, err := s.store.Get(ctx, req.Msg.GetId())
	if err != nil {
		return nil, notFound(req.Msg.GetId(), err)
	}
	if r.State != StateActive {
		return nil, apperr.FailedPrecondition("schedule %s is %s, not active", r.ID, r.State)
	}
	if err := s.mayManage(ctx, r); err != nil {
		return nil, err
	}
	r.State, r.UpdatedAt = StatePaused, s.now().UTC().Truncate(time.Microsecond)
	return save(ctx, s, r, "schedule.paused", func(out *opsconductorv1.Schedule) *connect.Response[opsconductorv1.PauseScheduleResponse] {
		return connect.NewResponse(&opsconductorv1.PauseScheduleResponse{Schedule: out})
	})
}

// ResumeSchedule makes a paused schedule active again from now on: the
// fires it missed while paused are not made up.
func (s *Service) ResumeSchedule(ctx context.Context, req *connect.Request[opsconductorv1.ResumeScheduleRequest]) (*connect.Response[opsconductorv1.ResumeScheduleResponse], error) {
	r, err := s.store.Get(ctx, req.Msg.GetId())
	if err != nil {
		return nil, notFound(req.Msg.GetId(), err)
	}
	if r.State != StatePaused {
		return nil, apperr.FailedPrecondition("schedule %s is %s, not paused", r.ID, r.State)
	}
	sc, err := toProto(r)
	if err != nil {
		return nil, err
	}
	spec, vs := SpecOf("schedule", sc)
	if len(vs) > 0 {
		return nil, apperr.Invalid("schedule", vs)
	}
	// Resuming hands the schedule the resumer's rights: checked as a run.
	if err := s.mayManage(ctx, r); err != nil {
		return nil, err
	}
	principal, _ := auth.PrincipalFrom(ctx)
	if r.RunAs, err = auth.EncodeGrants(principal); err != nil {
		return nil, err
	}
	now := s.now()
	next, ok := spec.Next(now)
	r.State, r.UpdatedAt = StateActive, now.UTC().Truncate(time.Microsecond)
	if ok {
		r.NextFireAt = &next
	} else {
		r.State, r.NextFireAt = StateCompleted, nil
	}
	return save(ctx, s, r, "schedule.resumed", func(out *opsconductorv1.Schedule) *connect.Response[opsconductorv1.ResumeScheduleResponse] {
		return connect.NewResponse(&opsconductorv1.ResumeScheduleResponse{Schedule: out})
	})
}

func (s *Service) ValidateSchedule(ctx context.Context, req *connect.Request[opsconductorv1.ValidateScheduleRequest]) (*connect.Response[opsconductorv1.ValidateScheduleResponse], error) {
	sc := req.Msg.GetSchedule()
	if sc == nil {
		return nil, apperr.InvalidField("schedule", "is required")
	}
	n := int(req.Msg.GetCount())
	switch {
	case n == 0:
		n = 5
	case n < 0 || n > MaxPreview:
		return nil, apperr.InvalidField("count", "must be between 1 and %d", MaxPreview)
	}
	now := s.now()
	spec, vs := SpecOf("schedule", sc)
	if len(vs) == 0 {
		if _, ok := spec.Next(now); !ok {
			vs = append(vs, apperr.Violation{Field: "schedule.end_time", Description: "the schedule would never fire after now"})
		}
	}
	if len(vs) > 0 {
		return nil, apperr.Invalid("schedule", vs)
	}
	resp := &opsconductorv1.ValidateScheduleResponse{}
	at := now
	for range n {
		next, ok := spec.Next(at)
		if !ok {
			break
		}
		resp.Next = append(resp.Next, &opsconductorv1.FireTime{Local: next.In(spec.Zone).Format(time.RFC3339), Utc: timestamppb.New(next)})
		at = next
	}
	return connect.NewResponse(resp), nil
}

// Jitter is the delay of one fire: deterministic per schedule and slot,
// so every replica computes the same.
func Jitter(scheduleID string, slot time.Time, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%d", scheduleID, slot.UnixNano())
	return time.Duration(h.Sum64() % uint64(max))
}

func (s *Service) ListScheduleFires(ctx context.Context, req *connect.Request[opsconductorv1.ListScheduleFiresRequest]) (*connect.Response[opsconductorv1.ListScheduleFiresResponse], error) {
	if _, err := s.store.Get(ctx, req.Msg.GetId()); err != nil {
		return nil, notFound(req.Msg.GetId(), err)
	}
	limit := int(req.Msg.GetLimit())
	switch {
	case limit == 0:
		limit = 100
	case limit < 0 || limit > 1000:
		return nil, apperr.InvalidField("limit", "must be between 1 and 1000")
	}
	fires, err := s.store.Fires(ctx, req.Msg.GetId(), limit)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListScheduleFiresResponse{}
	for _, f := range fires {
		out := &opsconductorv1.ScheduleFire{ScheduledFor: timestamppb.New(f.ScheduledFor), Outcome: f.Outcome, Reason: f.Reason, ExecutionId: f.ExecutionID}
		if f.FiredAt != nil {
			out.FiredAt, out.Lateness = timestamppb.New(*f.FiredAt), durationpb.New(f.Lateness)
		}
		resp.Fires = append(resp.Fires, out)
	}
	return connect.NewResponse(resp), nil
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

// denied reports whether err refuses the caller's rights.
func denied(err error) bool {
	var ae *apperr.Error
	return errors.As(err, &ae) && ae.Kind == apperr.KindPermissionDenied
}
