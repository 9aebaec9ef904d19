// Package runner runs one task leased to the agent: its actions in order
// through an executor, its output shipped in batches while it runs, its
// lease extended while it works, and its results reported at the end. A
// report the control plane refuses because the lease moved on stops the
// task: it is no longer this agent's.
package runner

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/agent/executor"
	"github.com/opsconductor/opsconductor/agent/safety"
	"github.com/opsconductor/opsconductor/agent/state"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// Client is the part of the agent API the runner uses; the generated
// agentv1connect client (with the agent's credential) implements it.
type Client interface {
	ExtendLease(context.Context, *connect.Request[agentv1.ExtendLeaseRequest]) (*connect.Response[agentv1.ExtendLeaseResponse], error)
	ReportOutput(context.Context, *connect.Request[agentv1.ReportOutputRequest]) (*connect.Response[agentv1.ReportOutputResponse], error)
	CompleteTask(context.Context, *connect.Request[agentv1.CompleteTaskRequest]) (*connect.Response[agentv1.CompleteTaskResponse], error)
}

// Config tunes the runner.
type Config struct {
	// LeaseDuration is the control plane's lease; the runner extends at a
	// third of it.
	LeaseDuration time.Duration
	// FlushInterval is how often output is shipped while an action runs
	// (default 250ms); a large burst ships sooner.
	FlushInterval time.Duration
	// AgentName is given to actions as OPSCONDUCTOR_AGENT_NAME.
	AgentName string
	// Jitter draws retry delays (nil: randomly seeded).
	Jitter *Jitter
	// Journal, when set, records each task's progress so a restarted
	// agent can report what it knows (Recover).
	Journal *state.Journal
	// OutputOnComplete sends a task's last output with its completion
	// rather than in a call of its own (the control plane said it takes
	// it there): a short task then costs one call less.
	OutputOnComplete bool
}

// Runner runs tasks. It is safe for concurrent use.
type Runner struct {
	client   Client
	executor executor.Executor
	checker  *safety.Checker
	cfg      Config
	logger   *zap.Logger
}

// New builds a runner. checker refuses dangerous commands unless the
// control plane sent an override; nil means the built-in rules.
func New(client Client, exec executor.Executor, checker *safety.Checker, logger *zap.Logger, cfg Config) *Runner {
	if checker == nil {
		checker, _ = safety.New(safety.Config{}) // the built-in rules always compile
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 30 * time.Second
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 250 * time.Millisecond
	}
	if cfg.Jitter == nil {
		cfg.Jitter = NewJitter(0)
	}
	return &Runner{client: client, executor: exec, checker: checker, cfg: cfg, logger: logger}
}

// errLeaseLost ends a task the control plane no longer gives this agent.
var errLeaseLost = errors.New("lease lost")

// errTaskTimeout ends a task past its execution's task_timeout.
var errTaskTimeout = errors.New("the task ran past its task_timeout")

// ErrCancelled is the cause a task's context carries when an operator
// cancelled it; the task is then reported cancelled.
var ErrCancelled = errors.New("cancelled by an operator")

