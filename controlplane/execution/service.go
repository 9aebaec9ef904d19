// Package execution is the Job Execution service: it freezes a snapshot of
// a job, resolves its targets to one task per agent, and tracks the tasks
// and the execution through their states, with per-action results and
// output. Its state lives in the "executions" schema; the agent gateway
// (package dispatch) drives tasks through the Store.
package execution

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/correlation"
	"github.com/opsconductor/opsconductor/controlplane/credential"
	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/notify"
	"github.com/opsconductor/opsconductor/controlplane/params"
	"github.com/opsconductor/opsconductor/controlplane/policy"
	"github.com/opsconductor/opsconductor/controlplane/registry"
	"github.com/opsconductor/opsconductor/controlplane/secretbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// JobReader returns a job at a version (0: current). The jobs service
// implements it.
type JobReader interface {
	Get(ctx context.Context, id string, version int64) (*opsconductorv1.Job, error)
	// Check returns every problem of a job definition under prefix (for
	// ad-hoc runs, whose definitions are never saved).
	Check(prefix string, job *opsconductorv1.Job) []apperr.Violation
}

// TargetResolver maps targets to agents; the agent registry implements it.
type TargetResolver interface {
	ResolveTargets(ctx context.Context, targets []*opsconductorv1.Target) ([]*opsconductorv1.ResolvedAgent, []int, error)
}

// CommandChecker finds dangerous commands in a job; package safety's
// checker implements it.
type CommandChecker interface {
	// CheckJob returns the findings that block the job (empty: it may run).
	CheckJob(job *opsconductorv1.Job) []*opsconductorv1.SafetyFinding
}

// Config tunes the service.
type Config struct {
	// OutputLimit caps the stdout+stderr stored per task (default 1 MiB).
	OutputLimit int64
	// Protected selects agents (production, say) on which running a job
	// needs the executions:run-protected permission. Empty: none.
	Protected label.Selector
	// Nudge, when set, is called after a commit that wrote events (the
	// outbox relay's Nudge), so watchers hear of them at once.
	Nudge func()
	// Secrets seals secret parameter values for storage (required when a
	// job has secret parameters).
	Secrets *secretbox.Box
	// Credentials checks the stored credentials remote hosts name (nil:
	// none may be named).
	Credentials CredentialChecker
}

// CredentialChecker tells whether a stored credential exists and may be
// used for a host; the credential service implements it.
type CredentialChecker interface {
	Check(ctx context.Context, name, address string) error
}

// DefaultOutputLimit is the per-task output cap when none is configured.
const DefaultOutputLimit = 1 << 20

// Service implements opsconductorv1connect.ExecutionServiceHandler.
type Service struct {
	nudge    func() // tells the outbox relay events were written
	store    *Store
	jobs     JobReader
	resolver TargetResolver
	checker  CommandChecker
	hub      *notify.Hub
	cfg      Config
	logger   *zap.Logger
}

var _ opsconductorv1connect.ExecutionServiceHandler = (*Service)(nil)

// NewService builds the executions service. checker may be nil (no
// dangerous-command checks).
func NewService(st *Store, jobs JobReader, resolver TargetResolver, checker CommandChecker, hub *notify.Hub, logger *zap.Logger, cfg Config) *Service {
	if cfg.OutputLimit <= 0 {
		cfg.OutputLimit = DefaultOutputLimit
	}
	nudge := cfg.Nudge
	if nudge == nil {
		nudge = func() {}
	}
	return &Service{nudge: nudge, store: st, jobs: jobs, resolver: resolver, checker: checker, hub: hub, cfg: cfg, logger: logger.Named("execution")}
}

func (s *Service) ExecuteJob(ctx context.Context, req *connect.Request[opsconductorv1.ExecuteJobRequest]) (*connect.Response[opsconductorv1.ExecuteJobResponse], error) {
	e, plan, err := s.create(ctx, req.Msg.GetId(), 0, "id", startOpts{
		override: req.Msg.GetDangerousOverride(), policy: req.Msg.GetPolicy(), parameters: req.Msg.GetParameters(),
		idempotencyKey: cmp.Or(req.Msg.GetIdempotencyKey(), req.Header().Get("Idempotency-Key")), dryRun: req.Msg.GetDryRun(),
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.ExecuteJobResponse{Execution: e, Plan: plan}), nil
}

func (s *Service) CreateExecution(ctx context.Context, req *connect.Request[opsconductorv1.CreateExecutionRequest]) (*connect.Response[opsconductorv1.CreateExecutionResponse], error) {
	opts := startOpts{
		override: req.Msg.GetDangerousOverride(), policy: req.Msg.GetPolicy(), parameters: req.Msg.GetParameters(),
		idempotencyKey: cmp.Or(req.Msg.GetIdempotencyKey(), req.Header().Get("Idempotency-Key")), dryRun: req.Msg.GetDryRun(),
	}
	opts.targets = req.Msg.GetTargets()
	var e *opsconductorv1.Execution
	var plan *opsconductorv1.ExecutionPlan
	var err error
	if inline := req.Msg.GetInlineJob(); inline != nil {
		if req.Msg.GetJobId() != "" {
			return nil, apperr.InvalidField("inline_job", "set either job_id or inline_job")
		}
		e, plan, err = s.adhoc(ctx, inline, opts)
	} else {
		e, plan, err = s.create(ctx, req.Msg.GetJobId(), req.Msg.GetJobVersion(), "job_id", opts)
	}
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.CreateExecutionResponse{Execution: e, Plan: plan}), nil
}

