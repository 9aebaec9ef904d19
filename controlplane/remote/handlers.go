package remote

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/execution"
	"github.com/opsconductor/opsconductor/controlplane/job"
	"github.com/opsconductor/opsconductor/controlplane/registry"
	"github.com/opsconductor/opsconductor/controlplane/schedule"
	interservicev1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/interservice/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/interservice/v1/interservicev1connect"
)

// principalToProto and principalFromProto carry who a call acts for.
func principalToProto(p auth.Principal) (*interservicev1.Principal, error) {
	grants, err := auth.EncodeGrants(p)
	if err != nil {
		return nil, err
	}
	return &interservicev1.Principal{Name: p.Name, Method: p.Method, Roles: p.Roles, Grants: grants}, nil
}

func principalFromProto(m *interservicev1.Principal) (auth.Principal, error) {
	if m == nil {
		return auth.Principal{}, apperr.InvalidField("principal", "is required")
	}
	grants, err := auth.DecodeGrants(m.GetGrants())
	if err != nil {
		return auth.Principal{}, apperr.InvalidField("principal.grants", "%v", err)
	}
	return auth.Principal{Name: m.GetName(), Method: m.GetMethod(), Roles: m.GetRoles(), Grants: grants}, nil
}

// withPrincipal runs the rest of a call as m.
func withPrincipal(ctx context.Context, m *interservicev1.Principal) (context.Context, error) {
	p, err := principalFromProto(m)
	if err != nil {
		return ctx, err
	}
	return auth.WithPrincipal(ctx, p), nil
}

// AuthHandler serves AuthInternalService with the process's authenticator.
type AuthHandler struct {
	Authn *auth.Authenticator
}

var _ interservicev1connect.AuthInternalServiceHandler = AuthHandler{}

func (h AuthHandler) Authenticate(ctx context.Context, req *connect.Request[interservicev1.AuthenticateRequest]) (*connect.Response[interservicev1.AuthenticateResponse], error) {
	p, err := h.Authn.Authenticate(ctx, req.Msg.GetBearer())
	if err != nil {
		return nil, err
	}
	m, err := principalToProto(p)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.AuthenticateResponse{Principal: m}), nil
}

// JobsHandler serves JobsInternalService with the jobs service.
type JobsHandler struct {
	Jobs *job.Service
}

var _ interservicev1connect.JobsInternalServiceHandler = JobsHandler{}

func (h JobsHandler) GetJob(ctx context.Context, req *connect.Request[interservicev1.GetJobRequest]) (*connect.Response[interservicev1.GetJobResponse], error) {
	j, err := h.Jobs.Get(ctx, req.Msg.GetId(), req.Msg.GetVersion())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.GetJobResponse{Job: j}), nil
}

// ExecutionsHandler serves ExecutionsInternalService with the executions
// service, its store and the agent registry.
type ExecutionsHandler struct {
	Executions *execution.Service
	Store      *execution.Store
	Registry   *registry.Registry
}

var _ interservicev1connect.ExecutionsInternalServiceHandler = ExecutionsHandler{}

func (h ExecutionsHandler) ResolveTargets(ctx context.Context, req *connect.Request[interservicev1.ResolveTargetsRequest]) (*connect.Response[interservicev1.ResolveTargetsResponse], error) {
	agents, unmatched, err := h.Registry.ResolveTargets(ctx, req.Msg.GetTargets())
	if err != nil {
		return nil, err
	}
	out := &interservicev1.ResolveTargetsResponse{Agents: agents}
	for _, i := range unmatched {
		out.Unmatched = append(out.Unmatched, int32(i))
	}
	return connect.NewResponse(out), nil
}

func (h ExecutionsHandler) CheckHosts(ctx context.Context, req *connect.Request[interservicev1.CheckHostsRequest]) (*connect.Response[interservicev1.CheckHostsResponse], error) {
	ctx, err := withPrincipal(ctx, req.Msg.GetPrincipal())
	if err != nil {
		return nil, err
	}
	checks, id, err := h.Executions.CheckHosts(ctx, req.Msg.GetJob(), req.Msg.GetParameters())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.CheckHostsResponse{Checks: checks, ExecutionId: id}), nil
}

func (h ExecutionsHandler) PlanRun(ctx context.Context, req *connect.Request[interservicev1.PlanRunRequest]) (*connect.Response[interservicev1.PlanRunResponse], error) {
	ctx, err := withPrincipal(ctx, req.Msg.GetPrincipal())
	if err != nil {
		return nil, err
	}
	if err := h.Executions.PlanRun(ctx, req.Msg.GetJobId(), req.Msg.GetParameters(), req.Msg.GetTargets()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.PlanRunResponse{}), nil
}

