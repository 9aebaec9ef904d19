package remote

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/audit"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/job"
	"github.com/opsconductor/opsconductor/controlplane/schedule"
	interservicev1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/interservice/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/interservice/v1/interservicev1connect"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// Auth authenticates callers through the jobs service, which keeps the
// users and tokens. A token it accepted is trusted for CacheFor (default
// 5s) without asking again: a revoked token works at most that much
// longer in the other processes.
type Auth struct {
	client   interservicev1connect.AuthInternalServiceClient
	CacheFor time.Duration

	mu    sync.Mutex
	cache map[[32]byte]cachedPrincipal
}

type cachedPrincipal struct {
	p       auth.Principal
	expires time.Time
}

// NewAuth is the jobs service's authentication at s.
func NewAuth(s *Service) *Auth {
	return &Auth{client: interservicev1connect.NewAuthInternalServiceClient(s.HTTPClient(), s.URL, s.ClientOptions()...),
		CacheFor: 5 * time.Second, cache: map[[32]byte]cachedPrincipal{}}
}

var _ auth.PrincipalSource = (*Auth)(nil)

// Authenticate resolves bearer to its principal.
func (a *Auth) Authenticate(ctx context.Context, bearer string) (auth.Principal, error) {
	if bearer == "" {
		return auth.Principal{}, apperr.Unauthenticated("authentication required: send Authorization: Bearer TOKEN (an API token or a JWT)")
	}
	key := sha256.Sum256([]byte(bearer))
	now := time.Now()
	a.mu.Lock()
	c, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.p, nil
	}
	resp, err := a.client.Authenticate(ctx, connect.NewRequest(&interservicev1.AuthenticateRequest{Bearer: bearer}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			// An answer, not a failure: the interceptor records it as a refusal.
			return auth.Principal{}, apperr.Unauthenticated("%s", connectMessage(err))
		}
		return auth.Principal{}, err
	}
	p, err := principalFromProto(resp.Msg.GetPrincipal())
	if err != nil {
		return auth.Principal{}, err
	}
	a.mu.Lock()
	if len(a.cache) > 10000 { // many distinct tokens: start afresh rather than grow
		a.cache = map[[32]byte]cachedPrincipal{}
	}
	a.cache[key] = cachedPrincipal{p: p, expires: now.Add(a.CacheFor)}
	a.mu.Unlock()
	return p, nil
}

func connectMessage(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}

// Jobs reads jobs from the jobs service; it implements the executions
// service's JobReader. Ad-hoc job definitions are checked here, with the
// same rules and plugin list as the jobs service.
type Jobs struct {
	client  interservicev1connect.JobsInternalServiceClient
	plugins []string
}

// NewJobs is the jobs service at s; plugins are the external executor
// plugins actions may name (the server's --plugins).
func NewJobs(s *Service, plugins []string) *Jobs {
	return &Jobs{client: interservicev1connect.NewJobsInternalServiceClient(s.HTTPClient(), s.URL, s.ClientOptions()...), plugins: plugins}
}

// Get returns a job at version (0: the current one).
func (j *Jobs) Get(ctx context.Context, id string, version int64) (*opsconductorv1.Job, error) {
	resp, err := j.client.GetJob(ctx, connect.NewRequest(&interservicev1.GetJobRequest{Id: id, Version: version}))
	if err != nil {
		return nil, err
	}
	return resp.Msg.GetJob(), nil
}

// Check returns every problem of a job definition under prefix.
func (j *Jobs) Check(prefix string, def *opsconductorv1.Job) []apperr.Violation {
	return job.Validate(prefix, def, j.plugins...)
}

// Executions is the executions service (and agent registry) as the other
// services use it: the jobs service's TargetResolver and HostChecker, the
// scheduling service's Planner and Firer, the audit service's sources of
// execution and agent metrics.
type Executions struct {
	client interservicev1connect.ExecutionsInternalServiceClient
}

// NewExecutions is the executions service at s.
func NewExecutions(s *Service) *Executions {
	return &Executions{client: interservicev1connect.NewExecutionsInternalServiceClient(s.HTTPClient(), s.URL, s.ClientOptions()...)}
}

var (
	_ job.TargetResolver = (*Executions)(nil)
	_ job.HostChecker    = (*Executions)(nil)
	_ schedule.Planner   = (*Executions)(nil)
	_ schedule.Firer     = (*Executions)(nil)
)

// caller is the principal of ctx, for calls made on its behalf.
func caller(ctx context.Context) (*interservicev1.Principal, error) {
	p, ok := auth.PrincipalFrom(ctx)
	if !ok {
		return nil, apperr.Unauthenticated("no caller to act for")
	}
	return principalToProto(p)
}

func (e *Executions) ResolveTargets(ctx context.Context, targets []*opsconductorv1.Target) ([]*opsconductorv1.ResolvedAgent, []int, error) {
	resp, err := e.client.ResolveTargets(ctx, connect.NewRequest(&interservicev1.ResolveTargetsRequest{Targets: targets}))
	if err != nil {
		return nil, nil, err
	}
	unmatched := make([]int, len(resp.Msg.GetUnmatched()))
	for i, u := range resp.Msg.GetUnmatched() {
		unmatched[i] = int(u)
	}
	return resp.Msg.GetAgents(), unmatched, nil
}