// Run runs the task to the end and reports it. ctx ending (agent shutdown)
// cancels the running action and reports the task cancelled.
func (r *Runner) Run(ctx context.Context, t *agentv1.TaskAssignment) {
	log := r.logger.With(zap.String("task_id", t.GetTaskId()), zap.String("execution_id", t.GetExecutionId()),
		zap.String("job_name", t.GetJobName()), zap.String("correlation_id", t.GetCorrelationId()))
	log.Info("task started", zap.Int("actions", len(t.GetActions())))

	taskCtx, cancelTask := context.WithCancelCause(ctx)
	defer cancelTask(nil)
	if d := t.GetTaskTimeout().AsDuration(); d > 0 {
		var stop context.CancelFunc
		taskCtx, stop = context.WithTimeoutCause(taskCtx, d, errTaskTimeout)
		defer stop()
	}

	buf := newOutputBuffer(t.GetOutputLimitBytes())
	buf.setSecrets(t.GetSecretValues())
	shipDone := make(chan struct{})
	stopShipping := make(chan struct{})
	go func() {
		defer close(shipDone)
		r.shipOutput(taskCtx, t, buf, stopShipping, cancelTask, log)
	}()
	extendDone := make(chan struct{})
	stopExtending := make(chan struct{})
	go func() {
		defer close(extendDone)
		r.extendLease(taskCtx, t, stopExtending, cancelTask, log)
	}()

	entry := state.JournalEntry{TaskID: t.GetTaskId(), LeaseGeneration: t.GetLeaseGeneration(), StartedAt: time.Now().UTC(), Running: -1}
	note := func(outcomes []*agentv1.ActionOutcome, running int) {
		if r.cfg.Journal == nil {
			return
		}
		entry.Actions, entry.Running = entry.Actions[:0], running
		for _, o := range outcomes {
			if running >= 0 && o.GetIndex() == int32(running) {
				continue // not finished
			}
			b, _ := protojson.Marshal(o)
			entry.Actions = append(entry.Actions, b)
		}
		if err := r.cfg.Journal.Save(entry); err != nil {
			log.Warn("write the task journal", zap.Error(err))
		}
	}
	note(nil, -1)
	// Remote executors keep their connections for the task's later actions.
	conns := executor.NewConnCache(nil)
	status, errMsg, outcomes := r.runActions(executor.WithConnCache(taskCtx, conns), t, buf, log, note)
	conns.Close()
	if te, ok := r.executor.(executor.TaskEnder); ok {
		// Executors in plugin processes keep theirs there.
		te.EndTask(context.WithoutCancel(taskCtx), t.GetTaskId())
	}
	if r.cfg.Journal != nil {
		entry.FinalStatus, entry.FinalError = status, errMsg
		note(outcomes, -1)
	}
	forget := func() {
		if r.cfg.Journal != nil {
			_ = r.cfg.Journal.Remove(t.GetTaskId(), t.GetLeaseGeneration())
		}
	}

	close(stopExtending)
	<-extendDone
	close(stopShipping)
	<-shipDone

	if errors.Is(context.Cause(taskCtx), errLeaseLost) {
		log.Warn("task abandoned: its lease was lost")
		forget()
		return
	}
	// Report even when the agent is shutting down: the result is known.
	reportCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	req := &agentv1.CompleteTaskRequest{TaskId: t.GetTaskId(), LeaseGeneration: t.GetLeaseGeneration(), Status: status, Error: errMsg, Actions: outcomes}
	if r.cfg.OutputOnComplete {
		req.Output = outputChunks(buf.take())
	}
	err := retry(reportCtx, func() error {
		_, err := r.client.CompleteTask(reportCtx, connect.NewRequest(req))
		return err
	})
	if err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition {
		// The journal keeps the outcome: the next start reports it.
		log.Error("report task result failed", zap.Error(err))
		return
	}
	forget()
	log.Info("task finished", zap.String("status", status))
}

