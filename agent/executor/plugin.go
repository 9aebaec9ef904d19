package executor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/opsconductor/opsconductor/plugins/sdk"
	pluginv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/plugin/v1"
)

// pool keeps plugin processes: one per name, started on first use and
// kept; one that exited is started again on the next use. It is safe for
// concurrent use.
type pool struct {
	mu      sync.Mutex
	clients map[string]*plugin.Client
}

// close stops every plugin process.
func (p *pool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, c := range p.clients {
		c.Kill()
		delete(p.clients, name)
	}
}

// client returns a live connection to the named plugin, starting it with
// the configuration config makes.
func (p *pool) client(name string, config func() *plugin.ClientConfig) (*sdk.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.clients == nil {
		p.clients = map[string]*plugin.Client{}
	}
	c := p.clients[name]
	if c != nil && c.Exited() {
		c.Kill()
		c = nil
	}
	if c == nil {
		c = plugin.NewClient(config())
		p.clients[name] = c
	}
	rpc, err := c.Client()
	if err != nil {
		c.Kill()
		delete(p.clients, name)
		if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
			return nil, fmt.Errorf("plugin %q refused: its binary does not match its pinned SHA-256", name)
		}
		return nil, fmt.Errorf("start plugin %q: %w", name, err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w", name, err)
	}
	return raw.(*sdk.Client), nil
}

// kill stops the named plugin's process (the next use starts a new one).
func (p *pool) kill(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.clients[name]; c != nil {
		c.Kill()
		delete(p.clients, name)
	}
}

// names are the plugins started so far.
func (p *pool) names() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for n := range p.clients {
		out = append(out, n)
	}
	return out
}

// running returns the connection to the named plugin if it runs now
// (none, not started, when it does not).
func (p *pool) running(name string) []*sdk.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.clients[name]
	if c == nil || c.Exited() {
		return nil
	}
	rpc, err := c.Client()
	if err != nil {
		return nil
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		return nil
	}
	return []*sdk.Client{raw.(*sdk.Client)}
}

// Plugins runs actions in external executor plugins: binaries in Dir,
// each allowed only when pinned by its SHA-256 in Pins.
type Plugins struct {
	Dir  string
	Pins map[string]string // plugin name -> hex SHA-256 of its binary

	pool pool
}

// Close stops every plugin process.
func (p *Plugins) Close() { p.pool.close() }

func (p *Plugins) client(name string) (*sdk.Client, error) {
	pin, ok := p.Pins[name]
	if !ok {
		return nil, fmt.Errorf("plugin %q is not pinned in this agent's config (--plugin %s=SHA256)", name, name)
	}
	sum, err := hex.DecodeString(pin)
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("plugin %q: its pin is not a hex SHA-256", name)
	}
	path := filepath.Join(p.Dir, name)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("plugin %q: no binary at %s", name, path)
	}
	return p.pool.client(name, func() *plugin.ClientConfig {
		return &plugin.ClientConfig{
			HandshakeConfig:  sdk.Handshake,
			Plugins:          plugin.PluginSet{sdk.PluginName: &sdk.GRPCPlugin{}},
			Cmd:              withParent(exec.Command(path)),
			AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
			// go-plugin hashes the file before starting it: a binary
			// that is not the pinned one never runs.
			SecureConfig: &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()},
			Logger:       hclog.New(&hclog.LoggerOptions{Name: "plugin." + name, Level: hclog.Warn, Output: os.Stderr}),
		}
	})
}

// Execute runs a in the plugin a.Plugin names.
func (p *Plugins) Execute(ctx context.Context, a Action, stdout, stderr io.Writer) Result {
	c, err := p.client(a.Plugin)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: err.Error()}
	}
	runCtx := ctx
	if a.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, a.Timeout)
		defer cancel()
	}
	action := toPluginAction(a)
	if vs := c.Validate(runCtx, action); len(vs) > 0 {
		return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("plugin %s refused the action: %s: %s", a.Plugin, vs[0].GetField(), vs[0].GetDescription())}
	}
	res := c.Execute(runCtx, action, &pluginv1.Target{Transport: "local"}, stdout, stderr)
	if res.Status == StatusCancelled && ctx.Err() == nil && runCtx.Err() != nil {
		return Result{Status: StatusTimedOut, ExitCode: -1, Error: fmt.Sprintf("timed out after %s", a.Timeout)}
	}
	return Result{Status: res.Status, ExitCode: res.ExitCode, Error: res.Error}
}