// adhoc runs a job definition that is not saved (opsconductor exec).
func (s *Service) adhoc(ctx context.Context, job *opsconductorv1.Job, opts startOpts) (*opsconductorv1.Execution, *opsconductorv1.ExecutionPlan, error) {
	job = proto.Clone(job).(*opsconductorv1.Job)
	job.Id, job.Version = "", 0
	if job.GetName() == "" {
		job.Name = "adhoc"
	}
	if vs := s.jobs.Check("inline_job", job); len(vs) > 0 {
		return nil, nil, apperr.Invalid("inline job", vs)
	}
	agents, err := s.resolve(ctx, job)
	if err != nil {
		return nil, nil, err
	}
	return s.start(ctx, job, agents, opts)
}

// startOpts are what a request adds to the job: an override of the
// dangerous-command check, policy overrides, an idempotency key, and the
// execution a retry retries.
type startOpts struct {
	targets        []*opsconductorv1.Target // instead of the job's
	dryRun         bool
	parameters     map[string]string
	override       *opsconductorv1.DangerousOverride
	policy         *opsconductorv1.ExecutionPolicy
	idempotencyKey string
	parentID       string
	trigger        string // "" means "api"
	scheduleID     string
}

func (s *Service) create(ctx context.Context, jobID string, version int64, idField string, opts startOpts) (*opsconductorv1.Execution, *opsconductorv1.ExecutionPlan, error) {
	if jobID == "" {
		return nil, nil, apperr.InvalidField(idField, "must not be empty")
	}
	job, err := s.jobs.Get(ctx, jobID, version)
	if err != nil {
		return nil, nil, err
	}
	if len(opts.targets) > 0 {
		// The override is part of what runs: check it like the job's own,
		// and keep it in the snapshot.
		job.Targets = opts.targets
		if vs := s.jobs.Check("job", job); len(vs) > 0 {
			for i := range vs {
				vs[i].Field = strings.Replace(vs[i].Field, "job.targets", "targets", 1)
			}
			return nil, nil, apperr.Invalid("targets", vs)
		}
	}
	agents, err := s.resolve(ctx, job)
	if err != nil {
		return nil, nil, err
	}
	return s.start(ctx, job, agents, opts)
}

// resolve maps a job's targets to agents; a target matching none is an
// error naming it.
func (s *Service) resolve(ctx context.Context, job *opsconductorv1.Job) ([]*opsconductorv1.ResolvedAgent, error) {
	agents, unmatched, err := s.resolver.ResolveTargets(ctx, job.GetTargets())
	if err != nil {
		return nil, fmt.Errorf("resolve targets: %w", err)
	}
	if len(unmatched) > 0 {
		var vs []apperr.Violation
		for _, i := range unmatched {
			vs = append(vs, apperr.Violation{Field: fmt.Sprintf("job.targets[%d]", i), Description: registry.Unmatched(job.GetTargets()[i])})
		}
		return nil, &apperr.Error{Kind: apperr.KindFailedPrecondition, Message: "job " + job.GetName() + " cannot run: " + apperr.Invalid("targets", vs).Error(), Violations: vs}
	}
	return agents, nil
}

// start checks that principal may run job on agents (scopes, protected
// agents, dangerous commands) and stores the execution with a task per
// agent. parentID links a retry to the execution it retries.
func (s *Service) start(ctx context.Context, job *opsconductorv1.Job, agents []*opsconductorv1.ResolvedAgent, opts startOpts) (*opsconductorv1.Execution, *opsconductorv1.ExecutionPlan, error) {
	// Authorisation first: what follows says things about agents and
	// credentials a caller without the right should not learn.
	if err := s.mayRun(ctx, job, agents); err != nil {
		return nil, nil, err
	}
	if err := checkPlugins(job, agents); err != nil {
		return nil, nil, err
	}
	if err := s.checkCredentials(ctx, job, agents); err != nil {
		return nil, nil, err
	}
	if opts.dryRun {
		plan, err := s.plan(ctx, job, agents, opts)
		return nil, plan, err
	}
	e, err := s.run(ctx, job, agents, opts)
	return e, nil, err
}

