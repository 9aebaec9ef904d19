// Package agent is the OpsConductor agent: it enrolls once with a join
// token, then long-polls the control plane for tasks and runs them on its
// host through an executor, up to its capacity at once. It always dials
// out; the control plane never connects to it.
package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"sync"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/opsconductor/opsconductor/agent/executor"
	"github.com/opsconductor/opsconductor/agent/identity"
	"github.com/opsconductor/opsconductor/agent/runner"
	"github.com/opsconductor/opsconductor/agent/safety"
	"github.com/opsconductor/opsconductor/agent/state"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1/agentv1connect"
	"github.com/opsconductor/opsconductor/proto/protocol"
)

// Config configures an agent.
type Config struct {
	// ServerURL is the control plane's base URL, e.g. http://cp:8080.
	ServerURL string
	// JoinToken enrolls the agent the first time; ignored once enrolled.
	JoinToken string
	// Name shown to operators (default: the hostname).
	Name string
	// Labels that job targets select on, e.g. role=web.
	Labels map[string]string
	// Capacity is how many tasks run at once on this host (default 4).
	Capacity int
	// RemoteCapacity is how many remote-host tasks (over SSH, from this
	// agent as a jump host) run at once besides (default 256): they mostly
	// wait on the network.
	RemoteCapacity int
	// PollWait is how long one long-poll may wait for work (default 30s).
	PollWait time.Duration
	// KeyMaxAge: a key older than this is rotated at start (0: never).
	KeyMaxAge time.Duration
	// Plugins are the executors this agent runs, reported at start.
	Plugins []string
	// Safety refuses dangerous commands the control plane did not
	// explicitly allow; nil means the built-in rules.
	Safety *safety.Checker
	// Metrics, if set, counts the agent's work for Prometheus.
	Metrics *Metrics
}

// Agent is a running agent.
type Agent struct {
	journal  *state.Journal
	cfg      Config
	state    state.Store
	executor executor.Executor
	logger   *zap.Logger
	http     *http.Client
}

// New builds an agent. st keeps its identity; exec runs its actions;
// client talks to the control plane (transport.NewHTTPClient builds one
// for HTTPS; nil means http.DefaultClient).
func New(cfg Config, st state.Store, exec executor.Executor, client *http.Client, logger *zap.Logger) (*Agent, error) {
	if cfg.ServerURL == "" {
		return nil, errors.New("server url is required")
	}
	if cfg.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("no agent name given and hostname unknown: %w", err)
		}
		cfg.Name = host
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 4
	}
	if cfg.RemoteCapacity <= 0 {
		cfg.RemoteCapacity = 256
	}
	if cfg.PollWait <= 0 {
		cfg.PollWait = 30 * time.Second
	}
	if client == nil {
		client = http.DefaultClient
	}
	a := &Agent{cfg: cfg, state: st, executor: exec, logger: logger.Named("agent"), http: client}
	if fs, ok := st.(state.FileStore); ok {
		a.journal = &state.Journal{Dir: fs.Dir}
	}
	return a, nil
}

func (a *Agent) facts() *agentv1.Facts {
	host, _ := os.Hostname()
	return &agentv1.Facts{Hostname: host, Os: runtime.GOOS, Arch: runtime.GOARCH, AgentVersion: protocol.Version, Plugins: a.cfg.Plugins}
}

// enroll returns the saved identity, or enrolls with the join token.
func (a *Agent) enroll(ctx context.Context) (state.Identity, error) {
	id, err := a.state.Load()
	if err == nil {
		return id, nil
	}
	if !errors.Is(err, state.ErrNoIdentity) {
		return state.Identity{}, err
	}
	if a.cfg.JoinToken == "" {
		return state.Identity{}, errors.New("this agent has not enrolled yet: give it a join token (create one with `opsconductor agent token create`)")
	}
	key, err := identity.NewKey()
	if err != nil {
		return state.Identity{}, err
	}
	client := agentv1connect.NewAgentServiceClient(a.http, a.cfg.ServerURL)
	resp, err := client.Enroll(ctx, connect.NewRequest(&agentv1.EnrollRequest{
		JoinToken: a.cfg.JoinToken, Name: a.cfg.Name, Labels: a.cfg.Labels, Facts: a.facts(), ProtocolVersion: protocol.AgentProtocolVersion,
		PublicKey: key.Public().(ed25519.PublicKey),
	}))
	if err != nil {
		return state.Identity{}, fmt.Errorf("enroll with %s: %w", a.cfg.ServerURL, err)
	}
	id = state.Identity{AgentID: resp.Msg.GetAgentId(), PrivateKey: key, KeyCreatedAt: time.Now().UTC(), ServerURL: a.cfg.ServerURL}
	if err := a.state.Save(id); err != nil {
		return state.Identity{}, err
	}
	a.logger.Info("enrolled", zap.String("agent_id", id.AgentID), zap.String("server_version", resp.Msg.GetServerVersion()))
	return id, nil
}