// toPluginAction is a as the plugin protocol carries it.
func toPluginAction(a Action) *pluginv1.Action {
	action := &pluginv1.Action{Name: a.Name, Command: a.Command, Script: a.Script, Env: a.Env, WorkingDir: a.WorkingDir,
		Spec: a.Spec, TaskId: a.Task}
	if a.Timeout > 0 {
		action.Timeout = durationpb.New(a.Timeout)
	}
	if u := a.Upload; u != nil {
		action.Upload = &pluginv1.Upload{Destination: u.Destination, Content: u.Content, Mode: uint32(u.Mode.Perm())}
	}
	return action
}

// fromPluginAction is the inverse of toPluginAction.
func fromPluginAction(p *pluginv1.Action) Action {
	a := Action{Name: p.GetName(), Command: p.GetCommand(), Script: p.GetScript(), Env: p.GetEnv(), WorkingDir: p.GetWorkingDir(),
		Spec: p.GetSpec(), Task: p.GetTaskId(), Timeout: p.GetTimeout().AsDuration()}
	if u := p.GetUpload(); u != nil {
		a.Upload = &Upload{Destination: u.GetDestination(), Content: u.GetContent(), Mode: os.FileMode(u.GetMode()).Perm()}
	}
	return a
}

// Router sends each action to the executor its plugin names: "shell" (or
// none) to the local shell, "ssh" to SSH, "winrm" to WinRM, anything else
// to Plugins.
type Router struct {
	Shell   Executor
	SSH     Executor
	WinRM   Executor
	Plugins *Plugins
}

// Execute implements Executor.
func (r Router) Execute(ctx context.Context, a Action, stdout, stderr io.Writer) Result {
	if a.Plugin == "" || a.Plugin == "shell" {
		return r.Shell.Execute(ctx, a, stdout, stderr)
	}
	if a.Plugin == "ssh" && r.SSH != nil {
		return r.SSH.Execute(ctx, a, stdout, stderr)
	}
	if a.Plugin == "winrm" && r.WinRM != nil {
		return r.WinRM.Execute(ctx, a, stdout, stderr)
	}
	if a.Upload != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("plugin %q: uploads are done by the shell and ssh executors only", a.Plugin)}
	}
	if r.Plugins == nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("plugin %q: this agent has no plugins configured", a.Plugin)}
	}
	return r.Plugins.Execute(ctx, a, stdout, stderr)
}

// EndTask tells the executors that share something between a task's
// actions that the task is over: the built-in ones and the external
// plugins running now.
func (r Router) EndTask(ctx context.Context, taskID string) {
	for _, e := range []Executor{r.Shell, r.SSH, r.WinRM} {
		if te, ok := e.(TaskEnder); ok {
			te.EndTask(ctx, taskID)
		}
	}
	if r.Plugins != nil {
		r.Plugins.EndTask(ctx, taskID)
	}
}

// EndTask tells every external plugin running now that a task is over.
func (p *Plugins) EndTask(ctx context.Context, taskID string) {
	for _, name := range p.pool.names() {
		for _, c := range p.pool.running(name) {
			c.EndTask(ctx, taskID)
		}
	}
}

// TaskEnder is an executor that keeps something for a task's actions
// (connections) until told the task is over.
type TaskEnder interface {
	EndTask(ctx context.Context, taskID string)
}

// hangGuard is how long past an action's own timeout the agent waits for a
// built-in plugin to answer before giving up on it.
const hangGuard = 30 * time.Second

// withParent gives the plugin started by cmd this agent's process id
// (sdk.ParentEnv): a plugin ends when its agent is gone.
func withParent(cmd *exec.Cmd) *exec.Cmd {
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", sdk.ParentEnv, os.Getpid()))
	return cmd
}