func (e *Executions) CheckHosts(ctx context.Context, j *opsconductorv1.Job, parameters map[string]string) ([]*opsconductorv1.HostCheck, string, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, "", err
	}
	resp, err := e.client.CheckHosts(ctx, connect.NewRequest(&interservicev1.CheckHostsRequest{Job: j, Parameters: parameters, Principal: p}))
	if err != nil {
		return nil, "", err
	}
	return resp.Msg.GetChecks(), resp.Msg.GetExecutionId(), nil
}

func (e *Executions) PlanRun(ctx context.Context, jobID string, parameters map[string]string, targets []*opsconductorv1.Target) error {
	p, err := caller(ctx)
	if err != nil {
		return err
	}
	_, err = e.client.PlanRun(ctx, connect.NewRequest(&interservicev1.PlanRunRequest{JobId: jobID, Parameters: parameters, Targets: targets, Principal: p}))
	return err
}

func (e *Executions) FireSchedule(ctx context.Context, r schedule.Run) (string, error) {
	resp, err := e.client.FireSchedule(ctx, connect.NewRequest(&interservicev1.FireScheduleRequest{Fire: runToFire(r)}))
	if err != nil {
		return "", err
	}
	return resp.Msg.GetExecutionId(), nil
}

func (e *Executions) FiredExecution(ctx context.Context, r schedule.Run) (string, error) {
	resp, err := e.client.FiredExecution(ctx, connect.NewRequest(&interservicev1.FiredExecutionRequest{Fire: runToFire(r)}))
	if err != nil {
		return "", err
	}
	return resp.Msg.GetExecutionId(), nil
}

func (e *Executions) ScheduleRunning(ctx context.Context, scheduleID string) (bool, error) {
	resp, err := e.client.ScheduleRunning(ctx, connect.NewRequest(&interservicev1.ScheduleRunningRequest{ScheduleId: scheduleID}))
	if err != nil {
		return false, err
	}
	return resp.Msg.GetRunning(), nil
}

func (e *Executions) JobLabels(ctx context.Context, jobID string) (map[string]string, error) {
	resp, err := e.client.JobLabels(ctx, connect.NewRequest(&interservicev1.JobLabelsRequest{JobId: jobID}))
	if err != nil {
		return nil, err
	}
	return resp.Msg.GetLabels(), nil
}

func timePtr(t *timestamppb.Timestamp) *time.Time {
	if t == nil {
		return nil
	}
	v := t.AsTime()
	return &v
}

// Summaries are the executions created in [from, to), for the metrics.
func (e *Executions) Summaries(ctx context.Context, from, to time.Time) ([]audit.Execution, error) {
	resp, err := e.client.ExecutionFacts(ctx, connect.NewRequest(&interservicev1.ExecutionFactsRequest{From: timestamppb.New(from), To: timestamppb.New(to)}))
	if err != nil {
		return nil, err
	}
	out := make([]audit.Execution, len(resp.Msg.GetExecutions()))
	for i, f := range resp.Msg.GetExecutions() {
		out[i] = audit.Execution{JobID: f.GetJobId(), JobName: f.GetJobName(), Status: f.GetStatus(), StartedAt: timePtr(f.GetStartedAt()), FinishedAt: timePtr(f.GetFinishedAt())}
	}
	return out, nil
}

// Runs are the executions created in [from, to), for the compliance export.
func (e *Executions) Runs(ctx context.Context, from, to time.Time) ([]audit.Run, error) {
	resp, err := e.client.ExecutionFacts(ctx, connect.NewRequest(&interservicev1.ExecutionFactsRequest{From: timestamppb.New(from), To: timestamppb.New(to), Runs: true}))
	if err != nil {
		return nil, err
	}
	out := make([]audit.Run, len(resp.Msg.GetExecutions()))
	for i, f := range resp.Msg.GetExecutions() {
		out[i] = audit.Run{ID: f.GetId(), JobName: f.GetJobName(), CreatedBy: f.GetCreatedBy(), Status: f.GetStatus(), CreatedAt: f.GetCreatedAt().AsTime(),
			Targets: f.GetTargets(), DangerousReason: f.GetDangerousReason()}
	}
	return out, nil
}

// AgentCounts counts the enrolled agents online and offline.
func (e *Executions) AgentCounts(ctx context.Context) (online, offline int64, err error) {
	resp, err := e.client.AgentCounts(ctx, connect.NewRequest(&interservicev1.AgentCountsRequest{}))
	if err != nil {
		return 0, 0, err
	}
	return resp.Msg.GetOnline(), resp.Msg.GetOffline(), nil
}

// Scheduling is the scheduling service as the audit service reads it.
type Scheduling struct {
	client interservicev1connect.SchedulingInternalServiceClient
}

// NewScheduling is the scheduling service at s.
func NewScheduling(s *Service) *Scheduling {
	return &Scheduling{client: interservicev1connect.NewSchedulingInternalServiceClient(s.HTTPClient(), s.URL, s.ClientOptions()...)}
}

// FireStats counts the fires due in [from, to) by outcome, with lateness.
func (s *Scheduling) FireStats(ctx context.Context, from, to time.Time) (map[string]int64, []time.Duration, error) {
	resp, err := s.client.FireStats(ctx, connect.NewRequest(&interservicev1.FireStatsRequest{From: timestamppb.New(from), To: timestamppb.New(to)}))
	if err != nil {
		return nil, nil, err
	}
	late := make([]time.Duration, len(resp.Msg.GetLateness()))
	for i, d := range resp.Msg.GetLateness() {
		late[i] = d.AsDuration()
	}
	return resp.Msg.GetOutcomes(), late, nil
}