func (r *Runner) runActions(ctx context.Context, t *agentv1.TaskAssignment, buf *outputBuffer, log *zap.Logger, note func([]*agentv1.ActionOutcome, int)) (status, errMsg string, outcomes []*agentv1.ActionOutcome) {
	status = executor.StatusSucceeded
	stopped := false
	for i, a := range t.GetActions() {
		out := &agentv1.ActionOutcome{Index: int32(i), Name: a.GetName()}
		outcomes = append(outcomes, out)
		if stopped || ctx.Err() != nil {
			out.Status, out.ExitCode = "skipped", -1
			continue
		}
		env := map[string]string{
			"OPSCONDUCTOR_AGENT_NAME":     r.cfg.AgentName,
			"OPSCONDUCTOR_JOB_NAME":       t.GetJobName(),
			"OPSCONDUCTOR_EXECUTION_ID":   t.GetExecutionId(),
			"OPSCONDUCTOR_TASK_ID":        t.GetTaskId(),
			"OPSCONDUCTOR_ACTION_NAME":    a.GetName(),
			"OPSCONDUCTOR_CORRELATION_ID": t.GetCorrelationId(),
		}
		command, script, dir, actionEnv, err := render(a, t.GetParameters())
		var spec map[string]string
		if err == nil {
			spec, err = renderSpec(a.GetSpec(), t.GetParameters())
		}
		if err != nil {
			out.Status, out.ExitCode, out.Error = executor.StatusFailed, -1, "render parameters: "+err.Error()
			status, errMsg, stopped = executor.StatusFailed, fmt.Sprintf("action %d (%s) could not be rendered: %v", i+1, a.GetName(), err), true
			continue
		}
		for k, v := range paramEnv(t.GetParameters()) {
			env[k] = v
		}
		for k, v := range actionEnv {
			// The agent's own variables (OPSCONDUCTOR_TASK_ID finds an
			// action's processes) are not the action's to change.
			if _, reserved := env[k]; !reserved {
				env[k] = v
			}
		}
		act := executor.Action{
			Index: i, Name: a.GetName(), Plugin: a.GetPlugin(), Command: command, Script: script, Task: t.GetTaskId(),
			Env: env, WorkingDir: dir, Timeout: a.GetTimeout().AsDuration(), Spec: spec,
		}
		if u := a.GetUpload(); u != nil {
			// The control plane validated the mode; a bad one here means 0644.
			mode, _ := strconv.ParseUint(u.GetMode(), 8, 32)
			act.Upload = &executor.Upload{Destination: u.GetDestination(), Content: []byte(u.GetContent()), Mode: os.FileMode(mode)}
		}
		if why := buf.maskString(r.refuse(t, rendered(a, t.GetParameters()))); why != "" {
			// The last line of defence: the control plane checks too, but
			// the agent runs the command and has the final say.
			out.Status, out.ExitCode, out.Error = executor.StatusFailed, -1, why
			status, errMsg, stopped = executor.StatusFailed, fmt.Sprintf("action %d (%s) %s", i+1, a.GetName(), why), true
			log.Warn("action refused by the safety check", zap.Int("action_index", i), zap.String("reason", why))
			continue
		}
		start := time.Now()
		note(outcomes, i)
		res := r.attempts(ctx, act, a.GetRetry(), buf, out, log)
		buf.endAction(i)
		out.StartTime, out.EndTime = timestamppb.New(start), timestamppb.New(time.Now())
		out.Status, out.ExitCode, out.Error = res.Status, int32(res.ExitCode), res.Error
		note(outcomes, -1)
		log.Info("action finished", zap.Int("action_index", i), zap.String("action", a.GetName()), zap.Int("attempts", len(out.GetAttempts())),
			zap.String("status", res.Status), zap.Int("exit_code", res.ExitCode), zap.Duration("duration", time.Since(start)))
		if res.Status == executor.StatusSucceeded {
			continue
		}
		if res.Status == executor.StatusCancelled && errors.Is(context.Cause(ctx), errTaskTimeout) {
			out.Status, out.Error = executor.StatusTimedOut, errTaskTimeout.Error()
			status, errMsg, stopped = executor.StatusTimedOut, fmt.Sprintf("action %d (%s) stopped: %v", i+1, a.GetName(), errTaskTimeout), true
			continue
		}
		if res.Status == executor.StatusCancelled {
			status, errMsg, stopped = executor.StatusCancelled, fmt.Sprintf("action %d (%s) cancelled", i+1, a.GetName()), true
			continue
		}
		if a.GetContinueOnError() {
			continue
		}
		stopped = true
		status = res.Status
		errMsg = fmt.Sprintf("action %d (%s) %s", i+1, a.GetName(), res.Error)
		if res.Status == executor.StatusFailed {
			status = executor.StatusFailed
		}
	}
	return status, errMsg, outcomes
}

