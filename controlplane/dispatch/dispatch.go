// Package dispatch is the agent gateway of the executions service: it
// implements AgentService (enroll, hello, long-poll and claim, lease
// extension, output, completion) and the reaper that ends tasks whose agent
// stopped reporting. A waiting poll holds no database connection: it waits
// on a notify.Hub wake-up, with a periodic re-check as a safety net.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/credential"
	"github.com/opsconductor/opsconductor/controlplane/execution"
	"github.com/opsconductor/opsconductor/controlplane/notify"
	"github.com/opsconductor/opsconductor/controlplane/params"
	"github.com/opsconductor/opsconductor/controlplane/registry"
	"github.com/opsconductor/opsconductor/controlplane/secretbox"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1/agentv1connect"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/protocol"
)

// Config tunes the gateway. Zero values take the defaults.
type Config struct {
	// LeaseDuration is how long a claimed task is the agent's without a
	// report (default 30s). Agents extend it at a third of this.
	LeaseDuration time.Duration
	// DefaultPollWait applies when an agent asks for none (default 30s).
	DefaultPollWait time.Duration
	// MaxPollWait caps what an agent may ask for (default 60s). The HTTP
	// server's write timeout must exceed it.
	MaxPollWait time.Duration
	// Recheck is how often the gateway looks, in one query for all its
	// waiting polls, for agents with work whose wake-up may have been
	// lost or never sent (a retry's backoff ending, a batch's pause),
	// and wakes their polls (default 5s).
	Recheck time.Duration
	// ReapInterval is how often expired leases are looked for (default 5s).
	ReapInterval time.Duration
	// MaxClaim caps the tasks one poll hands out (default 16).
	MaxClaim int
	// ClientCertVerified, when set, must report true for every agent call,
	// enrollment included (mutual TLS for agents).
	ClientCertVerified func(context.Context) bool
	// Secrets opens sealed parameter values for the agents.
	Secrets *secretbox.Box
	// Credentials opens the stored credentials of remote hosts, for the
	// agent that leased the host's task (nil: no credential store).
	Credentials CredentialOpener
}

// CredentialOpener opens a stored credential for use on a host; the
// credential service implements it.
type CredentialOpener interface {
	Open(ctx context.Context, name, address string) (credential.Secret, error)
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.LeaseDuration, 30*time.Second)
	def(&c.DefaultPollWait, 30*time.Second)
	def(&c.MaxPollWait, 60*time.Second)
	def(&c.Recheck, 5*time.Second)
	def(&c.ReapInterval, 5*time.Second)
	if c.MaxClaim <= 0 {
		c.MaxClaim = 16
	}
	return c
}

// Gateway implements agentv1connect.AgentServiceHandler.
type Gateway struct {
	registry *registry.Registry
	store    *execution.Store
	hub      *notify.Hub
	nudge    func()
	cfg      Config
	logger   *zap.Logger

	pollsWaiting prometheus.Gauge
	tasksLeased  prometheus.Counter
	tasksLost    prometheus.Counter
	tasksDone    *prometheus.CounterVec
	latency      prometheus.Histogram
}

var _ agentv1connect.AgentServiceHandler = (*Gateway)(nil)

// New builds the gateway and registers its metrics on metrics. nudge is
// called after every commit that wrote execution events (the outbox
// relay's Nudge), so watchers hear of them at once.
func New(reg *registry.Registry, st *execution.Store, hub *notify.Hub, nudge func(), metrics prometheus.Registerer, logger *zap.Logger, cfg Config) *Gateway {
	g := &Gateway{registry: reg, store: st, hub: hub, nudge: nudge, cfg: cfg.withDefaults(), logger: logger.Named("dispatch"),
		pollsWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "opsconductor_agent_polls_waiting", Help: "Agent long-polls waiting for work on this replica.",
		}),
		tasksLeased: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "opsconductor_tasks_leased_total", Help: "Tasks handed to agents by this replica.",
		}),
		tasksLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "opsconductor_tasks_lost_total", Help: "Tasks whose lease expired, found by this replica's reaper.",
		}),
	}
	g.tasksDone = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "opsconductor_tasks_completed_total", Help: "Tasks agents reported finished to this replica, by outcome.",
	}, []string{"status"})
	g.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "opsconductor_dispatch_latency_seconds", Help: "From a task queued to its lease by an agent (includes waiting for a free slot or a batch).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	})
	metrics.MustRegister(g.pollsWaiting, g.tasksLeased, g.tasksLost, g.tasksDone, g.latency)
	return g
}