// Run enrolls if needed, then polls for and runs tasks until ctx ends.
// Running tasks are cancelled on the way out and reported as such.
func (a *Agent) Run(ctx context.Context) error {
	id, err := a.enroll(ctx)
	if err != nil {
		return err
	}
	signer := identity.NewSigner(id.AgentID, id.PrivateKey)
	// Small messages (a poll, a completion) go uncompressed: gzip's set-up
	// costs more than it saves below a kilobyte or so.
	client := agentv1connect.NewAgentServiceClient(a.http, a.cfg.ServerURL, connect.WithInterceptors(signer.Interceptor()),
		connect.WithCompressMinBytes(1024))
	// A pending key is finished whatever the age: the control plane may
	// already hold it as the current one.
	if len(id.PendingKey) > 0 || (a.cfg.KeyMaxAge > 0 && time.Since(id.KeyCreatedAt) > a.cfg.KeyMaxAge) {
		if err := a.rotateKey(ctx, client, signer, id); err != nil {
			// The old key still works; try again at the next start.
			a.logger.Warn("rotate agent key failed; keeping the current one", zap.Error(err))
		}
	}
	hello, err := client.Hello(ctx, connect.NewRequest(&agentv1.HelloRequest{Labels: a.cfg.Labels, Facts: a.facts(), ProtocolVersion: protocol.AgentProtocolVersion}))
	if err != nil {
		return fmt.Errorf("connect to control plane %s: %w", a.cfg.ServerURL, err)
	}
	a.logger.Info("connected", zap.String("agent_id", id.AgentID), zap.String("agent_name", a.cfg.Name),
		zap.String("server_version", hello.Msg.GetServerVersion()), zap.Int("capacity", a.cfg.Capacity), zap.Int("remote_capacity", a.cfg.RemoteCapacity))
	run := runner.New(client, a.executor, a.cfg.Safety, a.logger.With(zap.String("agent_id", id.AgentID)), runner.Config{
		LeaseDuration: hello.Msg.GetLeaseDuration().AsDuration(), AgentName: a.cfg.Name, Journal: a.journal,
		OutputOnComplete: hello.Msg.GetAcceptsOutputOnComplete(),
	})
	// What a previous run of this agent left unreported goes first.
	run.Recover(ctx)

	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		running    = map[string]context.CancelCauseFunc{} // task id -> stop it
		cancelling = map[string]bool{}                    // cancels already acted on
		gens       = map[string]int64{}                   // task id -> lease generation running
		remote     = map[string]bool{}                    // running tasks that reach a remote host
		slotFree   = make(chan struct{}, 1)
	)
	defer wg.Wait()
	backoff := time.Second
	for ctx.Err() == nil {
		mu.Lock()
		free := a.cfg.Capacity - (len(running) - len(remote))
		freeRemote := a.cfg.RemoteCapacity - len(remote)
		var stopping []string
		for id := range cancelling {
			stopping = append(stopping, id)
		}
		mu.Unlock()

		// A poll at full capacity (of either kind) asks for less; when a
		// slot frees, it is cut short so new work is asked for at once.
		// The deadline guards against a connection that silently died: the
		// server answers well within the wait it was asked for.
		pollCtx, cancelPoll := context.WithTimeout(ctx, a.cfg.PollWait+30*time.Second)
		if free == 0 || freeRemote == 0 {
			go func() {
				select {
				case <-slotFree:
					cancelPoll()
				case <-pollCtx.Done():
				}
			}()
		}
		resp, err := client.Poll(pollCtx, connect.NewRequest(&agentv1.PollRequest{FreeSlots: int32(free), FreeRemoteSlots: int32(freeRemote), Wait: durationpb.New(a.cfg.PollWait),
			CancellingTaskIds: stopping}))
		cutShort := errors.Is(pollCtx.Err(), context.Canceled) && ctx.Err() == nil
		cancelPoll()
		if err != nil {
			if ctx.Err() != nil || cutShort {
				continue
			}
			if m := a.cfg.Metrics; m != nil {
				m.pollErrors.Inc()
			}
			code := connect.CodeOf(err)
			if code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied || code == connect.CodeFailedPrecondition {
				return fmt.Errorf("control plane refused this agent: %w", err)
			}
			wait := backoff/2 + rand.N(backoff)
			a.logger.Warn("poll failed; retrying", zap.Error(err), zap.Duration("retry_in", wait))
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		backoff = time.Second
		if m := a.cfg.Metrics; m != nil {
			m.polls.Inc()
		}
		mu.Lock()
		for _, id := range resp.Msg.GetCancelTaskIds() {
			if stop, ok := running[id]; ok && !cancelling[id] {
				a.logger.Info("cancelling task", zap.String("task_id", id))
				stop(runner.ErrCancelled)
				cancelling[id] = true
			}
		}
		mu.Unlock()
		for _, t := range resp.Msg.GetTasks() {
			taskCtx, stop := context.WithCancelCause(ctx)
			mu.Lock()
			running[t.GetTaskId()] = stop
			gens[t.GetTaskId()] = t.GetLeaseGeneration()
			if t.GetRemoteHost() != "" {
				remote[t.GetTaskId()] = true
			} else {
				delete(remote, t.GetTaskId())
			}
			delete(cancelling, t.GetTaskId())
			mu.Unlock()
			wg.Add(1)
			if m := a.cfg.Metrics; m != nil {
				m.tasksStarted.Inc()
				m.tasksRunning.Inc()
			}
			go func() {
				defer wg.Done()
				defer stop(nil)
				run.Run(taskCtx, t)
				if m := a.cfg.Metrics; m != nil {
					m.tasksRunning.Dec()
				}
				mu.Lock()
				// Only our own entry: the task may have been leased to this
				// agent again (a newer generation) while this attempt wound
				// down after losing its lease.
				if gens[t.GetTaskId()] == t.GetLeaseGeneration() {
					delete(running, t.GetTaskId())
					delete(cancelling, t.GetTaskId())
					delete(gens, t.GetTaskId())
					delete(remote, t.GetTaskId())
				}
				mu.Unlock()
				select {
				case slotFree <- struct{}{}:
				default:
				}
			}()
		}
	}
	return nil
}

