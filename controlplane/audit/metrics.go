package audit

import (
	"context"
	"slices"
	"sort"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// Execution is one execution as the business metrics see it.
type Execution struct {
	JobID, JobName, Status string
	StartedAt, FinishedAt  *time.Time
}

// MetricSources are where the business metrics come from: each service
// answers for its own data (the executions, the agents, the schedules).
type MetricSources struct {
	// Executions lists the executions created in [from, to).
	Executions func(ctx context.Context, from, to time.Time) ([]Execution, error)
	// Agents counts enrolled, not revoked agents online and offline.
	Agents func(ctx context.Context) (online, offline int64, err error)
	// Fires counts the schedule fires due in [from, to) by outcome, with
	// the lateness of those that fired.
	Fires func(ctx context.Context, from, to time.Time) (map[string]int64, []time.Duration, error)
	// Runs lists the executions created in [from, to), oldest first, for
	// the compliance export.
	Runs func(ctx context.Context, from, to time.Time) ([]Run, error)
}

// Run is an execution as the compliance export shows it.
type Run struct {
	ID, JobName, CreatedBy, Status string
	CreatedAt                      time.Time
	Targets                        []string
	DangerousReason                string
}

// finished statuses count toward the success rate.
var finished = map[string]bool{"succeeded": true, "failed": true, "cancelled": true}

// nearestRank is the p-th percentile (0 < p ≤ 1) of sorted values by
// nearest rank: the smallest value with at least p of them at or below it.
func nearestRank(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p*float64(len(sorted)) + 0.999999999)
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func durationStats(ds []time.Duration) *opsconductorv1.DurationStats {
	slices.Sort(ds)
	out := &opsconductorv1.DurationStats{Count: int64(len(ds))}
	if len(ds) > 0 {
		out.P50Seconds, out.P95Seconds, out.MaxSeconds = nearestRank(ds, 0.5).Seconds(), nearestRank(ds, 0.95).Seconds(), ds[len(ds)-1].Seconds()
	}
	return out
}

type tally struct {
	id, name  string
	n         int64
	byStatus  map[string]int64
	durations []time.Duration
}

func (t *tally) add(e Execution) {
	t.n++
	t.byStatus[e.Status]++
	if finished[e.Status] && e.StartedAt != nil && e.FinishedAt != nil {
		t.durations = append(t.durations, e.FinishedAt.Sub(*e.StartedAt))
	}
}

func (t *tally) successRate() float64 {
	var done int64
	for s, n := range t.byStatus {
		if finished[s] {
			done += n
		}
	}
	if done == 0 {
		return 0
	}
	return float64(t.byStatus["succeeded"]) / float64(done)
}

// GetMetrics sums up a window.
func (s *Service) GetMetrics(ctx context.Context, req *connect.Request[opsconductorv1.GetMetricsRequest]) (*connect.Response[opsconductorv1.GetMetricsResponse], error) {
	to := time.Now().UTC()
	if req.Msg.GetEndTime() != nil {
		to = req.Msg.GetEndTime().AsTime()
	}
	from := to.Add(-24 * time.Hour)
	if req.Msg.GetStartTime() != nil {
		from = req.Msg.GetStartTime().AsTime()
	}
	if !from.Before(to) {
		return nil, apperr.InvalidField("start_time", "must be before end_time")
	}
	src := s.sources
	if src.Executions == nil || src.Agents == nil || src.Fires == nil {
		return nil, apperr.FailedPrecondition("the metrics' sources are not wired on this server")
	}
	execs, err := src.Executions(ctx, from, to)
	if err != nil {
		return nil, err
	}
	all := &tally{byStatus: map[string]int64{}}
	jobs := map[string]*tally{}
	for _, e := range execs {
		all.add(e)
		j := jobs[e.JobID]
		if j == nil {
			j = &tally{id: e.JobID, name: e.JobName, byStatus: map[string]int64{}}
			jobs[e.JobID] = j
		}
		j.add(e)
	}
	resp := &opsconductorv1.GetMetricsResponse{StartTime: timestamppb.New(from), EndTime: timestamppb.New(to), Executions: all.n,
		ExecutionsByStatus: all.byStatus, SuccessRate: all.successRate(), Duration: durationStats(all.durations)}
	ordered := make([]*tally, 0, len(jobs))
	for _, j := range jobs {
		ordered = append(ordered, j)
	}
	sort.Slice(ordered, func(a, b int) bool {
		if ordered[a].n != ordered[b].n {
			return ordered[a].n > ordered[b].n
		}
		return ordered[a].name < ordered[b].name
	})
	for _, j := range ordered {
		resp.Jobs = append(resp.Jobs, &opsconductorv1.JobMetrics{JobId: j.id, JobName: j.name, Executions: j.n, ByStatus: j.byStatus,
			SuccessRate: j.successRate(), Duration: durationStats(j.durations)})
	}
	if resp.AgentsOnline, resp.AgentsOffline, err = src.Agents(ctx); err != nil {
		return nil, err
	}
	byOutcome, lateness, err := src.Fires(ctx, from, to)
	if err != nil {
		return nil, err
	}
	ls := durationStats(lateness)
	resp.Schedules = &opsconductorv1.ScheduleMetrics{FiresByOutcome: byOutcome, LatenessP50Seconds: ls.P50Seconds, LatenessP95Seconds: ls.P95Seconds,
		LatenessMaxSeconds: ls.MaxSeconds}
	return connect.NewResponse(resp), nil
}
