package schedule

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// plannerFunc stands in for the executions service's dry run.
type plannerFunc func(jobID string) error

func (f plannerFunc) PlanRun(_ context.Context, jobID string, _ map[string]string, _ []*opsconductorv1.Target) error {
	return f(jobID)
}

// kindOf is the apperr kind of err (0: not an apperr error).
func kindOf(err error) apperr.Kind {
	var ae *apperr.Error
	if errors.As(err, &ae) {
		return ae.Kind
	}
	return 0
}

func newService(t *testing.T, now time.Time) *Service {
	t.Helper()
	planner := plannerFunc(func(jobID string) error {
		if jobID != "job-1" {
			return apperr.NotFound("job %s not found", jobID)
		}
		return nil
	})
	return NewService(NewStore(storetest.Open(t, "sqlite", Schema, Migrations())), planner, func() time.Time { return now }, zap.NewNop())
}

func TestScheduleLifecycle(t *testing.T) {
	now := utc("2026-03-07T12:00:00Z")
	s := newService(t, now)
	ctx := context.Background()
	created, err := s.CreateSchedule(ctx, connect.NewRequest(&opsconductorv1.CreateScheduleRequest{Schedule: &opsconductorv1.Schedule{
		Name: "nightly", JobId: "job-1", Kind: KindCron, Cron: "30 2 * * *", TimeZone: "America/New_York"}}))
	if err != nil {
		t.Fatal(err)
	}
	sc := created.Msg.GetSchedule()
	// The spring-forward night: 02:30 does not exist, the fire is 03:00 EDT.
	if sc.GetState() != StateActive || sc.GetVersion() != 1 || !sc.GetNextFireTime().AsTime().Equal(utc("2026-03-08T07:00:00Z")) {
		t.Fatalf("created = %v", sc)
	}
	list, err := s.ListJobSchedules(ctx, connect.NewRequest(&opsconductorv1.ListJobSchedulesRequest{JobId: "job-1"}))
	if err != nil || len(list.Msg.GetSchedules()) != 1 {
		t.Fatalf("list = %v, %v", list, err)
	}
	paused, err := s.PauseSchedule(ctx, connect.NewRequest(&opsconductorv1.PauseScheduleRequest{Id: sc.GetId()}))
	if err != nil || paused.Msg.GetSchedule().GetState() != StatePaused || paused.Msg.GetSchedule().GetNextFireTime() != nil {
		t.Fatalf("pause = %v, %v", paused, err)
	}
	if _, err := s.PauseSchedule(ctx, connect.NewRequest(&opsconductorv1.PauseScheduleRequest{Id: sc.GetId()})); err == nil {
		t.Fatal("paused twice")
	}
	resumed, err := s.ResumeSchedule(ctx, connect.NewRequest(&opsconductorv1.ResumeScheduleRequest{Id: sc.GetId()}))
	if err != nil || resumed.Msg.GetSchedule().GetState() != StateActive || resumed.Msg.GetSchedule().GetVersion() != 3 {
		t.Fatalf("resume = %v, %v", resumed, err)
	}
	stale := resumed.Msg.GetSchedule()
	stale.Version = 1
	if _, err := s.UpdateSchedule(ctx, connect.NewRequest(&opsconductorv1.UpdateScheduleRequest{Schedule: stale})); kindOf(err) != apperr.KindStale {
		t.Fatalf("update at a stale version: %v", err)
	}
	stale.Version, stale.Cron = 3, "0 4 * * *"
	updated, err := s.UpdateSchedule(ctx, connect.NewRequest(&opsconductorv1.UpdateScheduleRequest{Schedule: stale}))
	if err != nil || !updated.Msg.GetSchedule().GetNextFireTime().AsTime().Equal(utc("2026-03-08T08:00:00Z")) {
		t.Fatalf("update = %v, %v", updated, err)
	}
	if _, err := s.DeleteSchedule(ctx, connect.NewRequest(&opsconductorv1.DeleteScheduleRequest{Id: sc.GetId()})); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetSchedule(ctx, connect.NewRequest(&opsconductorv1.GetScheduleRequest{Id: sc.GetId()})); kindOf(err) != apperr.KindNotFound {
		t.Fatalf("get after delete: %v", err)
	}
}

