package schedule

import (
	"strings"
	"testing"
	"time"
)

func zone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// TestNextFireTimes checks exact fire instants: cron in zones across both
// DST transitions (New York, Berlin, Adelaide with its 30-minute offset),
// a zone without DST (Kolkata, +05:30), seconds fields, descriptors,
// intervals, once, and windows. want lists the fires after after, in
// order.
func TestNextFireTimes(t *testing.T) {
	tests := []struct {
		name  string
		spec  Spec
		zone  string
		after string
		want  []string
	}{
		{"NY spring: 02:30 does not exist, fires at 03:00 EDT", Spec{Kind: KindCron, Cron: "30 2 * * *"}, "America/New_York",
			"2026-03-07T17:00:00Z", []string{"2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"}},
		{"NY spring: 02:00 and 02:30 collapse into one fire at 03:00", Spec{Kind: KindCron, Cron: "*/30 * * * *"}, "America/New_York",
			"2026-03-08T06:45:00Z", []string{"2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z"}},
		{"NY fall: 01:30 occurs twice, fires once (EDT)", Spec{Kind: KindCron, Cron: "30 1 * * *"}, "America/New_York",
			"2026-10-31T16:00:00Z", []string{"2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"}},
		{"NY fall: hourly skips the repeated 01:00", Spec{Kind: KindCron, Cron: "0 * * * *"}, "America/New_York",
			"2026-11-01T04:30:00Z", []string{"2026-11-01T05:00:00Z", "2026-11-01T07:00:00Z", "2026-11-01T08:00:00Z"}},
		{"NY fall: restarted inside the repeated hour", Spec{Kind: KindCron, Cron: "*/30 * * * *"}, "America/New_York",
			"2026-11-01T06:15:00Z", []string{"2026-11-01T07:00:00Z"}},
		{"Berlin spring: 02:30 fires at 03:00 CEST", Spec{Kind: KindCron, Cron: "30 2 * * *"}, "Europe/Berlin",
			"2026-03-28T12:00:00Z", []string{"2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"}},
		{"Berlin fall: 02:30 occurs twice, fires at the CEST one", Spec{Kind: KindCron, Cron: "30 2 * * *"}, "Europe/Berlin",
			"2026-10-24T12:00:00Z", []string{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}},
		{"Adelaide spring (+09:30 to +10:30): 02:30 fires at 03:00 ACDT", Spec{Kind: KindCron, Cron: "30 2 * * *"}, "Australia/Adelaide",
			"2026-10-03T00:00:00Z", []string{"2026-10-03T16:30:00Z", "2026-10-04T16:00:00Z"}},
		{"Adelaide fall: 02:30 occurs twice, fires at the ACDT one", Spec{Kind: KindCron, Cron: "30 2 * * *"}, "Australia/Adelaide",
			"2026-04-04T00:00:00Z", []string{"2026-04-04T16:00:00Z", "2026-04-05T17:00:00Z"}},
		{"Kolkata +05:30", Spec{Kind: KindCron, Cron: "0 9 * * 1-5"}, "Asia/Kolkata",
			"2026-06-05T00:00:00Z", []string{"2026-06-05T03:30:00Z", "2026-06-08T03:30:00Z"}},
		{"seconds field", Spec{Kind: KindCron, Cron: "*/15 * * * * *"}, "UTC",
			"2026-01-01T00:00:07Z", []string{"2026-01-01T00:00:15Z", "2026-01-01T00:00:30Z"}},
		{"@hourly", Spec{Kind: KindCron, Cron: "@hourly"}, "UTC", "2026-01-01T10:20:00Z", []string{"2026-01-01T11:00:00Z"}},
		{"@daily in New York", Spec{Kind: KindCron, Cron: "@daily"}, "America/New_York",
			"2026-06-01T12:00:00Z", []string{"2026-06-02T04:00:00Z"}},
		{"@weekly", Spec{Kind: KindCron, Cron: "@weekly"}, "UTC", "2026-01-01T00:00:00Z", []string{"2026-01-04T00:00:00Z"}},
		{"@every 90s is elapsed time from the epoch", Spec{Kind: KindCron, Cron: "@every 90s"}, "America/New_York",
			"1970-01-01T00:01:40Z", []string{"1970-01-01T00:03:00Z", "1970-01-01T00:04:30Z"}},
		{"interval ignores DST", Spec{Kind: KindInterval, Every: time.Hour, Anchor: utc("2026-03-08T05:30:00Z")}, "America/New_York",
			"2026-03-08T06:45:00Z", []string{"2026-03-08T07:30:00Z", "2026-03-08T08:30:00Z"}},
		{"interval before its anchor", Spec{Kind: KindInterval, Every: 10 * time.Minute, Anchor: utc("2026-01-01T12:00:00Z")}, "UTC",
			"2026-01-01T00:00:00Z", []string{"2026-01-01T12:00:00Z", "2026-01-01T12:10:00Z"}},
		{"once", Spec{Kind: KindOnce, At: utc("2026-02-01T02:00:00Z")}, "UTC", "2026-01-01T00:00:00Z", []string{"2026-02-01T02:00:00Z"}},
		{"window", Spec{Kind: KindCron, Cron: "@hourly", Start: utc("2026-01-01T10:30:00Z"), End: utc("2026-01-01T12:30:00Z")}, "UTC",
			"2026-01-01T00:00:00Z", []string{"2026-01-01T11:00:00Z", "2026-01-01T12:00:00Z"}},
		{"window start is a fire time", Spec{Kind: KindInterval, Every: time.Hour, Start: utc("2026-01-01T10:00:00Z")}, "UTC",
			"2026-01-01T00:00:00Z", []string{"2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.spec
			s.Zone = zone(t, tt.zone)
			if err := s.Prepare(); err != nil {
				t.Fatal(err)
			}
			at := utc(tt.after)
			for i, want := range tt.want {
				next, ok := s.Next(at)
				if !ok || !next.Equal(utc(want)) {
					t.Fatalf("fire %d after %s = %s (%v), want %s (%s local)", i+1, at.Format(time.RFC3339), next.UTC().Format(time.RFC3339), ok,
						want, utc(want).In(s.Zone).Format("2006-01-02 15:04 MST"))
				}
				at = next
			}
			if tt.spec.Kind == KindOnce || !tt.spec.End.IsZero() {
				if next, ok := s.Next(at); ok {
					t.Fatalf("fires again at %s after its last", next)
				}
			}
		})
	}
}

func TestPrepareRefuses(t *testing.T) {
	tests := []struct {
		spec Spec
		want string
	}{
		{Spec{Kind: KindCron, Cron: "61 * * * *"}, "invalid cron expression"},
		{Spec{Kind: KindCron, Cron: "* * *"}, "invalid cron expression"},
		{Spec{Kind: KindCron, Cron: "TZ=Europe/Berlin 0 9 * * *"}, "time zone"},
		{Spec{Kind: KindCron, Cron: "@every 100ms"}, "at least"},
		{Spec{Kind: KindInterval, Every: 500 * time.Millisecond}, "at least"},
		{Spec{Kind: KindOnce}, "instant"},
		{Spec{Kind: "weekly"}, "kind must be"},
		{Spec{Kind: KindCron, Cron: "@hourly", Start: utc("2026-01-02T00:00:00Z"), End: utc("2026-01-01T00:00:00Z")}, "before it starts"},
	}
	for _, tt := range tests {
		s := tt.spec
		if err := s.Prepare(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Prepare(%+v) = %v, want %q", tt.spec, err, tt.want)
		}
	}
}
