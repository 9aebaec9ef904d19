package runner

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/opsconductor/opsconductor/agent/executor"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// Backoff is a retry schedule: the delay planned before retry n (n >= 1)
// is min(Max, Initial * Multiplier^(n-1)); with Jitter the delay waited is
// a uniformly random share of it ("full jitter"), which spreads retries of
// many hosts apart.
type Backoff struct {
	Attempts   int // tries in all, the first included
	Initial    time.Duration
	Multiplier float64
	Max        time.Duration
	Jitter     bool
	RetryOn    []string // exit_code, timeout, error
}

// BackoffFrom reads a retry policy, filling the defaults (1 attempt, 1s,
// x2, 1m cap, full jitter, retry on everything).
func BackoffFrom(p *opsconductorv1.RetryPolicy) Backoff {
	b := Backoff{Attempts: 1, Initial: time.Second, Multiplier: 2, Max: time.Minute, Jitter: true,
		RetryOn: []string{"exit_code", "timeout", "error"}}
	if p == nil {
		return b
	}
	if p.GetMaxAttempts() > 0 {
		b.Attempts = int(p.GetMaxAttempts())
	}
	if p.GetInitialDelay() != nil {
		b.Initial = p.GetInitialDelay().AsDuration()
	}
	if p.GetMultiplier() >= 1 {
		b.Multiplier = p.GetMultiplier()
	}
	if p.GetMaxDelay() != nil {
		b.Max = p.GetMaxDelay().AsDuration()
	}
	b.Jitter = !p.GetNoJitter()
	if len(p.GetRetryOn()) > 0 {
		b.RetryOn = p.GetRetryOn()
	}
	return b
}

// Planned is the delay before retry n, before jitter.
func (b Backoff) Planned(n int) time.Duration {
	d := float64(b.Initial) * math.Pow(b.Multiplier, float64(n-1))
	if d > float64(b.Max) || math.IsInf(d, 0) {
		return b.Max
	}
	return time.Duration(d)
}

// Delay is the delay to wait before retry n, drawn from rnd.
func (b Backoff) Delay(n int, rnd *Jitter) time.Duration {
	p := b.Planned(n)
	if !b.Jitter || p <= 0 {
		return p
	}
	return time.Duration(rnd.Float64() * float64(p))
}

// Retries reports whether an attempt that ended with res may be retried.
func (b Backoff) Retries(res executor.Result) bool {
	switch res.Status {
	case executor.StatusTimedOut:
		return slices.Contains(b.RetryOn, "timeout")
	case executor.StatusFailed:
		if res.ExitCode >= 0 {
			return slices.Contains(b.RetryOn, "exit_code")
		}
		return slices.Contains(b.RetryOn, "error")
	}
	return false // succeeded or cancelled: never
}

// Jitter is a random source safe for concurrent use; seed it to make
// schedules reproducible.
type Jitter struct {
	mu  sync.Mutex
	rnd *rand.Rand
}

// NewJitter returns a source seeded with seed (0: a random seed).
func NewJitter(seed uint64) *Jitter {
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Jitter{rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Float64 returns a number in [0, 1).
func (j *Jitter) Float64() float64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.rnd.Float64()
}