// TestScheduleRefusals: bad input is a 400 naming the field and saying
// what is wrong; a job the caller may not run is refused by the planner.
func TestScheduleRefusals(t *testing.T) {
	now := utc("2026-03-07T12:00:00Z")
	s := newService(t, now)
	base := func(mod func(*opsconductorv1.Schedule)) *opsconductorv1.Schedule {
		sc := &opsconductorv1.Schedule{JobId: "job-1", Kind: KindCron, Cron: "@hourly"}
		mod(sc)
		return sc
	}
	tests := []struct {
		name  string
		sc    *opsconductorv1.Schedule
		field string
		says  string
	}{
		{"unknown zone", base(func(s *opsconductorv1.Schedule) { s.TimeZone = "Mars/Olympus" }), "schedule.time_zone", "unknown IANA time zone"},
		{"bad cron", base(func(s *opsconductorv1.Schedule) { s.Cron = "0 25 * * *" }), "schedule.cron", "invalid cron expression"},
		{"window in the past", base(func(s *opsconductorv1.Schedule) { s.EndTime = timestamppb.New(utc("2026-01-01T00:00:00Z")) }), "schedule.end_time", "never fire"},
		{"once in the past", &opsconductorv1.Schedule{JobId: "job-1", Kind: KindOnce, At: timestamppb.New(utc("2026-03-01T00:00:00Z"))}, "schedule.at", "never fire"},
		{"interval too short", &opsconductorv1.Schedule{JobId: "job-1", Kind: KindInterval, Every: durationpb.New(0)}, "schedule.every", "at least"},
		{"interval in fractions", &opsconductorv1.Schedule{JobId: "job-1", Kind: KindInterval, Every: durationpb.New(1500 * time.Millisecond)}, "schedule.every", "whole number of seconds"},
		{"jitter as long as the interval", &opsconductorv1.Schedule{JobId: "job-1", Kind: KindInterval, Every: durationpb.New(time.Minute), Jitter: durationpb.New(time.Minute)}, "schedule.jitter", "shorter than"},
		{"zero grace", base(func(s *opsconductorv1.Schedule) { s.MisfireGrace = durationpb.New(0) }), "schedule.misfire_grace", "positive"},
		{"cron field on an interval", &opsconductorv1.Schedule{JobId: "job-1", Kind: KindInterval, Every: durationpb.New(time.Minute), Cron: "@hourly"}, "schedule.cron", "cron schedules only"},
		{"no job", base(func(s *opsconductorv1.Schedule) { s.JobId = "" }), "schedule.job_id", "name the job"},
		{"bad misfire policy", base(func(s *opsconductorv1.Schedule) { s.MisfirePolicy = "later" }), "schedule.misfire_policy", "skip or run_once"},
		{"bad overlap policy", base(func(s *opsconductorv1.Schedule) { s.OverlapPolicy = "replace" }), "schedule.overlap_policy", "allow, skip or queue"},
		{"jitter too long", base(func(s *opsconductorv1.Schedule) { s.Jitter = durationpb.New(2 * time.Hour) }), "schedule.jitter", "between"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.CreateSchedule(context.Background(), connect.NewRequest(&opsconductorv1.CreateScheduleRequest{Schedule: tt.sc}))
			var ae *apperr.Error
			if !errors.As(err, &ae) || ae.Kind != apperr.KindInvalid {
				t.Fatalf("err = %v, want invalid", err)
			}
			for _, v := range ae.Violations {
				if v.Field == tt.field && strings.Contains(v.Description, tt.says) {
					return
				}
			}
			t.Fatalf("violations %v, want %s saying %q", ae.Violations, tt.field, tt.says)
		})
	}
	if _, err := s.CreateSchedule(context.Background(), connect.NewRequest(&opsconductorv1.CreateScheduleRequest{Schedule: base(func(s *opsconductorv1.Schedule) { s.JobId = "other" })})); kindOf(err) != apperr.KindNotFound {
		t.Fatalf("a job the planner refuses: %v", err)
	}
}

// TestValidatePreview: the next fire times in the zone and in UTC.
func TestValidatePreview(t *testing.T) {
	s := newService(t, utc("2026-10-24T12:00:00Z"))
	resp, err := s.ValidateSchedule(context.Background(), connect.NewRequest(&opsconductorv1.ValidateScheduleRequest{
		Schedule: &opsconductorv1.Schedule{Kind: KindCron, Cron: "30 2 * * *", TimeZone: "Europe/Berlin"}, Count: 3}))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range resp.Msg.GetNext() {
		got = append(got, f.GetLocal()+"="+f.GetUtc().AsTime().Format(time.RFC3339))
	}
	want := "2026-10-25T02:30:00+02:00=2026-10-25T00:30:00Z 2026-10-26T02:30:00+01:00=2026-10-26T01:30:00Z 2026-10-27T02:30:00+01:00=2026-10-27T01:30:00Z"
	if strings.Join(got, " ") != want {
		t.Fatalf("preview = %s\nwant      %s", strings.Join(got, " "), want)
	}
	if _, err := s.ValidateSchedule(context.Background(), connect.NewRequest(&opsconductorv1.ValidateScheduleRequest{
		Schedule: &opsconductorv1.Schedule{Kind: KindCron, Cron: "@hourly"}, Count: 1000})); kindOf(err) != apperr.KindInvalid {
		t.Fatalf("count 1000: %v", err)
	}
}
