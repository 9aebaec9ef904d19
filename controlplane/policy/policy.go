// Package policy parses and merges execution policies: how many targets
// run at once, rolling batches, the failure threshold, what happens when a
// job is already running, and how long a task may wait for its agent. The
// jobs service validates a job's policy with it; the executions service
// merges a job's policy with an execution's overrides and applies it.
package policy

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// Concurrency policies for overlapping executions of one job.
const (
	Allow = "allow"
	Skip  = "skip"
	Queue = "queue"
)

// What happens to a task whose agent stopped reporting.
const (
	LossFail    = "fail"
	LossRequeue = "requeue"
)

// DefaultQueueTimeout applies when a policy sets none.
const DefaultQueueTimeout = 24 * time.Hour

// MaxQueueTimeout bounds what a policy may ask for.
const MaxQueueTimeout = 30 * 24 * time.Hour

// Amount is a count or a percentage of the targets.
type Amount struct {
	Count   int
	Percent int  // used when > 0
	Given   bool // false: not set (0 may be a real count)
}

// Set reports whether the amount was given.
func (a Amount) Set() bool { return a.Given }

// Of resolves the amount against total targets: a percentage rounds up and
// is at least 1.
func (a Amount) Of(total int) int {
	if a.Percent > 0 {
		return max(1, int(math.Ceil(float64(total)*float64(a.Percent)/100)))
	}
	return a.Count
}

func (a Amount) String() string {
	switch {
	case a.Percent > 0:
		return strconv.Itoa(a.Percent) + "%"
	case a.Count > 0:
		return strconv.Itoa(a.Count)
	}
	return ""
}

// Policy is a parsed execution policy.
type Policy struct {
	MaxParallel  Amount
	BatchSize    int
	BatchPause   time.Duration
	MaxFailures  Amount
	Concurrency  string
	QueueTimeout time.Duration
	OnAgentLoss  string
	Timeout      time.Duration // the execution's deadline, from creation
	TaskTimeout  time.Duration // one target's run
	Exclusive    bool          // lock each target while running there
}

func parseAmount(s string, allowZero bool) (Amount, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Amount{}, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 100 {
			return Amount{}, fmt.Errorf("%q: a percentage must be 1%% to 100%%", s)
		}
		return Amount{Percent: n, Given: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || (n == 0 && !allowZero) {
		return Amount{}, fmt.Errorf("%q: want a whole number of targets (at least 1) or a percentage such as 25%%", s)
	}
	return Amount{Count: n, Given: true}, nil
}

// Validate returns every problem of p, each under prefix (e.g.
// "job.policy").
func Validate(prefix string, p *opsconductorv1.ExecutionPolicy) []apperr.Violation {
	_, vs := parse(prefix, p)
	return vs
}

func parse(prefix string, p *opsconductorv1.ExecutionPolicy) (Policy, []apperr.Violation) {
	var out Policy
	var vs []apperr.Violation
	bad := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: prefix + "." + field, Description: fmt.Sprintf(format, args...)})
	}
	var err error
	if out.MaxParallel, err = parseAmount(p.GetMaxParallel(), false); err != nil {
		bad("max_parallel", "%v", err)
	}
	// max_failures is how many failed targets are tolerated: "0" stops the
	// rollout at the first failure.
	if out.MaxFailures, err = parseAmount(p.GetMaxFailures(), true); err != nil {
		bad("max_failures", "%v", err)
	}
	if p.GetBatchSize() < 0 {
		bad("batch_size", "must not be negative")
	}
	out.BatchSize = int(p.GetBatchSize())
	if d := p.GetBatchPause(); d != nil {
		if !d.IsValid() || d.AsDuration() < 0 {
			bad("batch_pause", "must be a positive duration")
		}
		out.BatchPause = d.AsDuration()
	}
	switch c := p.GetConcurrency(); c {
	case "", Allow, Skip, Queue:
		out.Concurrency = c
	default:
		bad("concurrency", "must be allow, skip or queue, not %q", c)
	}
	vs = append(vs, ValidateRetry(prefix+".retry", p.GetRetry())...)
	for name, d := range map[string]*durationpb.Duration{"timeout": p.GetTimeout(), "task_timeout": p.GetTaskTimeout()} {
		if d == nil {
			continue
		}
		if !d.IsValid() || d.AsDuration() < 0 || d.AsDuration() > 7*24*time.Hour {
			bad(name, "must be between 0 and 168h")
		}
	}
	out.Timeout, out.TaskTimeout = p.GetTimeout().AsDuration(), p.GetTaskTimeout().AsDuration()
	out.Exclusive = p.GetExclusive()
	switch l := p.GetOnAgentLoss(); l {
	case "", LossFail, LossRequeue:
		out.OnAgentLoss = l
	default:
		bad("on_agent_loss", "must be fail or requeue, not %q", l)
	}
	if d := p.GetQueueTimeout(); d != nil {
		switch {
		case !d.IsValid() || d.AsDuration() < 0:
			bad("queue_timeout", "must be a positive duration")
		case d.AsDuration() > MaxQueueTimeout:
			bad("queue_timeout", "must be at most %s", MaxQueueTimeout)
		}
		out.QueueTimeout = d.AsDuration()
	}
	return out, vs
}

