// Package job is the Job Management service: job definitions (ordered
// actions and their targets), validated on every write, versioned with
// optimistic concurrency, every version kept. Its state lives in the "jobs"
// schema; it reaches agents only through a TargetResolver.
package job

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/registry"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// TargetResolver tells which agents a job's targets match right now. The
// agent registry (part of the executions service) implements it.
type TargetResolver interface {
	// ResolveTargets returns the matched agents (each once) and the indexes
	// of targets that matched none.
	ResolveTargets(ctx context.Context, targets []*opsconductorv1.Target) ([]*opsconductorv1.ResolvedAgent, []int, error)
}

// SafetyWarner finds dangerous commands in a job; saving such a job only
// warns (running it is what the executions service refuses).
type SafetyWarner interface {
	CheckJob(job *opsconductorv1.Job) []*opsconductorv1.SafetyFinding
}

// Service implements opsconductorv1connect.JobServiceHandler.
type Service struct {
	plugins  []string // external executor plugins actions may name
	store    *Store
	resolver TargetResolver
	warner   SafetyWarner
	logger   *zap.Logger
	checker  HostChecker // nil: ValidateJob cannot connect
}

// HostChecker has jump agents try each remote host of a job; the
// executions service implements it.
type HostChecker interface {
	CheckHosts(ctx context.Context, job *opsconductorv1.Job, parameters map[string]string) ([]*opsconductorv1.HostCheck, string, error)
}

// SetHostChecker gives ValidateJob its connection checks. It is set after
// construction because the executions service is built on this one.
func (s *Service) SetHostChecker(c HostChecker) { s.checker = c }

// SetTargets gives the service its target resolver (the agent registry,
// in this process or, in split mode, the executions service's): like the
// host checker it is made after this service.
func (s *Service) SetTargets(r TargetResolver) { s.resolver = r }

var _ opsconductorv1connect.JobServiceHandler = (*Service)(nil)

// NewService builds the jobs service. warner may be nil (no warnings);
// plugins are the external executor plugins actions may name.
func NewService(st *Store, resolver TargetResolver, warner SafetyWarner, logger *zap.Logger, plugins ...string) *Service {
	return &Service{plugins: plugins, store: st, resolver: resolver, warner: warner, logger: logger.Named("job")}
}

func (s *Service) warnings(j *opsconductorv1.Job) []*opsconductorv1.SafetyFinding {
	if s.warner == nil {
		return nil
	}
	return s.warner.CheckJob(j)
}

const (
	defaultPageSize = 50
	maxPageSize     = 500
)

// mayWrite checks the caller's jobs:write grant against the job's labels
// (a custom role may be scoped to, say, team=web).
func mayWrite(ctx context.Context, name string, labels map[string]string) error {
	p, _ := auth.PrincipalFrom(ctx)
	if !p.CanOn(auth.PermJobsWrite, labels, nil) {
		return apperr.PermissionDenied("%s may not change job %s: no role grants %s for its labels %v", p.Name, name, auth.PermJobsWrite, labels)
	}
	return nil
}

func (s *Service) CreateJob(ctx context.Context, req *connect.Request[opsconductorv1.CreateJobRequest]) (*connect.Response[opsconductorv1.CreateJobResponse], error) {
	j := req.Msg.GetJob()
	if vs := Validate("job", j, s.plugins...); len(vs) > 0 {
		return nil, apperr.Invalid("job", vs)
	}
	if err := mayWrite(ctx, j.GetName(), j.GetLabels()); err != nil {
		return nil, err
	}
	rec, err := toRecord(uuid.Must(uuid.NewV7()).String(), j)
	if err != nil {
		return nil, err
	}
	rec, err = s.store.JobCreate(ctx, rec)
	if errors.Is(err, store.ErrConflict) {
		return nil, apperr.AlreadyExists("a job named %q already exists", j.GetName())
	}
	if err != nil {
		return nil, err
	}
	out, err := fromRecord(rec)
	if err != nil {
		return nil, err
	}
	warnings := s.warnings(out)
	s.logger.Info("job created", zap.String("job_id", rec.ID), zap.String("job_name", rec.Name), zap.Int("safety_warnings", len(warnings)))
	return connect.NewResponse(&opsconductorv1.CreateJobResponse{Job: out, SafetyWarnings: warnings}), nil
}