func checkProtocol(v int32) error {
	if v < protocol.MinAgentProtocolVersion || v > protocol.AgentProtocolVersion {
		if v > protocol.AgentProtocolVersion {
			return apperr.FailedPrecondition("agent speaks protocol %d but this server (%s) speaks %d to %d: upgrade the control plane, or install an agent of the server's release",
				v, protocol.Version, protocol.MinAgentProtocolVersion, protocol.AgentProtocolVersion)
		}
		return apperr.FailedPrecondition("agent speaks protocol %d but this server (%s) needs %d to %d: upgrade the agent to %s",
			v, protocol.Version, protocol.MinAgentProtocolVersion, protocol.AgentProtocolVersion, protocol.Version)
	}
	return nil
}

func facts(f *agentv1.Facts) registry.Facts {
	return registry.Facts{Hostname: f.GetHostname(), OS: f.GetOs(), Arch: f.GetArch(), AgentVersion: f.GetAgentVersion(), Plugins: f.GetPlugins()}
}

func (g *Gateway) Enroll(ctx context.Context, req *connect.Request[agentv1.EnrollRequest]) (*connect.Response[agentv1.EnrollResponse], error) {
	if g.cfg.ClientCertVerified != nil && !g.cfg.ClientCertVerified(ctx) {
		return nil, apperr.Unauthenticated("this control plane requires agents to present a client certificate (mutual TLS)")
	}
	if err := checkProtocol(req.Msg.GetProtocolVersion()); err != nil {
		return nil, err
	}
	a, err := g.registry.Enroll(ctx, req.Msg.GetJoinToken(), req.Msg.GetName(), req.Msg.GetLabels(), facts(req.Msg.GetFacts()), req.Msg.GetPublicKey())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.EnrollResponse{AgentId: a.ID, ServerVersion: protocol.Version, Labels: a.Labels}), nil
}

// authenticate checks the agent token in the Authorization header. Every
// later check (the task is leased to this agent, at this generation) is
// made against the agent it returns, so an agent can touch only its own
// work.
func (g *Gateway) authenticate(ctx context.Context, h interface{ Get(string) string }) (registry.AgentRecord, error) {
	if g.cfg.ClientCertVerified != nil && !g.cfg.ClientCertVerified(ctx) {
		return registry.AgentRecord{}, apperr.Unauthenticated("this control plane requires agents to present a client certificate (mutual TLS)")
	}
	token, _ := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	return g.registry.Authenticate(ctx, strings.TrimSpace(token))
}