// rotateKey makes a new key, saves it as pending, registers it (signed
// with the current key), then saves and uses it. The control plane accepts
// the old key for a grace period, so calls in flight are not refused, but
// only the current key may rotate: after a rotation whose reply was lost,
// the pending key is tried first and adopted if the control plane has it.
func (a *Agent) rotateKey(ctx context.Context, client agentv1connect.AgentServiceClient, signer *identity.Signer, id state.Identity) error {
	if len(id.PendingKey) == ed25519.PrivateKeySize {
		pending := ed25519.PrivateKey(id.PendingKey)
		pendingClient := agentv1connect.NewAgentServiceClient(a.http, a.cfg.ServerURL,
			connect.WithInterceptors(identity.NewSigner(id.AgentID, pending).Interceptor()))
		_, err := pendingClient.RotateKey(ctx, connect.NewRequest(&agentv1.RotateKeyRequest{PublicKey: pending.Public().(ed25519.PublicKey)}))
		if err == nil {
			return a.adoptKey(signer, id, pending)
		}
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			return fmt.Errorf("check the pending key: %w", err)
		}
		// The control plane never got it: register it below.
	} else {
		key, err := identity.NewKey()
		if err != nil {
			return err
		}
		id.PendingKey = key
		if err := a.state.Save(id); err != nil {
			return fmt.Errorf("save the pending key: %w", err)
		}
	}
	pending := ed25519.PrivateKey(id.PendingKey)
	if _, err := client.RotateKey(ctx, connect.NewRequest(&agentv1.RotateKeyRequest{PublicKey: pending.Public().(ed25519.PublicKey)})); err != nil {
		return fmt.Errorf("register the new key: %w", err)
	}
	return a.adoptKey(signer, id, pending)
}

// adoptKey makes key the agent's key, on disk and for signing.
func (a *Agent) adoptKey(signer *identity.Signer, id state.Identity, key ed25519.PrivateKey) error {
	id.PrivateKey, id.KeyCreatedAt, id.PendingKey = key, time.Now().UTC(), nil
	if err := a.state.Save(id); err != nil {
		return fmt.Errorf("save the new key (the control plane has it; the old one works for a while): %w", err)
	}
	signer.SetKey(key)
	a.logger.Info("agent key rotated", zap.String("agent_id", id.AgentID))
	return nil
}
