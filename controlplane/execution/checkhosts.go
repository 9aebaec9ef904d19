package execution

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/schedule"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// CheckTimeout bounds how long a connection check waits for answers.
const CheckTimeout = 90 * time.Second

// CheckHosts has a jump agent connect to (and log in to) each remote host
// of job, running nothing, and reports per host. The checks run as an
// execution of their own ("connect-check.JOB", one action with the
// executor's connect_only option), so they are authorised like a run
// (executions:run on the targets), audited and visible; it is returned
// with the answers. Agent targets are not checked (their agents poll).
func (s *Service) CheckHosts(ctx context.Context, job *opsconductorv1.Job, parameters map[string]string) ([]*opsconductorv1.HostCheck, string, error) {
	probe := proto.Clone(job).(*opsconductorv1.Job)
	probe.Id, probe.Version = "", 0
	probe.Name = "connect-check." + job.GetName()
	probe.Targets = nil
	for _, t := range job.GetTargets() {
		if t.GetRemote() != nil {
			probe.Targets = append(probe.Targets, t)
		}
	}
	if len(probe.Targets) == 0 {
		return nil, "", nil
	}
	probe.Actions = []*opsconductorv1.Action{{Name: "connect", Spec: map[string]string{"connect_only": "true"}, Timeout: durationpb.New(time.Minute)}}
	// Nothing waits on or blocks the job's own runs; a host no jump agent
	// takes ends expired rather than waiting a day.
	probe.Policy = &opsconductorv1.ExecutionPolicy{Concurrency: ConcurrencyAllow, QueueTimeout: durationpb.New(time.Minute),
		Timeout: durationpb.New(CheckTimeout)}
	agents, err := s.resolve(ctx, probe)
	if err != nil {
		return nil, "", err
	}
	e, _, err := s.start(ctx, probe, agents, startOpts{parameters: parameters, trigger: "validate"})
	if err != nil {
		return nil, "", err
	}
	wait, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	for {
		rec, err := s.store.ExecutionGet(wait, e.GetId())
		if err != nil {
			return nil, e.GetId(), err
		}
		if isFinal(rec.Status) {
			break
		}
		select {
		case <-wait.Done():
			return s.hostChecks(ctx, e.GetId(), fmt.Sprintf("no answer within %s", CheckTimeout))
		case <-time.After(200 * time.Millisecond):
		}
	}
	return s.hostChecks(ctx, e.GetId(), "")
}

// hostChecks reads the check execution's tasks as answers; pending is
// what a task still running or queued says.
func (s *Service) hostChecks(ctx context.Context, executionID, pending string) ([]*opsconductorv1.HostCheck, string, error) {
	ctx = context.WithoutCancel(ctx)
	tasks, err := s.store.TaskListByExecution(ctx, executionID)
	if err != nil {
		return nil, executionID, err
	}
	results, err := s.store.ActionResultsByExecution(ctx, executionID)
	if err != nil {
		return nil, executionID, err
	}
	var out []*opsconductorv1.HostCheck
	for _, t := range tasks {
		c := &opsconductorv1.HostCheck{Host: t.Host, AgentName: t.AgentName, Reachable: t.Status == TaskSucceeded}
		if len(t.Remote) > 0 {
			r := &opsconductorv1.RemoteEndpoint{}
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(t.Remote, r); err == nil {
				c.Address = fmt.Sprintf("%s:%d", r.GetAddress(), r.GetPort())
			}
		}
		switch {
		case c.Reachable:
		case !isFinal(t.Status) && pending != "":
			c.Error = pending + " (" + t.Status + ")"
		default:
			var why []string
			for _, a := range results[t.ID] {
				if a.Error != "" {
					why = append(why, a.Error)
				}
			}
			if len(why) == 0 {
				why = append(why, t.Error)
			}
			c.Error = strings.Join(why, "; ")
		}
		out = append(out, c)
	}
	return out, executionID, nil
}

// PlanRun checks that the caller may run job jobID with these parameter
// values and targets (nil: the job's own), as a dry run does: the
// scheduling service asks before it saves a schedule that will run it.
func (s *Service) PlanRun(ctx context.Context, jobID string, parameters map[string]string, targets []*opsconductorv1.Target) error {
	_, _, err := s.create(ctx, jobID, 0, "schedule.job_id", startOpts{targets: targets, parameters: parameters, dryRun: true})
	return err
}

// FireSchedule creates the execution of one schedule fire, with the
// rights of whoever last saved or resumed the schedule (r.As): a job
// changed since to reach agents they may not run on is refused, as their
// own run would be. The execution is idempotent on (schedule, slot): a
// fire retried after a crash returns the execution the first try created.
func (s *Service) FireSchedule(ctx context.Context, r schedule.Run) (string, error) {
	grants, err := auth.DecodeGrants(r.As)
	if err != nil || len(grants) == 0 {
		return "", apperr.FailedPrecondition("schedule %s has no recorded rights to run with: update or resume it", r.ScheduleID)
	}
	p := auth.Principal{Name: schedulePrincipal(r.ScheduleID), Method: "schedule", Roles: []string{"schedule"}, Grants: grants}
	opts := startOpts{targets: r.Targets, parameters: r.Parameters, idempotencyKey: scheduleKey(r),
		trigger: "schedule", scheduleID: r.ScheduleID}
	if r.Queue {
		opts.policy = &opsconductorv1.ExecutionPolicy{Concurrency: ConcurrencyQueue}
	}
	e, _, err := s.create(auth.WithPrincipal(ctx, p), r.JobID, 0, "job_id", opts)
	if err != nil {
		return "", err
	}
	return e.GetId(), nil
}

func schedulePrincipal(id string) string { return "schedule:" + id }

func scheduleKey(r schedule.Run) string { return strconv.FormatInt(r.Slot.UnixNano(), 10) }

// FiredExecution is the execution FireSchedule made for the slot, "" when
// none.
func (s *Service) FiredExecution(ctx context.Context, r schedule.Run) (string, error) {
	id, err := s.store.ExecutionIDByIdempotencyKey(ctx, schedulePrincipal(r.ScheduleID)+"/"+scheduleKey(r))
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	}
	return id, err
}

// JobLabels are the labels of the job's current version.
func (s *Service) JobLabels(ctx context.Context, jobID string) (map[string]string, error) {
	job, err := s.jobs.Get(ctx, jobID, 0)
	if err != nil {
		return nil, err
	}
	return job.GetLabels(), nil
}

// ScheduleRunning reports whether an execution the schedule fired is still
// queued or running.
func (s *Service) ScheduleRunning(ctx context.Context, scheduleID string) (bool, error) {
	return s.store.ScheduleRunning(ctx, scheduleID)
}