// checkPlugins refuses a run on agents that reported their executors and
// lack one the job's actions need: the task would only fail there. Agents
// that never reported (older versions) are not checked.
//
// A remote host keeps only the jump agents that have every plugin its
// actions need (an action without one runs through the host's transport);
// none left is refused the same way.
func checkPlugins(job *opsconductorv1.Job, agents []*opsconductorv1.ResolvedAgent) error {
	lacks := func(a *opsconductorv1.ResolvedAgent, fallback string) (int, string) {
		if len(a.GetPlugins()) == 0 {
			return -1, ""
		}
		for i, act := range job.GetActions() {
			if need := cmp.Or(act.GetPlugin(), fallback); !slices.Contains(a.GetPlugins(), need) {
				return i, need
			}
		}
		return -1, ""
	}
	for _, a := range agents {
		r := a.GetRemote()
		if r == nil {
			if i, need := lacks(a, "shell"); i >= 0 {
				return apperr.FailedPrecondition("agent %s cannot run job.actions[%d]: it has no plugin %q (it has %s)",
					a.GetName(), i, need, strings.Join(a.GetPlugins(), ", "))
			}
			continue
		}
		var able []*opsconductorv1.ResolvedAgent
		i, need := -1, ""
		for _, j := range a.GetJumpAgents() {
			if ji, jneed := lacks(j, r.GetTransport()); ji >= 0 {
				i, need = ji, jneed
				continue
			}
			able = append(able, j)
		}
		if len(able) == 0 {
			return apperr.FailedPrecondition("no jump agent for host %s can run job.actions[%d]: none has plugin %q", a.GetName(), i, need)
		}
		a.JumpAgents = able
	}
	return nil
}

// checkCredentials refuses a run whose remote hosts name a stored
// credential that does not exist or may not be used for them: better now
// than as a failed task.
func (s *Service) checkCredentials(ctx context.Context, job *opsconductorv1.Job, agents []*opsconductorv1.ResolvedAgent) error {
	for _, a := range agents {
		r := a.GetRemote()
		if r == nil || r.GetCredential() == "" || strings.HasPrefix(r.GetCredential(), "agent:") {
			continue
		}
		if s.cfg.Credentials == nil {
			return apperr.FailedPrecondition("host %s names credential %q but this server has no credential store", r.GetName(), r.GetCredential())
		}
		if err := s.cfg.Credentials.Check(ctx, r.GetCredential(), r.GetAddress()); err != nil {
			return err
		}
		// The settings it would be used with, as the agent gets them:
		// the target's options under each action's own spec.
		for _, act := range job.GetActions() {
			spec := maps.Clone(r.GetOptions())
			if spec == nil {
				spec = map[string]string{}
			}
			maps.Copy(spec, act.GetSpec())
			if err := credential.CheckUse(r.GetCredential(), r.GetTransport(), spec); err != nil {
				return err
			}
		}
	}
	return nil
}

// plan is what run would do, without doing it: targets in batch order,
// actions as they would run (secrets masked) and the safety findings.
func (s *Service) plan(ctx context.Context, job *opsconductorv1.Job, agents []*opsconductorv1.ResolvedAgent, opts startOpts) (*opsconductorv1.ExecutionPlan, error) {
	pol, merged, vs := policy.Resolve("policy", job.GetPolicy(), opts.policy)
	values, secrets, pvs := params.Resolve(job.GetParameters(), opts.parameters)
	if vs = append(vs, pvs...); len(vs) > 0 {
		return nil, apperr.Invalid("execution", vs)
	}
	rendered := params.Render(job, values, secrets)
	plan := &opsconductorv1.ExecutionPlan{JobName: job.GetName(), Policy: merged, Actions: rendered.GetActions(), Parameters: map[string]string{}}
	for k, v := range values {
		if slices.Contains(secrets, k) {
			v = params.Mask
		}
		plan.Parameters[k] = v
	}
	size := len(agents)
	if pol.BatchSize > 0 {
		size = pol.BatchSize
	}
	for i := 0; i < len(agents); i += max(size, 1) {
		plan.Batches = append(plan.Batches, &opsconductorv1.PlanBatch{Number: int32(len(plan.Batches) + 1), Agents: agents[i:min(i+size, len(agents))]})
	}
	if s.checker != nil {
		plan.SafetyFindings = s.checker.CheckJob(rendered)
	}
	return plan, nil
}

// mayRun checks the caller may run job on agents: its scopes and the
// protected agents.
func (s *Service) mayRun(ctx context.Context, job *opsconductorv1.Job, agents []*opsconductorv1.ResolvedAgent) error {
	principal, _ := auth.PrincipalFrom(ctx)
	// A remote host is reached through its jump agents: the caller needs
	// the right on the host's labels and on every jump agent's.
	var agentLabels []map[string]string
	for _, a := range withJumpAgents(agents) {
		agentLabels = append(agentLabels, a.GetLabels())
	}
	if !principal.CanOn(auth.PermExecutionsRun, job.GetLabels(), agentLabels) {
		return apperr.PermissionDenied("%s may not run job %s on its %d targets: no role grants %s for the job's labels and every target's",
			principal.Name, job.GetName(), len(agents), auth.PermExecutionsRun)
	}
	if len(s.cfg.Protected) > 0 && !principal.Can(auth.PermExecutionsRunProtected) {
		for _, a := range withJumpAgents(agents) {
			if s.cfg.Protected.Matches(a.GetLabels()) {
				return apperr.PermissionDenied("%s may not run jobs on protected agents (%s matches %s); ask for permission %s",
					principal.Name, a.GetName(), s.cfg.Protected, auth.PermExecutionsRunProtected)
			}
		}
	}
	return nil
}