func (g *Gateway) RotateKey(ctx context.Context, req *connect.Request[agentv1.RotateKeyRequest]) (*connect.Response[agentv1.RotateKeyResponse], error) {
	a, err := g.authenticate(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	if err := g.registry.RotateKey(ctx, a, req.Msg.GetPublicKey()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.RotateKeyResponse{}), nil
}

func (g *Gateway) Hello(ctx context.Context, req *connect.Request[agentv1.HelloRequest]) (*connect.Response[agentv1.HelloResponse], error) {
	a, err := g.authenticate(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	if err := checkProtocol(req.Msg.GetProtocolVersion()); err != nil {
		return nil, err
	}
	if err := g.registry.UpdateFacts(ctx, a, req.Msg.GetLabels(), facts(req.Msg.GetFacts())); err != nil {
		return nil, err
	}
	g.logger.Info("agent connected", zap.String("agent_id", a.ID), zap.String("agent_name", a.Name), zap.String("agent_version", req.Msg.GetFacts().GetAgentVersion()))
	return connect.NewResponse(&agentv1.HelloResponse{ServerVersion: protocol.Version, LeaseDuration: durationpb.New(g.cfg.LeaseDuration),
		AcceptsOutputOnComplete: true}), nil
}

func (g *Gateway) Poll(ctx context.Context, req *connect.Request[agentv1.PollRequest]) (*connect.Response[agentv1.PollResponse], error) {
	a, err := g.authenticate(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	if err := g.registry.Touch(ctx, a); err != nil {
		g.logger.Warn("record agent poll", zap.String("agent_id", a.ID), zap.Error(err))
	}
	wait := g.cfg.DefaultPollWait
	if w := req.Msg.GetWait(); w != nil && w.AsDuration() > 0 {
		wait = min(w.AsDuration(), g.cfg.MaxPollWait)
	}
	freeSlots := min(int(req.Msg.GetFreeSlots()), g.cfg.MaxClaim)
	freeRemote := min(int(req.Msg.GetFreeRemoteSlots()), g.cfg.MaxClaim)

	// Subscribe before the first look so a wake-up between the look and
	// the wait is not lost.
	wake, cancel := g.hub.Subscribe(notify.AgentKey(a.ID))
	defer cancel()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	g.pollsWaiting.Inc()
	defer g.pollsWaiting.Dec()
	state := a.State // read with the agent's record: the first look needs no lookup
	for first := true; ; first = false {
		// Cancels first: a busy agent (no free slots) still polls for them.
		pending, err := g.store.TaskCancelsForAgent(ctx, a.ID)
		if err != nil {
			return nil, err
		}
		var cancels []string
		for _, id := range pending {
			if !slices.Contains(req.Msg.GetCancellingTaskIds(), id) {
				cancels = append(cancels, id)
			}
		}
		// A draining or paused agent finishes what runs and takes nothing
		// new; the state is read on every look, so a resume is seen soon.
		slots, remote := freeSlots, freeRemote
		if !first {
			if state, err = g.registry.AgentState(ctx, a.ID); err != nil {
				return nil, err
			}
		}
		if state != registry.StateActive {
			slots, remote = 0, 0
		}
		var tasks []*agentv1.TaskAssignment
		if slots > 0 || remote > 0 {
			tasks, err = g.claim(ctx, a, slots, remote)
			if err != nil && len(tasks) == 0 {
				return nil, err
			}
		}
		if len(tasks) > 0 || len(cancels) > 0 {
			return connect.NewResponse(&agentv1.PollResponse{Tasks: tasks, CancelTaskIds: cancels}), nil
		}
		// Nothing for now: wait for a wake-up (a new task, a cancel, or
		// RunRecheck finding work this poll was not told of). A waiting
		// poll costs the database nothing.
		select {
		case <-ctx.Done():
			return connect.NewResponse(&agentv1.PollResponse{}), nil
		case <-deadline.C:
			return connect.NewResponse(&agentv1.PollResponse{}), nil
		case <-wake:
		}
	}
}

// RunRecheck wakes, every Recheck, the waiting polls on this replica of
// the agents that have work: queued tasks of their own or that they may
// take as a jump agent, or cancels to hear of. It is the safety net of the
// wake-ups (one lost on the way between replicas) and what wakes an agent
// when a task becomes claimable with nobody to say so (a retry's backoff
// or a batch pause ends). One query a round, however many polls wait.
func (g *Gateway) RunRecheck(ctx context.Context) error {
	tick := time.NewTicker(g.cfg.Recheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		agents, err := g.store.AgentsWithWork(ctx)
		if err != nil {
			if ctx.Err() == nil {
				g.logger.Error("look for agents with work", zap.Error(err))
			}
			continue
		}
		if len(agents) == 0 {
			continue
		}
		keys := make([]string, len(agents))
		for i, a := range agents {
			keys[i] = notify.AgentKey(a)
		}
		// Every replica runs its own round for its own polls. Many agents
		// woken at one instant would all claim at once: they are woken in
		// slices spread over the first half of the interval, in an order
		// that changes every round.
		rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		const slice = 64
		parts := (len(keys) + slice - 1) / slice
		pause := g.cfg.Recheck / 2 / time.Duration(parts)
		for i := 0; i < len(keys); i += slice {
			if i > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(pause):
				}
			}
			g.hub.PublishLocal(keys[i:min(i+slice, len(keys))]...)
		}
	}
}

func (g *Gateway) claim(ctx context.Context, a registry.AgentRecord, slots, remoteSlots int) ([]*agentv1.TaskAssignment, error) {
	var claims []execution.Claim
	var err error
	if slots > 0 {
		claims, err = g.store.TaskClaimNext(ctx, a.ID, slots, g.cfg.LeaseDuration)
	}
	if remoteSlots > 0 && err == nil {
		var remote []execution.Claim
		remote, err = g.store.TaskClaimRemote(ctx, a.ID, remoteSlots, g.cfg.LeaseDuration)
		claims = append(claims, remote...)
	}
	var out []*agentv1.TaskAssignment
	if len(claims) > 0 {
		g.nudge()
	}
	for _, c := range claims {
		ta, cerr := g.toAssignment(ctx, c)
		if cerr != nil {
			// It cannot be delivered (a snapshot or sealed parameters this
			// server cannot open): end it as failed, saying why, rather
			// than leave it leased to an agent that never got it; the
			// other claims still go out.
			g.logger.Error("task cannot be delivered; failing it", zap.String("task_id", c.Task.ID),
				zap.String("execution_id", c.Task.ExecutionID), zap.Error(cerr))
			if ferr := g.store.TaskComplete(ctx, a.ID, c.Task.ID, c.Task.LeaseGeneration, execution.TaskFailed,
				"the control plane could not deliver this task: "+cerr.Error(), nil, g.nudge); ferr != nil {
				g.logger.Error("fail undeliverable task", zap.String("task_id", c.Task.ID), zap.Error(ferr))
			}
			continue
		}
		g.logger.Info("task leased", zap.String("task_id", c.Task.ID), zap.String("execution_id", c.Task.ExecutionID),
			zap.String("agent_id", a.ID), zap.Int64("lease_generation", c.Task.LeaseGeneration), zap.String("correlation_id", c.CorrelationID))
		out = append(out, ta)
		g.tasksLeased.Inc()
		g.latency.Observe(time.Since(c.Task.CreatedAt).Seconds())
	}
	if err != nil {
		return out, fmt.Errorf("claim tasks for agent %s: %w", a.ID, err)
	}
	return out, nil
}

func (g *Gateway) toAssignment(ctx context.Context, c execution.Claim) (*agentv1.TaskAssignment, error) {
	box := g.cfg.Secrets
	job := &opsconductorv1.Job{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(c.Snapshot, job); err != nil {
		return nil, fmt.Errorf("decode snapshot of execution %s: %w", c.Task.ExecutionID, err)
	}
	ta := &agentv1.TaskAssignment{
		TaskId: c.Task.ID, ExecutionId: c.Task.ExecutionID, JobName: c.JobName, LeaseGeneration: c.Task.LeaseGeneration,
		CorrelationId: c.CorrelationID, OutputLimitBytes: c.Task.OutputLimit, AllowDangerous: c.AllowDangerous,
	}
	if c.TaskTimeout > 0 {
		ta.TaskTimeout = durationpb.New(c.TaskTimeout)
	}
	if c.Task.LeaseExpiresAt != nil {
		ta.LeaseExpireTime = timestamppb.New(*c.Task.LeaseExpiresAt)
	}
	if box != nil {
		values, secrets, err := params.Open(box, c.Task.ExecutionID, c.Parameters)
		if err != nil {
			return nil, err
		}
		ta.Parameters, ta.SecretValues = values, secrets
	}
	var remote *opsconductorv1.RemoteEndpoint
	if len(c.Task.Remote) > 0 {
		remote = &opsconductorv1.RemoteEndpoint{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(c.Task.Remote, remote); err != nil {
			return nil, fmt.Errorf("decode remote host of task %s: %w", c.Task.ID, err)
		}
		ta.RemoteHost = remote.GetName()
	}
	login, err := g.login(ctx, remote)
	if err != nil {
		return nil, err
	}
	if login.value != "" {
		// Masked in output like a secret parameter.
		ta.SecretValues = append(ta.SecretValues, login.value)
	}
	for i, a := range job.GetActions() {
		a = proto.Clone(a).(*opsconductorv1.Action)
		if a.GetName() == "" {
			a.Name = fmt.Sprintf("action-%d", i+1)
		}
		if remote != nil {
			aimAt(a, remote, login)
			if login.value != "" {
				// Checked at execute time too; the job may have changed
				// nothing since, but this is the last word.
				if err := credential.CheckUse(remote.GetCredential(), remote.GetTransport(), a.GetSpec()); err != nil {
					return nil, err
				}
			}
		}
		if a.GetPlugin() == "" {
			a.Plugin = "shell"
		}
		if a.GetTimeout() == nil || a.GetTimeout().AsDuration() == 0 {
			a.Timeout = durationpb.New(time.Hour)
		}
		if a.GetRetry() == nil {
			a.Retry = job.GetPolicy().GetRetry()
		}
		ta.Actions = append(ta.Actions, a)
	}
	return ta, nil
}

// aimAt points an action of a remote-host task at its host: without a
// plugin of its own it runs through the host's transport, and its spec
// gets the host's address, port, user and key, then the target's options
// where the action's spec sets nothing.
func aimAt(a *opsconductorv1.Action, r *opsconductorv1.RemoteEndpoint, login secretLogin) {
	if a.GetPlugin() == "" {
		a.Plugin = r.GetTransport()
	}
	spec := map[string]string{}
	for k, v := range r.GetOptions() {
		spec[k] = v
	}
	for k, v := range a.GetSpec() {
		spec[k] = v
	}
	spec["host"] = r.GetAddress()
	spec["port"] = strconv.Itoa(int(r.GetPort()))
	spec["user"] = r.GetUser()
	if path, ok := strings.CutPrefix(r.GetCredential(), "agent:"); ok {
		spec["key_file"] = path
	}
	if login.specKey != "" {
		spec[login.specKey] = login.value
	}
	a.Spec = spec
}

// secretLogin is a stored credential opened for a task: the executor spec
// key it goes in and its value.
type secretLogin struct{ specKey, value string }

// login opens the stored credential a remote host names, if any. It runs
// only for the agent that just leased the task.
func (g *Gateway) login(ctx context.Context, r *opsconductorv1.RemoteEndpoint) (secretLogin, error) {
	name := r.GetCredential()
	if r == nil || name == "" || strings.HasPrefix(name, "agent:") {
		return secretLogin{}, nil
	}
	if g.cfg.Credentials == nil {
		return secretLogin{}, fmt.Errorf("host %s names credential %q but this server has no credential store", r.GetName(), name)
	}
	sec, err := g.cfg.Credentials.Open(ctx, name, r.GetAddress())
	if err != nil {
		return secretLogin{}, err
	}
	switch sec.Kind {
	case credential.KindSSHKey:
		if r.GetTransport() != "ssh" {
			return secretLogin{}, fmt.Errorf("credential %q is an SSH key; %s needs a password", name, r.GetTransport())
		}
		return secretLogin{specKey: "private_key", value: sec.Value}, nil
	case credential.KindPassword:
		return secretLogin{specKey: "password", value: sec.Value}, nil
	}
	return secretLogin{}, fmt.Errorf("credential %q has unknown kind %q", name, sec.Kind)
}

func leaseErr(err error) error {
	if errors.Is(err, execution.ErrLeaseLost) {
		return apperr.FailedPrecondition("%v: the task is no longer this agent's (it ended, or its lease expired); stop working on it", err)
	}
	return err
}

func (g *Gateway) ExtendLease(ctx context.Context, req *connect.Request[agentv1.ExtendLeaseRequest]) (*connect.Response[agentv1.ExtendLeaseResponse], error) {
	a, err := g.authenticate(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	until, cancel, err := g.store.TaskExtendLease(ctx, a.ID, req.Msg.GetTaskId(), req.Msg.GetLeaseGeneration(), g.cfg.LeaseDuration)
	if err != nil {
		return nil, leaseErr(err)
	}
	return connect.NewResponse(&agentv1.ExtendLeaseResponse{LeaseExpireTime: timestamppb.New(until), CancelRequested: cancel}), nil
}

func (g *Gateway) ReportOutput(ctx context.Context, req *connect.Request[agentv1.ReportOutputRequest]) (*connect.Response[agentv1.ReportOutputResponse], error) {
	a, err := g.authenticate(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	chunks, err := outputChunks("chunks", req.Msg.GetChunks())
	if err != nil {
		return nil, err
	}
	truncated, err := g.store.TaskAppendOutput(ctx, a.ID, req.Msg.GetTaskId(), req.Msg.GetLeaseGeneration(), chunks, g.nudge)
	if err != nil {
		return nil, leaseErr(err)
	}
	return connect.NewResponse(&agentv1.ReportOutputResponse{Truncated: truncated}), nil
}

// outputChunks checks the chunks of a request's field and converts them.
func outputChunks(field string, in []*agentv1.OutputChunk) ([]execution.OutputChunk, error) {
	chunks := make([]execution.OutputChunk, 0, len(in))
	for i, c := range in {
		if c.GetStream() != "stdout" && c.GetStream() != "stderr" {
			return nil, apperr.InvalidField(fmt.Sprintf("%s[%d].stream", field, i), "must be stdout or stderr")
		}
		chunks = append(chunks, execution.OutputChunk{ActionIndex: int(c.GetActionIndex()), Stream: c.GetStream(), Data: c.GetData()})
	}
	return chunks, nil
}

var finalTaskStatus = map[string]bool{
	execution.TaskSucceeded: true, execution.TaskFailed: true, execution.TaskTimedOut: true, execution.TaskCancelled: true,
	execution.TaskUnknown: true, // a restarted agent that cannot vouch for the outcome
}

var actionStatus = map[string]bool{
	execution.TaskSucceeded: true, execution.TaskFailed: true, execution.TaskTimedOut: true, execution.TaskCancelled: true, execution.TaskSkipped: true,
	execution.TaskUnknown: true,
}

func (g *Gateway) CompleteTask(ctx context.Context, req *connect.Request[agentv1.CompleteTaskRequest]) (*connect.Response[agentv1.CompleteTaskResponse], error) {
	a, err := g.authenticate(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	if !finalTaskStatus[req.Msg.GetStatus()] {
		return nil, apperr.InvalidField("status", "must be succeeded, failed, timed_out, cancelled or unknown, not %q", req.Msg.GetStatus())
	}
	results := make([]execution.ActionResult, 0, len(req.Msg.GetActions()))
	for i, r := range req.Msg.GetActions() {
		if !actionStatus[r.GetStatus()] {
			return nil, apperr.InvalidField(fmt.Sprintf("actions[%d].status", i), "must be succeeded, failed, timed_out, cancelled or skipped, not %q", r.GetStatus())
		}
		attempts, err := execution.EncodeAttempts(r.GetAttempts())
		if err != nil {
			return nil, apperr.InvalidField(fmt.Sprintf("actions[%d].attempts", i), "%v", err)
		}
		results = append(results, execution.ActionResult{
			Index: int(r.GetIndex()), Name: r.GetName(), Status: r.GetStatus(), ExitCode: int(r.GetExitCode()), Error: r.GetError(),
			StartedAt: timePtr(r.GetStartTime()), FinishedAt: timePtr(r.GetEndTime()), Attempts: attempts,
		})
	}
	output, err := outputChunks("output", req.Msg.GetOutput())
	if err != nil {
		return nil, err
	}
	limited, err := g.store.TaskCompleteWithOutput(ctx, a.ID, req.Msg.GetTaskId(), req.Msg.GetLeaseGeneration(), req.Msg.GetStatus(), req.Msg.GetError(), results,
		output, g.nudge)
	if err != nil {
		return nil, leaseErr(err)
	}
	g.tasksDone.WithLabelValues(req.Msg.GetStatus()).Inc()
	g.logger.Info("task completed", zap.String("task_id", req.Msg.GetTaskId()), zap.String("agent_id", a.ID), zap.String("status", req.Msg.GetStatus()))
	if limited {
		// Its end may have made room for tasks the execution held back.
		g.wakeQueued(ctx, req.Msg.GetTaskId())
	}
	return connect.NewResponse(&agentv1.CompleteTaskResponse{}), nil
}

func timePtr(t *timestamppb.Timestamp) *time.Time {
	if t == nil {
		return nil
	}
	v := t.AsTime()
	return &v
}

// reassign moves a requeued task to another online agent that the job's
// targets match, if there is one; otherwise it stays with its agent, which
// may come back within the queue timeout.
func (g *Gateway) reassign(ctx context.Context, lt execution.LostTask) {
	if lt.Remote {
		// Back in its jump agents' pool; wake them.
		g.wakeExecutionQueue(ctx, lt.ExecutionID)
		return
	}
	e, err := g.store.ExecutionGet(ctx, lt.ExecutionID)
	if err != nil {
		g.logger.Warn("reassign lost task", zap.String("task_id", lt.TaskID), zap.Error(err))
		return
	}
	job := &opsconductorv1.Job{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(e.Snapshot, job); err != nil {
		g.logger.Warn("reassign lost task", zap.String("task_id", lt.TaskID), zap.Error(err))
		return
	}
	agents, _, err := g.registry.Resolve(ctx, job.GetTargets())
	if err != nil {
		g.logger.Warn("reassign lost task", zap.String("task_id", lt.TaskID), zap.Error(err))
		return
	}
	for _, a := range agents {
		if a.ID == lt.AgentID || !g.registry.Online(a) {
			continue
		}
		moved, err := g.store.TaskReassign(ctx, lt.TaskID, lt.AgentID, a.ID, a.Name)
		if err != nil {
			g.logger.Warn("reassign lost task", zap.String("task_id", lt.TaskID), zap.Error(err))
			return
		}
		if moved {
			g.logger.Info("lost task re-queued on another agent", zap.String("task_id", lt.TaskID), zap.String("agent_id", a.ID))
			g.hub.Publish(ctx, notify.AgentKey(a.ID))
		}
		return
	}
	g.logger.Info("lost task waits for its agent to return", zap.String("task_id", lt.TaskID), zap.String("agent_id", lt.AgentID))
}

// wakeExecutionQueue wakes the agents with queued tasks in the execution.
func (g *Gateway) wakeExecutionQueue(ctx context.Context, executionID string) {
	agents, err := g.store.QueuedAgents(context.WithoutCancel(ctx), executionID)
	g.wakeAgents(ctx, agents, err)
}

// wakeQueued wakes the agents still waiting in the task's execution when
// the task's end may have freed a max_parallel slot or opened a batch.
func (g *Gateway) wakeQueued(ctx context.Context, taskID string) {
	agents, err := g.store.AgentsWaitingOnTask(context.WithoutCancel(ctx), taskID)
	g.wakeAgents(ctx, agents, err)
}

// wakeAgents wakes the polls of agents, as found (err: they could not be).
func (g *Gateway) wakeAgents(ctx context.Context, agents []string, err error) {
	if err != nil {
		g.logger.Warn("find agents to wake", zap.Error(err))
		return
	}
	keys := make([]string, len(agents))
	for i, a := range agents {
		keys[i] = notify.AgentKey(a)
	}
	g.hub.Publish(ctx, keys...)
}

// RunReaper marks tasks whose lease expired as lost and queued tasks past
// their queue timeout as expired, every ReapInterval,
// until ctx ends. Every replica may run it: each expiry is a guarded update.
func (g *Gateway) RunReaper(ctx context.Context) error {
	tick := time.NewTicker(g.cfg.ReapInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		lost, err := g.store.TaskExpireLeases(ctx, time.Now(), g.nudge)
		if err != nil && ctx.Err() == nil {
			g.logger.Error("expire task leases", zap.Error(err))
		}
		for _, lt := range lost {
			g.tasksLost.Inc()
			g.logger.Warn("task lost: its agent stopped reporting", zap.String("task_id", lt.TaskID),
				zap.String("agent_id", lt.AgentID), zap.Bool("requeued", lt.Requeued))
			if lt.Requeued {
				g.reassign(ctx, lt)
			}
		}
		agents, err := g.store.ExecutionExpireDeadlines(ctx, time.Now(), g.nudge)
		if err != nil && ctx.Err() == nil {
			g.logger.Error("expire execution deadlines", zap.Error(err))
		}
		if len(agents) > 0 {
			keys := make([]string, len(agents))
			for i, a := range agents {
				keys[i] = notify.AgentKey(a)
			}
			g.hub.Publish(ctx, keys...)
		}
		if n, err := g.store.ExecutionReleaseStranded(ctx, time.Now()); err != nil && ctx.Err() == nil {
			g.logger.Error("release stranded queued executions", zap.Error(err))
		} else if n > 0 {
			g.logger.Warn("released queued executions whose predecessor had finished", zap.Int("predecessors", n))
		}
		n, err := g.store.TaskExpireQueued(ctx, time.Now(), g.nudge)
		if err != nil && ctx.Err() == nil {
			g.logger.Error("expire queued tasks", zap.Error(err))
		}
		if n > 0 {
			g.logger.Warn("tasks expired: no agent claimed them within the queue timeout", zap.Int("tasks", n))
		}
	}
}
