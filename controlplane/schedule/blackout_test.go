package schedule

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func TestBlackoutCovers(t *testing.T) {
	freeze := &opsconductorv1.BlackoutWindow{Name: "freeze", StartTime: timestamppb.New(utc("2026-12-20T00:00:00Z")), EndTime: timestamppb.New(utc("2027-01-04T00:00:00Z"))}
	office := &opsconductorv1.BlackoutWindow{Name: "office hours", Days: []string{"mon", "tue", "wed", "thu", "fri"}, StartClock: "09:00", EndClock: "17:00", TimeZone: "Europe/Berlin"}
	for _, tt := range []struct {
		b    *opsconductorv1.BlackoutWindow
		at   string
		want bool
	}{
		{freeze, "2026-12-24T18:00:00Z", true},
		{freeze, "2027-01-04T00:00:00Z", false}, // the end is open
		{office, "2026-06-03T07:00:00Z", true},  // Wednesday 09:00 CEST
		{office, "2026-06-03T06:59:00Z", false}, // 08:59
		{office, "2026-06-03T15:00:00Z", false}, // 17:00: the end is open
		{office, "2026-06-06T10:00:00Z", false}, // Saturday
		{office, "2026-01-07T08:30:00Z", true},  // Wednesday 09:30 CET
	} {
		if got := covers(tt.b, utc(tt.at)); got != tt.want {
			t.Errorf("%s covers %s = %v, want %v", tt.b.GetName(), tt.at, got, tt.want)
		}
	}
}

func TestBlackoutRefusals(t *testing.T) {
	for _, tt := range []struct {
		b     *opsconductorv1.BlackoutWindow
		field string
	}{
		{&opsconductorv1.BlackoutWindow{StartClock: "09:00", EndClock: "17:00"}, "blackout.name"},
		{&opsconductorv1.BlackoutWindow{Name: "x"}, "blackout.start_time"},
		{&opsconductorv1.BlackoutWindow{Name: "x", StartClock: "9", EndClock: "17:00"}, "blackout.start_clock"},
		{&opsconductorv1.BlackoutWindow{Name: "x", StartClock: "18:00", EndClock: "06:00"}, "blackout.end_clock"},
		{&opsconductorv1.BlackoutWindow{Name: "x", StartClock: "09:00", EndClock: "17:00", Days: []string{"funday"}}, "blackout.days[0]"},
		{&opsconductorv1.BlackoutWindow{Name: "x", StartClock: "09:00", EndClock: "17:00", TimeZone: "Nowhere/Land"}, "blackout.time_zone"},
		{&opsconductorv1.BlackoutWindow{Name: "x", StartTime: timestamppb.New(utc("2026-01-02T00:00:00Z")), EndTime: timestamppb.New(utc("2026-01-01T00:00:00Z"))}, "blackout.end_time"},
		{&opsconductorv1.BlackoutWindow{Name: "x", StartClock: "09:00", EndClock: "17:00", JobSelector: "team"}, "blackout.job_selector"},
	} {
		vs := validateBlackout(tt.b)
		found := false
		for _, v := range vs {
			found = found || v.Field == tt.field
		}
		if !found {
			t.Errorf("validate %v = %v, want a violation of %s", tt.b, vs, tt.field)
		}
	}
}

// TestBlackoutSkipsFires: a fire inside a blackout window is recorded
// skipped with the window's name; a window for another job's labels or
// another schedule does not touch it.
func TestBlackoutSkipsFires(t *testing.T) {
	r := newRig(t, utc("2026-06-03T06:00:00Z")) // a Wednesday
	id := r.create(t, &opsconductorv1.Schedule{Kind: KindInterval, Every: durationpb.New(time.Hour), Anchor: timestamppb.New(utc("2026-06-03T00:00:00Z"))})
	ctx := context.Background()
	for _, b := range []*opsconductorv1.BlackoutWindow{
		{Name: "office hours", Days: []string{"wed"}, StartClock: "09:00", EndClock: "17:00", TimeZone: "Europe/Berlin", JobSelector: "team=payments"},
		{Name: "not ours", StartClock: "00:00", EndClock: "24:00", JobSelector: "team=search"},
		{Name: "other schedule", StartClock: "00:00", EndClock: "24:00", ScheduleId: "someone-else"},
	} {
		if _, err := r.svc.CreateBlackout(ctx, connect.NewRequest(&opsconductorv1.CreateBlackoutRequest{Blackout: b})); err != nil {
			t.Fatal(err)
		}
	}
	for _, at := range []string{"2026-06-03T07:00:01Z", "2026-06-03T15:00:01Z"} { // 09:00 and 17:00 in Berlin
		r.now = utc(at)
		r.tick(t)
	}
	// (The hours between the two looks are recorded missed.)
	fires, err := r.store.Fires(ctx, id, 20)
	if err != nil || len(fires) != 9 {
		t.Fatalf("fires = %+v, %v", fires, err)
	}
	if first := fires[len(fires)-1]; first.Outcome != OutcomeSkipped || !strings.Contains(first.Reason, `blackout window "office hours"`) {
		t.Fatalf("the 09:00 fire: %+v", first)
	}
	if fires[0].Outcome != OutcomeFired {
		t.Fatalf("the 17:00 fire (the window's end is open): %+v", fires[0])
	}
	list, err := r.svc.ListBlackouts(ctx, connect.NewRequest(&opsconductorv1.ListBlackoutsRequest{}))
	if err != nil || len(list.Msg.GetBlackouts()) != 3 {
		t.Fatalf("list = %v, %v", list, err)
	}
	if _, err := r.svc.DeleteBlackout(ctx, connect.NewRequest(&opsconductorv1.DeleteBlackoutRequest{Id: list.Msg.GetBlackouts()[0].GetId()})); err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.DeleteBlackout(ctx, connect.NewRequest(&opsconductorv1.DeleteBlackoutRequest{Id: "nope"})); kindOf(err) == 0 {
		t.Fatal("deleting a missing window worked")
	}
}