func (s *Service) ListJobs(ctx context.Context, req *connect.Request[opsconductorv1.ListJobsRequest]) (*connect.Response[opsconductorv1.ListJobsResponse], error) {
	sel, err := label.ParseSelector(req.Msg.GetLabelSelector())
	if err != nil {
		return nil, apperr.InvalidField("label_selector", "malformed label selector: %v", err)
	}
	size := int(req.Msg.GetPageSize())
	switch {
	case size == 0:
		size = defaultPageSize
	case size < 0 || size > maxPageSize:
		return nil, apperr.InvalidField("page_size", "must be between 1 and %d", maxPageSize)
	}
	recs, next, err := s.store.JobList(ctx, ListParams{Selector: sel, NamePrefix: req.Msg.GetNamePrefix(), Limit: size, PageToken: req.Msg.GetPageToken()})
	if errors.Is(err, ErrBadPageToken) {
		return nil, apperr.InvalidField("page_token", "is not a token from a previous page")
	}
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListJobsResponse{NextPageToken: next}
	for _, rec := range recs {
		j, err := fromRecord(rec)
		if err != nil {
			return nil, err
		}
		resp.Jobs = append(resp.Jobs, j)
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) GetJob(ctx context.Context, req *connect.Request[opsconductorv1.GetJobRequest]) (*connect.Response[opsconductorv1.GetJobResponse], error) {
	j, err := s.Get(ctx, req.Msg.GetId(), req.Msg.GetVersion())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.GetJobResponse{Job: j}), nil
}

// Get returns a job at version (0: the current one). The executions service
// uses it to snapshot a job.
func (s *Service) Get(ctx context.Context, id string, version int64) (*opsconductorv1.Job, error) {
	if id == "" {
		return nil, apperr.InvalidField("id", "must not be empty")
	}
	if version < 0 {
		return nil, apperr.InvalidField("version", "must not be negative")
	}
	var rec Record
	var err error
	if version == 0 {
		rec, err = s.store.JobGetByID(ctx, id)
	} else {
		rec, err = s.store.JobGetVersion(ctx, id, version)
	}
	if errors.Is(err, store.ErrNotFound) {
		if version == 0 {
			return nil, apperr.NotFound("job %s not found", id)
		}
		return nil, apperr.NotFound("job %s version %d not found", id, version)
	}
	if err != nil {
		return nil, err
	}
	return fromRecord(rec)
}

func (s *Service) UpdateJob(ctx context.Context, req *connect.Request[opsconductorv1.UpdateJobRequest]) (*connect.Response[opsconductorv1.UpdateJobResponse], error) {
	j := req.Msg.GetJob()
	vs := Validate("job", j, s.plugins...)
	if j != nil && j.GetId() == "" {
		vs = append(vs, apperr.Violation{Field: "job.id", Description: "must not be empty"})
	}
	if j != nil && j.GetVersion() <= 0 {
		vs = append(vs, apperr.Violation{Field: "job.version", Description: "must be the version being replaced (read it with GetJob)"})
	}
	if len(vs) > 0 {
		return nil, apperr.Invalid("job", vs)
	}
	current, err := s.Get(ctx, j.GetId(), 0)
	if err != nil {
		return nil, err
	}
	// Neither the job as it is nor as it would be may lie outside the
	// caller's scope: no moving jobs in or out of it.
	if err := mayWrite(ctx, current.GetName(), current.GetLabels()); err != nil {
		return nil, err
	}
	if err := mayWrite(ctx, j.GetName(), j.GetLabels()); err != nil {
		return nil, err
	}
	rec, err := toRecord(j.GetId(), j)
	if err != nil {
		return nil, err
	}
	rec, err = s.store.JobUpdate(ctx, rec, j.GetVersion())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, apperr.NotFound("job %s not found", j.GetId())
	case errors.Is(err, ErrStale):
		return nil, apperr.Stale("%v; read the job again and reapply your change", err)
	case errors.Is(err, store.ErrConflict):
		return nil, apperr.AlreadyExists("a job named %q already exists", j.GetName())
	case err != nil:
		return nil, err
	}
	out, err := fromRecord(rec)
	if err != nil {
		return nil, err
	}
	warnings := s.warnings(out)
	s.logger.Info("job updated", zap.String("job_id", rec.ID), zap.Int64("version", rec.Version), zap.Int("safety_warnings", len(warnings)))
	return connect.NewResponse(&opsconductorv1.UpdateJobResponse{Job: out, SafetyWarnings: warnings}), nil
}

