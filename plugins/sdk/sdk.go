// Package sdk is how executor plugins are written and how agents talk to
// them: a plugin is a separate program, started by the agent through
// hashicorp/go-plugin, speaking the gRPC protocol of
// proto/opsconductor/plugin/v1. A plugin implements Executor and calls
// Serve from main; the agent dispenses a Client that implements Executor
// too. Everything plugin-facing lives here so a plugin imports one package.
//
//	func main() { sdk.Serve(myExecutor{}) }
package sdk

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pluginv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/plugin/v1"
)

// Handshake is shared by agents and plugins: a plugin refuses to run
// unless started by an agent of the same protocol version.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "OPSCONDUCTOR_PLUGIN",
	MagicCookieValue: "executor",
}

// PluginName is the name the executor is dispensed under.
const PluginName = "executor"

// Action statuses a Result carries.
const (
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusTimedOut  = "timed_out"
	StatusCancelled = "cancelled"
)

// Result is how an action ended.
type Result struct {
	Status   string
	ExitCode int // -1 when there is no exit code
	Error    string
}

// Executor runs actions. Execute must stream output to stdout and stderr
// as it comes, stop when ctx ends (cancel or deadline) and return
// promptly after. Implementations must be safe for concurrent use.
type Executor interface {
	Describe(ctx context.Context) (*pluginv1.DescribeResponse, error)
	Validate(ctx context.Context, action *pluginv1.Action) []*pluginv1.Violation
	Execute(ctx context.Context, action *pluginv1.Action, target *pluginv1.Target, stdout, stderr io.Writer) Result
}

// TaskEnder is an Executor that keeps something for the actions of one
// task (Action.TaskId), a connection say; EndTask releases it. Executors
// that share nothing need not implement it.
type TaskEnder interface {
	EndTask(ctx context.Context, taskID string)
}

// ParentEnv names the variable in which the agent gives a plugin its
// process id, so that a plugin whose agent died before it started knows.
const ParentEnv = "OPSCONDUCTOR_PLUGIN_PARENT"

// Serve runs impl as a plugin until the agent stops it. Call it from main.
func Serve(impl Executor) {
	parent := os.Getppid()
	if v, err := strconv.Atoi(os.Getenv(ParentEnv)); err == nil && v > 0 {
		parent = v
	}
	inflight := &sync.WaitGroup{}
	go exitWithParent(parent, time.Second, inflight, 10*time.Second)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &GRPCPlugin{Impl: impl, inflight: inflight}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}

// exitWithParent ends the plugin once the agent that started it is gone
// (killed, crashed: a stopping agent stops its plugins itself), which on
// Unix shows as a new parent process. Without it an orphaned plugin would
// run on, unseen, for ever. The actions running then had their contexts
// cancelled when the agent's connection broke; they get grace to stop
// what they started (a process group, a remote command) before the exit.
// (On Windows a process keeps its parent's id when the parent dies, so
// this does nothing there.)
func exitWithParent(parent int, every time.Duration, inflight *sync.WaitGroup, grace time.Duration) {
	for range time.Tick(every) {
		if os.Getppid() == parent {
			continue
		}
		stopped := make(chan struct{})
		go func() { inflight.Wait(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(grace):
		}
		fmt.Fprintf(os.Stderr, "the agent (process %d) is gone: this plugin exits\n", parent)
		os.Exit(2)
	}
}

// GRPCPlugin adapts an Executor to go-plugin's gRPC transport, both ways.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Executor // set on the plugin side

	inflight *sync.WaitGroup // the actions running (plugin side; nil: not counted)
}

// GRPCServer registers the executor (plugin side).
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	inflight := p.inflight
	if inflight == nil {
		inflight = &sync.WaitGroup{}
	}
	pluginv1.RegisterExecutorServer(s, &server{impl: p.Impl, inflight: inflight})
	return nil
}

// GRPCClient returns a *Client (agent side).
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &Client{rpc: pluginv1.NewExecutorClient(c)}, nil
}