func fireToRun(f *interservicev1.Fire) (schedule.Run, error) {
	if f == nil || f.GetScheduleId() == "" || f.GetSlot() == nil {
		return schedule.Run{}, apperr.InvalidField("fire", "needs a schedule id and a slot")
	}
	return schedule.Run{ScheduleID: f.GetScheduleId(), JobID: f.GetJobId(), Slot: f.GetSlot().AsTime(), Parameters: f.GetParameters(),
		Targets: f.GetTargets(), Queue: f.GetQueue(), As: f.GetAs()}, nil
}

func runToFire(r schedule.Run) *interservicev1.Fire {
	return &interservicev1.Fire{ScheduleId: r.ScheduleID, JobId: r.JobID, Slot: timestamppb.New(r.Slot), Parameters: r.Parameters,
		Targets: r.Targets, Queue: r.Queue, As: r.As}
}

func (h ExecutionsHandler) FireSchedule(ctx context.Context, req *connect.Request[interservicev1.FireScheduleRequest]) (*connect.Response[interservicev1.FireScheduleResponse], error) {
	r, err := fireToRun(req.Msg.GetFire())
	if err != nil {
		return nil, err
	}
	id, err := h.Executions.FireSchedule(ctx, r)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.FireScheduleResponse{ExecutionId: id}), nil
}

func (h ExecutionsHandler) FiredExecution(ctx context.Context, req *connect.Request[interservicev1.FiredExecutionRequest]) (*connect.Response[interservicev1.FiredExecutionResponse], error) {
	r, err := fireToRun(req.Msg.GetFire())
	if err != nil {
		return nil, err
	}
	id, err := h.Executions.FiredExecution(ctx, r)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.FiredExecutionResponse{ExecutionId: id}), nil
}

func (h ExecutionsHandler) ScheduleRunning(ctx context.Context, req *connect.Request[interservicev1.ScheduleRunningRequest]) (*connect.Response[interservicev1.ScheduleRunningResponse], error) {
	running, err := h.Executions.ScheduleRunning(ctx, req.Msg.GetScheduleId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.ScheduleRunningResponse{Running: running}), nil
}

func (h ExecutionsHandler) JobLabels(ctx context.Context, req *connect.Request[interservicev1.JobLabelsRequest]) (*connect.Response[interservicev1.JobLabelsResponse], error) {
	labels, err := h.Executions.JobLabels(ctx, req.Msg.GetJobId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.JobLabelsResponse{Labels: labels}), nil
}

func timeOrNil(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

func (h ExecutionsHandler) ExecutionFacts(ctx context.Context, req *connect.Request[interservicev1.ExecutionFactsRequest]) (*connect.Response[interservicev1.ExecutionFactsResponse], error) {
	from, to := req.Msg.GetFrom().AsTime(), req.Msg.GetTo().AsTime()
	out := &interservicev1.ExecutionFactsResponse{}
	if req.Msg.GetRuns() {
		runs, err := h.Store.Runs(ctx, from, to)
		if err != nil {
			return nil, err
		}
		for _, r := range runs {
			out.Executions = append(out.Executions, &interservicev1.ExecutionFact{Id: r.ID, JobName: r.JobName, CreatedBy: r.CreatedBy, Status: r.Status,
				CreatedAt: timestamppb.New(r.CreatedAt), Targets: r.Targets, DangerousReason: r.DangerousReason})
		}
		return connect.NewResponse(out), nil
	}
	sums, err := h.Store.Summaries(ctx, from, to)
	if err != nil {
		return nil, err
	}
	for _, e := range sums {
		out.Executions = append(out.Executions, &interservicev1.ExecutionFact{JobId: e.JobID, JobName: e.JobName, Status: e.Status,
			StartedAt: timeOrNil(e.StartedAt), FinishedAt: timeOrNil(e.FinishedAt)})
	}
	return connect.NewResponse(out), nil
}

func (h ExecutionsHandler) AgentCounts(ctx context.Context, _ *connect.Request[interservicev1.AgentCountsRequest]) (*connect.Response[interservicev1.AgentCountsResponse], error) {
	online, offline, err := h.Registry.AgentCounts(ctx)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&interservicev1.AgentCountsResponse{Online: online, Offline: offline}), nil
}

// SchedulingHandler serves SchedulingInternalService with the schedule store.
type SchedulingHandler struct {
	Store *schedule.Store
}

var _ interservicev1connect.SchedulingInternalServiceHandler = SchedulingHandler{}

func (h SchedulingHandler) FireStats(ctx context.Context, req *connect.Request[interservicev1.FireStatsRequest]) (*connect.Response[interservicev1.FireStatsResponse], error) {
	outcomes, lateness, err := h.Store.FireStats(ctx, req.Msg.GetFrom().AsTime(), req.Msg.GetTo().AsTime())
	if err != nil {
		return nil, fmt.Errorf("fire stats: %w", err)
	}
	out := &interservicev1.FireStatsResponse{Outcomes: outcomes}
	for _, d := range lateness {
		out.Lateness = append(out.Lateness, durationpb.New(d))
	}
	return connect.NewResponse(out), nil
}