// Merge lays the set fields of override over base (override may be nil).
func Merge(base, override *opsconductorv1.ExecutionPolicy) *opsconductorv1.ExecutionPolicy {
	out := &opsconductorv1.ExecutionPolicy{}
	for _, p := range []*opsconductorv1.ExecutionPolicy{base, override} {
		if p == nil {
			continue
		}
		if p.GetMaxParallel() != "" {
			out.MaxParallel = p.GetMaxParallel()
		}
		if p.GetBatchSize() != 0 {
			out.BatchSize = p.GetBatchSize()
		}
		if p.GetBatchPause() != nil {
			out.BatchPause = p.GetBatchPause()
		}
		if p.GetMaxFailures() != "" {
			out.MaxFailures = p.GetMaxFailures()
		}
		if p.GetConcurrency() != "" {
			out.Concurrency = p.GetConcurrency()
		}
		if p.GetQueueTimeout() != nil {
			out.QueueTimeout = p.GetQueueTimeout()
		}
		if p.GetOnAgentLoss() != "" {
			out.OnAgentLoss = p.GetOnAgentLoss()
		}
		if p.GetRetry() != nil {
			out.Retry = p.GetRetry()
		}
		if p.GetTimeout() != nil {
			out.Timeout = p.GetTimeout()
		}
		if p.GetTaskTimeout() != nil {
			out.TaskTimeout = p.GetTaskTimeout()
		}
		if p.GetExclusive() {
			out.Exclusive = true
		}
	}
	return out
}

// Resolve merges and parses, filling defaults (concurrency allow, queue
// timeout 24h). Problems are reported under prefix.
func Resolve(prefix string, base, override *opsconductorv1.ExecutionPolicy) (Policy, *opsconductorv1.ExecutionPolicy, []apperr.Violation) {
	merged := Merge(base, override)
	p, vs := parse(prefix, merged)
	if p.Concurrency == "" {
		p.Concurrency = Allow
		merged.Concurrency = Allow
	}
	if p.OnAgentLoss == "" {
		p.OnAgentLoss = LossFail
		merged.OnAgentLoss = LossFail
	}
	if p.QueueTimeout == 0 {
		p.QueueTimeout = DefaultQueueTimeout
		merged.QueueTimeout = durationpb.New(DefaultQueueTimeout)
	}
	return p, merged, vs
}

// Retry outcomes a RetryPolicy may name in retry_on.
var RetryOn = []string{"exit_code", "timeout", "error"}

// MaxAttempts bounds a retry policy.
const MaxAttempts = 20

// ValidateRetry returns every problem of a retry policy, under prefix.
func ValidateRetry(prefix string, r *opsconductorv1.RetryPolicy) []apperr.Violation {
	var vs []apperr.Violation
	if r == nil {
		return nil
	}
	bad := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: prefix + "." + field, Description: fmt.Sprintf(format, args...)})
	}
	if r.GetMaxAttempts() < 0 || r.GetMaxAttempts() > MaxAttempts {
		bad("max_attempts", "must be 1 to %d (0 means 1)", MaxAttempts)
	}
	for name, d := range map[string]*durationpb.Duration{"initial_delay": r.GetInitialDelay(), "max_delay": r.GetMaxDelay()} {
		if d != nil && (!d.IsValid() || d.AsDuration() < 0 || d.AsDuration() > time.Hour) {
			bad(name, "must be between 0 and 1h")
		}
	}
	if m := r.GetMultiplier(); m != 0 && (m < 1 || m > 10 || math.IsNaN(m)) {
		bad("multiplier", "must be between 1 and 10 (0 means 2)")
	}
	for i, on := range r.GetRetryOn() {
		ok := false
		for _, known := range RetryOn {
			ok = ok || on == known
		}
		if !ok {
			bad(fmt.Sprintf("retry_on[%d]", i), "must be one of %v, not %q", RetryOn, on)
		}
	}
	return vs
}