func (s *Service) DeleteJob(ctx context.Context, req *connect.Request[opsconductorv1.DeleteJobRequest]) (*connect.Response[opsconductorv1.DeleteJobResponse], error) {
	current, err := s.Get(ctx, req.Msg.GetId(), 0)
	if err != nil {
		return nil, err
	}
	if err := mayWrite(ctx, current.GetName(), current.GetLabels()); err != nil {
		return nil, err
	}
	err = s.store.JobDelete(ctx, req.Msg.GetId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("job %s not found", req.Msg.GetId())
	}
	if err != nil {
		return nil, err
	}
	s.logger.Info("job deleted", zap.String("job_id", req.Msg.GetId()))
	return connect.NewResponse(&opsconductorv1.DeleteJobResponse{}), nil
}

func (s *Service) ListJobVersions(ctx context.Context, req *connect.Request[opsconductorv1.ListJobVersionsRequest]) (*connect.Response[opsconductorv1.ListJobVersionsResponse], error) {
	recs, err := s.store.JobListVersions(ctx, req.Msg.GetId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("job %s not found", req.Msg.GetId())
	}
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListJobVersionsResponse{}
	for _, rec := range recs {
		j, err := fromRecord(rec)
		if err != nil {
			return nil, err
		}
		resp.Versions = append(resp.Versions, j)
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) ValidateJob(ctx context.Context, req *connect.Request[opsconductorv1.ValidateJobRequest]) (*connect.Response[opsconductorv1.ValidateJobResponse], error) {
	j, err := s.Get(ctx, req.Msg.GetId(), 0)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ValidateJobResponse{}
	for _, v := range Validate("job", j, s.plugins...) {
		resp.Violations = append(resp.Violations, &opsconductorv1.FieldViolation{Field: v.Field, Description: v.Description})
	}
	if len(resp.Violations) == 0 {
		agents, unmatched, err := s.resolver.ResolveTargets(ctx, j.GetTargets())
		if err != nil {
			return nil, fmt.Errorf("resolve targets of job %s: %w", j.GetId(), err)
		}
		resp.Agents = agents
		for _, i := range unmatched {
			resp.UnmatchedTargets = append(resp.UnmatchedTargets, &opsconductorv1.FieldViolation{
				Field:       fmt.Sprintf("job.targets[%d]", i),
				Description: registry.Unmatched(j.GetTargets()[i]),
			})
		}
	}
	resp.Valid = len(resp.Violations) == 0 && len(resp.UnmatchedTargets) == 0
	if req.Msg.GetConnect() && resp.Valid {
		if s.checker == nil {
			return nil, apperr.FailedPrecondition("this server cannot check connections (no executions service)")
		}
		checks, executionID, err := s.checker.CheckHosts(ctx, j, req.Msg.GetParameters())
		if err != nil {
			return nil, err
		}
		resp.HostChecks, resp.CheckExecutionId = checks, executionID
		for _, c := range checks {
			resp.Valid = resp.Valid && c.GetReachable()
		}
	}
	return connect.NewResponse(resp), nil
}

// toRecord encodes the definition part of j (not id, version or times).
func toRecord(id string, j *opsconductorv1.Job) (Record, error) {
	def := proto.Clone(j).(*opsconductorv1.Job)
	def.Id, def.Version, def.CreateTime, def.UpdateTime = "", 0, nil, nil
	spec, err := protojson.Marshal(def)
	if err != nil {
		return Record{}, fmt.Errorf("encode job: %w", err)
	}
	return Record{ID: id, Name: j.GetName(), Labels: j.GetLabels(), Spec: spec}, nil
}

func fromRecord(rec Record) (*opsconductorv1.Job, error) {
	j := &opsconductorv1.Job{}
	// Unknown fields come from a newer release sharing the database.
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(rec.Spec, j); err != nil {
		return nil, fmt.Errorf("decode job %s version %d: %w", rec.ID, rec.Version, err)
	}
	j.Id, j.Version = rec.ID, rec.Version
	j.CreateTime, j.UpdateTime = timestamppb.New(rec.CreatedAt), timestamppb.New(rec.UpdatedAt)
	return j, nil
}

// Check returns every problem of a job definition under prefix; the
// executions service checks ad-hoc (unsaved) jobs with it.
func (s *Service) Check(prefix string, j *opsconductorv1.Job) []apperr.Violation {
	return Validate(prefix, j, s.plugins...)
}