// attempts runs an action under its retry policy, recording every try in
// out, and returns how the last one ended. A marker line on stderr shows
// where each retry's output starts.
func (r *Runner) attempts(ctx context.Context, act executor.Action, policy *opsconductorv1.RetryPolicy, buf *outputBuffer, out *agentv1.ActionOutcome, log *zap.Logger) executor.Result {
	b := BackoffFrom(policy)
	var res executor.Result
	var delay time.Duration
	for n := 1; ; n++ {
		start := time.Now()
		res = r.executor.Execute(ctx, act, streamWriter{buf, act.Index, "stdout"}, streamWriter{buf, act.Index, "stderr"})
		res.Error = buf.maskString(res.Error)
		out.Attempts = append(out.Attempts, &opsconductorv1.Attempt{Number: int32(n), Status: res.Status, ExitCode: int32(res.ExitCode), Error: res.Error,
			StartTime: timestamppb.New(start), EndTime: timestamppb.New(time.Now()), DelayBefore: durationpb.New(delay)})
		if n >= b.Attempts || !b.Retries(res) || ctx.Err() != nil {
			return res
		}
		delay = b.Delay(n, r.cfg.Jitter)
		log.Info("action failed; retrying", zap.Int("action_index", act.Index), zap.Int("attempt", n), zap.Duration("delay", delay), zap.String("error", res.Error))
		buf.add(act.Index, "stderr", []byte(fmt.Sprintf("[opsconductor: attempt %d of %d %s; retrying in %s]\n", n, b.Attempts, res.Error, delay.Round(time.Millisecond))))
		select {
		case <-ctx.Done():
			return executor.Result{Status: executor.StatusCancelled, ExitCode: -1, Error: "cancelled while waiting to retry"}
		case <-time.After(delay):
		}
	}
}

// Recover reports the tasks a previous run of the agent left in its
// journal: an outcome that was decided but maybe not reported is sent
// again; a task that was cut off mid-action is reported "unknown", with
// the actions that finished, since the agent cannot vouch for the rest.
// Entries whose lease is gone are dropped.
func (r *Runner) Recover(ctx context.Context) {
	if r.cfg.Journal == nil {
		return
	}
	entries, err := r.cfg.Journal.Load()
	if err != nil {
		r.logger.Warn("read the task journal", zap.Error(err))
		return
	}
	for _, e := range entries {
		req := &agentv1.CompleteTaskRequest{TaskId: e.TaskID, LeaseGeneration: e.LeaseGeneration, Status: e.FinalStatus, Error: e.FinalError}
		for _, raw := range e.Actions {
			o := &agentv1.ActionOutcome{}
			if err := protojson.Unmarshal(raw, o); err == nil {
				req.Actions = append(req.Actions, o)
			}
		}
		if req.Status == "" {
			req.Status = "unknown"
			req.Error = "the agent stopped while this task ran and cannot vouch for its outcome"
			if e.Running >= 0 {
				req.Error = fmt.Sprintf("the agent stopped while action %d ran; its outcome is unknown", e.Running+1)
				req.Actions = append(req.Actions, &agentv1.ActionOutcome{Index: int32(e.Running), Status: "unknown", ExitCode: -1, Error: "the agent stopped while it ran"})
			}
		}
		_, err := r.client.CompleteTask(ctx, connect.NewRequest(req))
		switch {
		case err == nil:
			r.logger.Warn("reported a task left from before a restart", zap.String("task_id", e.TaskID), zap.String("status", req.Status))
		case connect.CodeOf(err) == connect.CodeFailedPrecondition:
			r.logger.Info("a task left from before a restart is no longer ours", zap.String("task_id", e.TaskID))
		default:
			r.logger.Warn("report a task left from before a restart; will try at the next start", zap.String("task_id", e.TaskID), zap.Error(err))
			continue
		}
		_ = r.cfg.Journal.Remove(e.TaskID, e.LeaseGeneration)
	}
}

// rendered is the action as it will run, for the safety check; an action
// that does not render is checked as written.
func rendered(a *opsconductorv1.Action, values map[string]string) *opsconductorv1.Action {
	command, script, _, _, err := render(a, values)
	if err != nil {
		return a
	}
	return &opsconductorv1.Action{Plugin: a.GetPlugin(), Command: command, Script: script}
}

