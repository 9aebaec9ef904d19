package runner

import (
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/agent/executor"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestBackoffPlanned(t *testing.T) {
	b := BackoffFrom(&opsconductorv1.RetryPolicy{MaxAttempts: 6, InitialDelay: durationpb.New(100 * time.Millisecond),
		Multiplier: 3, MaxDelay: durationpb.New(2 * time.Second)})
	want := []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, 900 * time.Millisecond, 2 * time.Second, 2 * time.Second}
	for n, w := range want {
		if got := b.Planned(n + 1); got != w {
			t.Fatalf("planned delay before retry %d = %s, want %s", n+1, got, w)
		}
	}
}

// TestBackoffSeededJitter: with a seeded source the delays are exactly the
// policy's planned delays scaled by the source's draws, reproducibly.
func TestBackoffSeededJitter(t *testing.T) {
	b := BackoffFrom(&opsconductorv1.RetryPolicy{MaxAttempts: 5, InitialDelay: durationpb.New(time.Second), Multiplier: 2, MaxDelay: durationpb.New(5 * time.Second)})
	j1, j2, draws := NewJitter(42), NewJitter(42), NewJitter(42)
	for n := 1; n <= 4; n++ {
		d1, d2 := b.Delay(n, j1), b.Delay(n, j2)
		want := time.Duration(draws.Float64() * float64(b.Planned(n)))
		if d1 != d2 || d1 != want {
			t.Fatalf("retry %d: delays %s and %s, want %s from the seeded source", n, d1, d2, want)
		}
		if d1 < 0 || d1 > b.Planned(n) {
			t.Fatalf("retry %d: jittered delay %s outside [0, %s]", n, d1, b.Planned(n))
		}
	}
	noJitter := BackoffFrom(&opsconductorv1.RetryPolicy{InitialDelay: durationpb.New(time.Second), NoJitter: true})
	if d := noJitter.Delay(3, j1); d != 4*time.Second {
		t.Fatalf("no jitter: %s, want 4s", d)
	}
}

func TestBackoffRetries(t *testing.T) {
	all := BackoffFrom(nil)
	onlyTimeout := BackoffFrom(&opsconductorv1.RetryPolicy{RetryOn: []string{"timeout"}})
	tests := []struct {
		res       executor.Result
		all, tout bool
	}{
		{executor.Result{Status: executor.StatusFailed, ExitCode: 2}, true, false},
		{executor.Result{Status: executor.StatusTimedOut, ExitCode: -1}, true, true},
		{executor.Result{Status: executor.StatusFailed, ExitCode: -1}, true, false},
		{executor.Result{Status: executor.StatusCancelled, ExitCode: -1}, false, false},
		{executor.Result{Status: executor.StatusSucceeded}, false, false},
	}
	for _, tt := range tests {
		if all.Retries(tt.res) != tt.all || onlyTimeout.Retries(tt.res) != tt.tout {
			t.Fatalf("%+v: retries %v/%v, want %v/%v", tt.res, all.Retries(tt.res), onlyTimeout.Retries(tt.res), tt.all, tt.tout)
		}
	}
	if all.Attempts != 1 {
		t.Fatalf("default attempts %d, want 1 (no retry)", all.Attempts)
	}
}