// withJumpAgents is agents followed by the jump agents of its remote hosts.
func withJumpAgents(agents []*opsconductorv1.ResolvedAgent) []*opsconductorv1.ResolvedAgent {
	out := slices.Clone(agents)
	for _, a := range agents {
		out = append(out, a.GetJumpAgents()...)
	}
	return out
}

// run stores the execution; start, its only caller, has checked the
// caller's rights, plugins and credentials.
func (s *Service) run(ctx context.Context, job *opsconductorv1.Job, agents []*opsconductorv1.ResolvedAgent, opts startOpts) (*opsconductorv1.Execution, error) {
	principal, _ := auth.PrincipalFrom(ctx)
	override := opts.override
	if override.GetAllow() && strings.TrimSpace(override.GetReason()) == "" {
		return nil, apperr.InvalidField("dangerous_override.reason", "is required with allow: say why this is safe to run (it is audited)")
	}
	pol, merged, vs := policy.Resolve("policy", job.GetPolicy(), opts.policy)
	values, secrets, pvs := params.Resolve(job.GetParameters(), opts.parameters)
	if vs = append(vs, pvs...); len(vs) > 0 {
		return nil, apperr.Invalid("execution", vs)
	}
	if len(opts.idempotencyKey) > 200 {
		return nil, apperr.InvalidField("idempotency_key", "must be at most 200 characters")
	}
	key := ""
	if opts.idempotencyKey != "" {
		// Keys are the caller's own: two callers cannot collide.
		key = principal.Name + "/" + opts.idempotencyKey
		if id, err := s.store.ExecutionIDByIdempotencyKey(ctx, key); err == nil {
			return s.get(ctx, id)
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	if override.GetAllow() && !principal.Can(auth.PermExecutionsDanger) {
		return nil, apperr.PermissionDenied("%s lacks permission %s to override the dangerous-command check", principal.Name, auth.PermExecutionsDanger)
	}
	if s.checker != nil {
		if findings := s.checker.CheckJob(params.Render(job, values, secrets)); len(findings) > 0 && !override.GetAllow() {
			return nil, dangerousError(job.GetName(), findings)
		}
	}
	snapshot, err := protojson.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("encode job snapshot: %w", err)
	}
	policyJSON, err := protojson.Marshal(merged)
	if err != nil {
		return nil, fmt.Errorf("encode policy: %w", err)
	}
	id := uuid.Must(uuid.NewV7()).String()
	if len(secrets) > 0 && s.cfg.Secrets == nil {
		return nil, fmt.Errorf("job %s has secret parameters but no secret key is configured", job.GetName())
	}
	paramsJSON, err := params.Seal(s.cfg.Secrets, id, values, secrets)
	if err != nil {
		return nil, fmt.Errorf("encode parameters: %w", err)
	}
	rec := ExecutionRecord{
		ID:             id,
		Parameters:     paramsJSON,
		JobID:          job.GetId(),
		JobName:        job.GetName(),
		JobVersion:     job.GetVersion(),
		Snapshot:       snapshot,
		Status:         ExecQueued,
		CorrelationID:  correlation.ID(ctx),
		CreatedBy:      principal.Name,
		ParentID:       opts.parentID,
		Policy:         policyJSON,
		IdempotencyKey: key,
		BatchSize:      pol.BatchSize,
		OnAgentLoss:    pol.OnAgentLoss,
		BatchPause:     pol.BatchPause,
		Timeout:        pol.Timeout,
		Exclusive:      pol.Exclusive,
		Trigger:        opts.trigger,
		ScheduleID:     opts.scheduleID,
		TaskTimeout:    pol.TaskTimeout,
		CreatedAt:      time.Now().UTC().Truncate(time.Microsecond),
	}
	if pol.MaxParallel.Set() {
		rec.MaxParallel = pol.MaxParallel.Of(len(agents))
	}
	if pol.MaxFailures.Set() {
		n := pol.MaxFailures.Of(len(agents))
		rec.MaxFailures = &n
	}
	if override.GetAllow() {
		rec.AllowDangerous, rec.DangerousReason = true, override.GetReason()
		s.logger.Warn("dangerous-command check overridden", zap.String("execution_id", rec.ID), zap.String("job_id", rec.JobID),
			zap.String("principal", principal.Name), zap.String("reason", rec.DangerousReason), zap.String("correlation_id", rec.CorrelationID))
	}
	tasks := make([]TaskRecord, len(agents))
	var keys []string
	for i, a := range agents {
		tasks[i] = TaskRecord{ID: uuid.Must(uuid.NewV7()).String(), AgentID: a.GetAgentId(), AgentName: a.GetName(), OutputLimit: s.cfg.OutputLimit,
			QueueTimeout: pol.QueueTimeout}
		r := a.GetRemote()
		if r == nil {
			keys = append(keys, notify.AgentKey(a.GetAgentId()))
			continue
		}
		endpoint, err := protojson.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encode remote host %s: %w", r.GetName(), err)
		}
		tasks[i].AgentName, tasks[i].Host, tasks[i].Remote = "", r.GetName(), endpoint
		tasks[i].TargetKey = fmt.Sprintf("remote:%s:%d", r.GetAddress(), r.GetPort())
		for _, j := range a.GetJumpAgents() {
			tasks[i].Candidates = append(tasks[i].Candidates, Candidate{AgentID: j.GetAgentId(), AgentName: j.GetName()})
			keys = append(keys, notify.AgentKey(j.GetAgentId()))
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	existing, err := s.store.ExecutionCreate(ctx, rec, tasks, pol.Concurrency, func() { s.hub.Publish(context.WithoutCancel(ctx), keys...) })
	var busy *BusyError
	switch {
	case errors.As(err, &busy):
		return nil, apperr.FailedPrecondition("job %s has execution %s still running and its concurrency policy is skip", job.GetName(), busy.Running)
	case errors.Is(err, store.ErrConflict) && key != "":
		// The same key raced us; its execution wins.
		id, lerr := s.store.ExecutionIDByIdempotencyKey(ctx, key)
		if lerr != nil {
			return nil, lerr
		}
		return s.get(ctx, id)
	case err != nil:
		return nil, err
	case existing != "":
		return s.get(ctx, existing)
	}
	s.logger.Info("execution created", zap.String("execution_id", rec.ID), zap.String("job_id", rec.JobID),
		zap.Int64("job_version", rec.JobVersion), zap.Int("tasks", len(tasks)), zap.String("correlation_id", rec.CorrelationID))
	return s.get(ctx, rec.ID)
}

// dangerousError refuses a job the safety checker blocks, naming each
// finding by its field.
func dangerousError(job string, findings []*opsconductorv1.SafetyFinding) error {
	vs := make([]apperr.Violation, len(findings))
	for i, f := range findings {
		vs[i] = apperr.Violation{Field: f.GetField(), Description: fmt.Sprintf("%s (%s, rule %s): %s", f.GetVerdict(), f.GetSeverity(), f.GetRule(), f.GetReason())}
	}
	e := apperr.Invalid("job", vs).(*apperr.Error)
	e.Kind = apperr.KindFailedPrecondition
	e.Message = "job " + job + " runs commands the safety checker blocks; fix them, or override with a reason (permission executions:dangerous): " +
		strings.TrimPrefix(e.Message, "invalid job: ")
	return e
}

// retryable are the task outcomes a retry runs again.
var retryable = map[string]bool{
	TaskFailed: true, TaskTimedOut: true, TaskLost: true, TaskCancelled: true, TaskExpired: true, TaskSkipped: true, TaskUnknown: true,
}

func (s *Service) RetryExecution(ctx context.Context, req *connect.Request[opsconductorv1.RetryExecutionRequest]) (*connect.Response[opsconductorv1.RetryExecutionResponse], error) {
	override := req.Msg.GetDangerousOverride()
	if override.GetAllow() && strings.TrimSpace(override.GetReason()) == "" {
		return nil, apperr.InvalidField("dangerous_override.reason", "is required with allow: say why this is safe to run (it is audited)")
	}
	parent, tasks, err := s.load(ctx, req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	if !isFinal(parent.Status) {
		return nil, apperr.FailedPrecondition("execution %s is still %s: retry it once it has ended (or cancel it)", parent.ID, parent.Status)
	}
	var targets []*opsconductorv1.Target
	for _, t := range tasks {
		if req.Msg.GetAllTargets() || retryable[t.Status] {
			target, err := taskTarget(t)
			if err != nil {
				return nil, err
			}
			targets = append(targets, target)
		}
	}
	if len(targets) == 0 {
		return nil, apperr.FailedPrecondition("every target of execution %s succeeded: nothing to retry (all_targets retries them all)", parent.ID)
	}
	job := &opsconductorv1.Job{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(parent.Snapshot, job); err != nil {
		return nil, fmt.Errorf("decode snapshot of execution %s: %w", parent.ID, err)
	}
	agents, unmatched, err := s.resolver.ResolveTargets(ctx, targets)
	if err != nil {
		return nil, fmt.Errorf("resolve targets: %w", err)
	}
	if len(unmatched) > 0 {
		var gone []string
		for _, i := range unmatched {
			gone = append(gone, registry.Unmatched(targets[i]))
		}
		return nil, apperr.FailedPrecondition("cannot retry: %s", strings.Join(gone, "; "))
	}
	// The retry reuses the parent's values, secret ones included.
	var values map[string]string
	if s.cfg.Secrets != nil {
		if values, _, err = params.Open(s.cfg.Secrets, parent.ID, parent.Parameters); err != nil {
			return nil, err
		}
	}
	// And the parent's merged policy: overrides given at its run (a
	// batch size, say) hold for the retry too.
	var pol *opsconductorv1.ExecutionPolicy
	if len(parent.Policy) > 0 {
		pol = &opsconductorv1.ExecutionPolicy{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(parent.Policy, pol); err != nil {
			return nil, fmt.Errorf("decode policy of execution %s: %w", parent.ID, err)
		}
	}
	// Through start, like a first run: rights, plugins and credentials are
	// checked again (they may have changed since).
	e, _, err := s.start(ctx, job, agents, startOpts{override: override, parentID: parent.ID, parameters: values, policy: pol, trigger: "retry"})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.RetryExecutionResponse{Execution: e}), nil
}

// taskTarget is the target that runs a task again: its agent, or its
// remote host through the same jump agents.
func taskTarget(t TaskRecord) (*opsconductorv1.Target, error) {
	if len(t.Remote) == 0 {
		return &opsconductorv1.Target{AgentId: t.AgentID}, nil
	}
	r := &opsconductorv1.RemoteEndpoint{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(t.Remote, r); err != nil {
		return nil, fmt.Errorf("decode remote host of task %s: %w", t.ID, err)
	}
	return &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{
		Hosts: []*opsconductorv1.RemoteHost{{Address: r.GetAddress(), Port: r.GetPort(), Name: r.GetName(), User: r.GetUser(), Credential: r.GetCredential()}},
		Via:   r.GetVia(), Transport: r.GetTransport(), Options: r.GetOptions(), Labels: r.GetLabels(),
	}}, nil
}

// mayTouch checks the caller may run the execution's job on its targets
// (those still enrolled), as starting it required.
func (s *Service) mayTouch(ctx context.Context, id string) error {
	e, err := s.store.ExecutionGet(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return apperr.NotFound("execution %s not found", id)
	}
	if err != nil {
		return err
	}
	tasks, err := s.store.TaskListByExecution(ctx, id)
	if err != nil {
		return err
	}
	job := &opsconductorv1.Job{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(e.Snapshot, job); err != nil {
		return fmt.Errorf("decode snapshot of execution %s: %w", id, err)
	}
	targets := make([]*opsconductorv1.Target, len(tasks))
	for i, t := range tasks {
		if targets[i], err = taskTarget(t); err != nil {
			return err
		}
	}
	agents, _, err := s.resolver.ResolveTargets(ctx, targets)
	if err != nil {
		return fmt.Errorf("resolve targets of execution %s: %w", id, err)
	}
	return s.mayRun(ctx, job, agents)
}

func (s *Service) CancelExecution(ctx context.Context, req *connect.Request[opsconductorv1.CancelExecutionRequest]) (*connect.Response[opsconductorv1.CancelExecutionResponse], error) {
	id := req.Msg.GetId()
	if id == "" {
		return nil, apperr.InvalidField("id", "must not be empty")
	}
	// Cancelling needs the same right as running: the job's and every
	// target's scope, and protected agents.
	if err := s.mayTouch(ctx, id); err != nil {
		return nil, err
	}
	p, _ := auth.PrincipalFrom(ctx)
	agents, err := s.store.ExecutionCancel(ctx, id, p.Name, req.Msg.GetReason(), s.nudge)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, apperr.NotFound("execution %s not found", id)
	case errors.Is(err, ErrFinished):
		return nil, apperr.FailedPrecondition("%v: there is nothing left to cancel", err)
	case err != nil:
		return nil, err
	}
	keys := make([]string, len(agents))
	for i, a := range agents {
		keys[i] = notify.AgentKey(a)
	}
	// Waiting polls of the agents return the cancel at once.
	s.hub.Publish(context.WithoutCancel(ctx), keys...)
	s.logger.Info("execution cancelled", zap.String("execution_id", id), zap.String("by", p.Name), zap.Int("running_tasks", len(agents)),
		zap.String("reason", req.Msg.GetReason()))
	e, err := s.get(ctx, id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.CancelExecutionResponse{Execution: e}), nil
}

func (s *Service) ListExecutions(ctx context.Context, req *connect.Request[opsconductorv1.ListExecutionsRequest]) (*connect.Response[opsconductorv1.ListExecutionsResponse], error) {
	m := req.Msg
	size := int(m.GetPageSize())
	switch {
	case size == 0:
		size = 50
	case size < 0 || size > 500:
		return nil, apperr.InvalidField("page_size", "must be between 1 and 500")
	}
	switch m.GetStatus() {
	case "", ExecQueued, ExecRunning, ExecSucceeded, ExecFailed, ExecCancelled:
	default:
		return nil, apperr.InvalidField("status", "must be queued, running, succeeded, failed or cancelled, not %q", m.GetStatus())
	}
	p := ListParams{JobID: m.GetJobId(), Status: m.GetStatus(), Limit: size, PageToken: m.GetPageToken()}
	if m.GetSince() != nil {
		p.Since = m.GetSince().AsTime()
	}
	if m.GetUntil() != nil {
		p.Until = m.GetUntil().AsTime()
	}
	recs, counts, next, err := s.store.ExecutionList(ctx, p)
	if errors.Is(err, ErrBadPageToken) {
		return nil, apperr.InvalidField("page_token", "is not a token from a previous page")
	}
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListExecutionsResponse{NextPageToken: next}
	for i, rec := range recs {
		e, err := toExecution(rec, nil)
		if err != nil {
			return nil, err
		}
		e.JobSnapshot, e.TaskCounts = nil, counts[i]
		resp.Executions = append(resp.Executions, e)
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) GetExecution(ctx context.Context, req *connect.Request[opsconductorv1.GetExecutionRequest]) (*connect.Response[opsconductorv1.GetExecutionResponse], error) {
	e, err := s.get(ctx, req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.GetExecutionResponse{Execution: e}), nil
}

func (s *Service) load(ctx context.Context, id string) (ExecutionRecord, []TaskRecord, error) {
	if id == "" {
		return ExecutionRecord{}, nil, apperr.InvalidField("id", "must not be empty")
	}
	rec, err := s.store.ExecutionGet(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return ExecutionRecord{}, nil, apperr.NotFound("execution %s not found", id)
	}
	if err != nil {
		return ExecutionRecord{}, nil, err
	}
	tasks, err := s.store.TaskListByExecution(ctx, id)
	if err != nil {
		return ExecutionRecord{}, nil, err
	}
	return rec, tasks, nil
}

func (s *Service) get(ctx context.Context, id string) (*opsconductorv1.Execution, error) {
	rec, tasks, err := s.load(ctx, id)
	if err != nil {
		return nil, err
	}
	return toExecution(rec, tasks)
}

func toExecution(rec ExecutionRecord, tasks []TaskRecord) (*opsconductorv1.Execution, error) {
	job := &opsconductorv1.Job{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(rec.Snapshot, job); err != nil {
		return nil, fmt.Errorf("decode snapshot of execution %s: %w", rec.ID, err)
	}
	e := &opsconductorv1.Execution{
		Id: rec.ID, JobId: rec.JobID, JobName: rec.JobName, JobVersion: rec.JobVersion, Status: rec.Status,
		CorrelationId: rec.CorrelationID, CreateTime: timestamppb.New(rec.CreatedAt), CreatedBy: rec.CreatedBy,
		CancelledBy: rec.CancelledBy, CancelReason: rec.CancelReason, ParentId: rec.ParentID,
		Reason: rec.Reason, WaitingFor: rec.WaitingFor, Trigger: cmp.Or(rec.Trigger, "api"), ScheduleId: rec.ScheduleID,
		StartTime: ts(rec.StartedAt), EndTime: ts(rec.FinishedAt), JobSnapshot: job,
		TaskCounts: map[string]int32{},
	}
	e.Parameters = params.Display(rec.Parameters)
	if len(rec.Policy) > 0 {
		e.Policy = &opsconductorv1.ExecutionPolicy{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(rec.Policy, e.Policy); err != nil {
			return nil, fmt.Errorf("decode policy of execution %s: %w", rec.ID, err)
		}
	}
	if rec.AllowDangerous {
		e.DangerousOverride = &opsconductorv1.DangerousOverride{Allow: true, Reason: rec.DangerousReason}
	}
	for _, t := range tasks {
		e.TaskCounts[t.Status]++
		e.Tasks = append(e.Tasks, toTask(t))
	}
	return e, nil
}

func toTask(t TaskRecord) *opsconductorv1.Task {
	return &opsconductorv1.Task{Id: t.ID, AgentId: t.AgentID, AgentName: t.AgentName, Status: t.Status, Error: t.Error,
		StartTime: ts(t.StartedAt), EndTime: ts(t.FinishedAt), Host: t.Host}
}

func ts(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

func (s *Service) GetExecutionResults(ctx context.Context, req *connect.Request[opsconductorv1.GetExecutionResultsRequest]) (*connect.Response[opsconductorv1.GetExecutionResultsResponse], error) {
	rec, tasks, err := s.load(ctx, req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	e, err := toExecution(rec, tasks)
	if err != nil {
		return nil, err
	}
	results, err := s.store.ActionResultsByExecution(ctx, rec.ID)
	if err != nil {
		return nil, err
	}
	output, err := s.store.OutputByExecution(ctx, rec.ID)
	if err != nil {
		return nil, err
	}
	offset, limit := req.Msg.GetOutputOffset(), req.Msg.GetOutputLimit()
	switch {
	case offset < 0:
		return nil, apperr.InvalidField("output_offset", "must not be negative")
	case limit < 0 || limit > 4<<20:
		return nil, apperr.InvalidField("output_limit", "must be between 1 and 4194304 bytes (0: 64 KiB)")
	case limit == 0:
		limit = 64 << 10
	}
	resp := &opsconductorv1.GetExecutionResultsResponse{Execution: e}
	for _, t := range tasks {
		if id := req.Msg.GetTaskId(); id != "" && t.ID != id {
			continue
		}
		tr := &opsconductorv1.TaskResult{Task: toTask(t), OutputTruncated: t.OutputTruncated, OutputLimitBytes: t.OutputLimit}
		byIndex := map[int]*opsconductorv1.ActionResult{}
		for _, r := range results[t.ID] {
			ar := &opsconductorv1.ActionResult{Index: int32(r.Index), Name: r.Name, Status: r.Status, ExitCode: int32(r.ExitCode),
				Error: r.Error, StartTime: ts(r.StartedAt), EndTime: ts(r.FinishedAt)}
			if ar.Attempts, err = decodeAttempts(r.Attempts); err != nil {
				return nil, fmt.Errorf("decode attempts of task %s: %w", t.ID, err)
			}
			byIndex[r.Index] = ar
			tr.Actions = append(tr.Actions, ar)
		}
		for _, c := range output[t.ID] {
			ar := byIndex[c.ActionIndex]
			if ar == nil { // output of a task still running, before its results
				ar = &opsconductorv1.ActionResult{Index: int32(c.ActionIndex), Status: TaskRunning}
				byIndex[c.ActionIndex] = ar
				tr.Actions = append(tr.Actions, ar)
			}
			if c.Stream == "stderr" {
				ar.Stderr += string(c.Data)
			} else {
				ar.Stdout += string(c.Data)
			}
		}
		for _, ar := range tr.Actions {
			// Output is bytes; the API's strings must be UTF-8: binary
			// output shows U+FFFD where it is not text.
			ar.Stdout, ar.Stderr = strings.ToValidUTF8(ar.Stdout, "\uFFFD"), strings.ToValidUTF8(ar.Stderr, "\uFFFD")
			ar.StdoutBytes, ar.StderrBytes = int64(len(ar.Stdout)), int64(len(ar.Stderr))
			var more1, more2 bool
			ar.Stdout, more1 = page(ar.Stdout, offset, limit)
			ar.Stderr, more2 = page(ar.Stderr, offset, limit)
			ar.OutputMore = more1 || more2
		}
		resp.Results = append(resp.Results, tr)
	}
	return connect.NewResponse(resp), nil
}

// page returns about limit bytes of s from offset, and whether more
// follows. Both ends move to character boundaries, so a page never splits
// a UTF-8 character (it may hold up to 3 bytes fewer than asked).
func page(s string, offset, limit int64) (string, bool) {
	n := int64(len(s))
	for offset < n && !utf8.RuneStart(s[offset]) {
		offset++
	}
	if offset >= n {
		return "", false
	}
	end := min(n, offset+limit)
	for end < n && end > offset && !utf8.RuneStart(s[end]) {
		end--
	}
	return s[offset:end], end < n
}

// watchRecheck bounds how long a watcher waits without a wake-up before it
// looks at the database again (a wake-up from another replica may be lost).
const watchRecheck = 2 * time.Second

func (s *Service) WatchExecution(ctx context.Context, req *connect.Request[opsconductorv1.WatchExecutionRequest], stream *connect.ServerStream[opsconductorv1.WatchExecutionResponse]) error {
	return s.Watch(ctx, req.Msg.GetId(), req.Msg.GetAfterSequence(), func(ev *opsconductorv1.ExecutionEvent) error {
		return stream.Send(&opsconductorv1.WatchExecutionResponse{Event: ev})
	})
}

// Watch sends the execution's events after sequence after, in order, each
// exactly once, then the ones still to come, and returns once the final
// status has been sent (or ctx ends). WatchExecution and the REST
// Server-Sent Events stream both use it.
func (s *Service) Watch(ctx context.Context, id string, after int64, send func(*opsconductorv1.ExecutionEvent) error) error {
	if _, _, err := s.load(ctx, id); err != nil {
		return err
	}
	wake, cancel := s.hub.Subscribe(notify.ExecutionKey(id))
	defer cancel()
	last := after
	const page = 500
	for {
		events, err := s.store.EventsAfter(ctx, id, last, page)
		if err != nil {
			return err
		}
		finished := false
		for _, ev := range events {
			if err := send(ev); err != nil {
				return err
			}
			last = ev.GetSequence()
			if ev.GetType() == "execution.status" && isFinal(ev.GetStatus()) {
				finished = true
			}
		}
		if len(events) == page {
			continue
		}
		if finished {
			return nil
		}
		if len(events) == 0 {
			rec, err := s.store.ExecutionGet(ctx, id)
			if err != nil {
				return err
			}
			if isFinal(rec.Status) {
				// The final status commits with its events: they may have
				// landed since the read above, so look once more. Nothing
				// left means the caller resumed after the final event.
				more, err := s.store.EventsAfter(ctx, id, last, page)
				if err != nil {
					return err
				}
				if len(more) == 0 {
					return nil
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-time.After(watchRecheck):
		}
	}
}

// EncodeAttempts stores attempts as a JSON array of protobuf JSON objects.
func EncodeAttempts(attempts []*opsconductorv1.Attempt) ([]byte, error) {
	parts := make([]json.RawMessage, len(attempts))
	for i, a := range attempts {
		b, err := protojson.Marshal(a)
		if err != nil {
			return nil, err
		}
		parts[i] = b
	}
	return json.Marshal(parts)
}

func decodeAttempts(raw []byte) ([]*opsconductorv1.Attempt, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var parts []json.RawMessage
	if err := json.Unmarshal(raw, &parts); err != nil {
		return nil, err
	}
	out := make([]*opsconductorv1.Attempt, len(parts))
	for i, p := range parts {
		out[i] = &opsconductorv1.Attempt{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(p, out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}