// refuse returns why the agent will not run the action, or "".
func (r *Runner) refuse(t *agentv1.TaskAssignment, a *opsconductorv1.Action) string {
	if t.GetAllowDangerous() {
		return ""
	}
	text := a.GetCommand()
	if text == "" {
		text = a.GetScript()
	}
	if u := a.GetUpload(); u != nil {
		text = safety.UploadCommand(u.GetDestination())
	}
	lang := safety.Shell
	switch {
	case a.GetUpload() != nil:
	case a.GetPlugin() == "powershell" || a.GetPlugin() == "winrm":
		lang = safety.PowerShell
	case a.GetPlugin() == "cmd":
		lang = safety.Cmd
	}
	rep := r.checker.Check(lang, text)
	if !rep.Blocked() {
		return ""
	}
	f := rep.Findings[0]
	return fmt.Sprintf("refused by the agent's safety check: %s (rule %s, %s)", f.Reason, f.Rule, f.Verdict)
}

// shipOutput sends buffered output every FlushInterval (or sooner after a
// burst) until stop is closed, then sends the rest.
func (r *Runner) shipOutput(ctx context.Context, t *agentv1.TaskAssignment, buf *outputBuffer, stop <-chan struct{}, cancelTask context.CancelCauseFunc, log *zap.Logger) {
	tick := time.NewTicker(r.cfg.FlushInterval)
	defer tick.Stop()
	send := func(sendCtx context.Context) {
		chunks := buf.take()
		if len(chunks) == 0 {
			return
		}
		req := &agentv1.ReportOutputRequest{TaskId: t.GetTaskId(), LeaseGeneration: t.GetLeaseGeneration(), Chunks: outputChunks(chunks)}
		err := retry(sendCtx, func() error {
			_, err := r.client.ReportOutput(sendCtx, connect.NewRequest(req))
			return err
		})
		if connect.CodeOf(err) == connect.CodeFailedPrecondition {
			cancelTask(errLeaseLost)
		} else if err != nil {
			log.Warn("ship output failed; this part of the output is lost", zap.Error(err))
		}
	}
	for {
		select {
		case <-stop:
			if r.cfg.OutputOnComplete {
				return // Run sends what is left with the completion
			}
			finalCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			send(finalCtx)
			cancel()
			return
		case <-tick.C:
		case <-buf.notify:
		}
		// Not the task's context: output written as a task is cancelled
		// or times out (its last lines, what it prints on SIGTERM) must
		// still reach the control plane.
		sendCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		send(sendCtx)
		cancel()
	}
}

// extendLease renews the lease at a third of its length until stop is
// closed. A refusal means the task is no longer ours: cancel it.
func (r *Runner) extendLease(ctx context.Context, t *agentv1.TaskAssignment, stop <-chan struct{}, cancelTask context.CancelCauseFunc, log *zap.Logger) {
	tick := time.NewTicker(r.cfg.LeaseDuration / 3)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		resp, err := r.client.ExtendLease(ctx, connect.NewRequest(&agentv1.ExtendLeaseRequest{TaskId: t.GetTaskId(), LeaseGeneration: t.GetLeaseGeneration()}))
		switch {
		case err == nil && resp.Msg.GetCancelRequested():
			log.Info("task cancelled by an operator")
			cancelTask(ErrCancelled)
			return
		case err == nil:
		case connect.CodeOf(err) == connect.CodeFailedPrecondition:
			log.Warn("lease refused; stopping the task", zap.Error(err))
			cancelTask(errLeaseLost)
			return
		default:
			log.Warn("extend lease failed; will retry", zap.Error(err))
		}
	}
}

// retry calls fn until it succeeds, fails with an error a retry cannot fix,
// or ctx ends, backing off from 200ms to 10s with jitter.
func retry(ctx context.Context, fn func() error) error {
	delay := 200 * time.Millisecond
	for {
		err := fn()
		if err == nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay/2 + rand.N(delay)):
		}
		delay = min(delay*2, 10*time.Second)
	}
}

func retryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeDeadlineExceeded, connect.CodeAborted, connect.CodeInternal:
		return true
	}
	return false
}

// outputChunks is buffered output as the protocol carries it.
func outputChunks(chunks []chunk) []*agentv1.OutputChunk {
	out := make([]*agentv1.OutputChunk, 0, len(chunks))
	for _, c := range chunks {
		out = append(out, &agentv1.OutputChunk{ActionIndex: int32(c.action), Stream: c.stream, Data: c.data})
	}
	return out
}
