package executor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/opsconductor/opsconductor/agent/sandbox"
	"github.com/opsconductor/opsconductor/plugins/sdk"
	pluginv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/plugin/v1"
)

// BuiltinArg is the first argument that makes the agent binary serve one
// of its built-in executors as a plugin (the second names it).
const BuiltinArg = "__opsconductor_plugin"

// builtinConfigEnv carries the shell executor's settings to its plugin.
const builtinConfigEnv = "OPSCONDUCTOR_BUILTIN_CONFIG"

// BuiltinNames are the executors the agent binary serves itself.
var BuiltinNames = []string{"shell", "ssh", "winrm"}

// BuiltinConfig is what the built-in plugins need of the agent's
// settings.
type BuiltinConfig struct {
	Sandbox  *sandbox.Limits `json:"sandbox,omitempty"`  // shell: confine every action
	Defaults *sandbox.Limits `json:"defaults,omitempty"` // shell: limits of a sandboxed action
	// SSHPersist keeps an SSH connection open this long after its task
	// ends, for the next task on the same host and login (0: close it),
	// up to SSHPersistMax connections (the oldest idle one goes first).
	SSHPersist    time.Duration `json:"sshPersist,omitempty"`
	SSHPersistMax int           `json:"sshPersistMax,omitempty"`
}

// Builtins runs the built-in executors (shell, ssh, winrm) as plugins:
// the agent binary at Self started again with BuiltinArg, one process per
// executor, so one file installs everything and an executor that crashes
// or hangs fails its action, not the agent. Executor returns each one's
// handle.
type Builtins struct {
	Self   string // the agent binary (os.Executable)
	Config BuiltinConfig

	pool pool
}

// Close stops the plugin processes.
func (b *Builtins) Close() { b.pool.close() }

// Executor returns the built-in executor name, served by its plugin.
func (b *Builtins) Executor(name string) Executor { return builtinExecutor{b: b, name: name} }

func (b *Builtins) client(name string) (*sdk.Client, error) {
	return b.pool.client(name, func() *plugin.ClientConfig {
		cmd := exec.Command(b.Self, BuiltinArg, name)
		cfg, _ := json.Marshal(b.Config)
		// The join token is the agent's alone; actions never see it.
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "OPSCONDUCTOR_JOIN_TOKEN") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, builtinConfigEnv+"="+string(cfg), fmt.Sprintf("%s=%d", sdk.ParentEnv, os.Getpid()))
		return &plugin.ClientConfig{
			HandshakeConfig:  sdk.Handshake,
			Plugins:          plugin.PluginSet{sdk.PluginName: &sdk.GRPCPlugin{}},
			Cmd:              cmd,
			AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
			Logger:           hclog.New(&hclog.LoggerOptions{Name: "builtin." + name, Level: hclog.Warn, Output: os.Stderr}),
		}
	})
}

type builtinExecutor struct {
	b    *Builtins
	name string
}

// Execute runs a in the built-in plugin. The plugin enforces the action's
// timeout itself; the agent gives up on a plugin that stays silent well
// past it.
func (e builtinExecutor) Execute(ctx context.Context, a Action, stdout, stderr io.Writer) Result {
	c, err := e.b.client(e.name)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: err.Error()}
	}
	runCtx := ctx
	if a.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, a.Timeout+hangGuard)
		defer cancel()
	}
	res := c.Execute(runCtx, toPluginAction(a), &pluginv1.Target{Transport: e.name}, stdout, stderr)
	if res.Status == StatusCancelled && ctx.Err() == nil && runCtx.Err() != nil {
		// It hangs: replace it rather than send it the next action.
		e.b.pool.kill(e.name)
		if e.name == "shell" {
			KillTaskProcesses(a.Task)
		}
		return Result{Status: StatusTimedOut, ExitCode: -1, Error: fmt.Sprintf("the %s executor did not stop within %s of its %s timeout; it was restarted", e.name, hangGuard, a.Timeout)}
	}
	if res.Status == StatusFailed && strings.HasPrefix(res.Error, "plugin failed:") {
		res.Error = fmt.Sprintf("the %s executor crashed during the action (%s); it is restarted for the next one", e.name, strings.TrimPrefix(res.Error, "plugin failed: "))
		if e.name == "shell" {
			// What the action started outlives the plugin: stop it.
			if n := KillTaskProcesses(a.Task); n > 0 {
				res.Error += fmt.Sprintf("; %d processes it left were killed", n)
			}
		}
	}
	return Result{Status: res.Status, ExitCode: res.ExitCode, Error: res.Error}
}

// EndTask tells the plugin, if it runs, that a task is over.
func (e builtinExecutor) EndTask(ctx context.Context, taskID string) {
	for _, c := range e.b.pool.running(e.name) {
		c.EndTask(ctx, taskID)
	}
}

// ServeBuiltin serves the built-in executor name as a plugin until the
// agent stops it. The agent calls it, first thing, when run with
// BuiltinArg.
func ServeBuiltin(name string) {
	var cfg BuiltinConfig
	_ = json.Unmarshal([]byte(os.Getenv(builtinConfigEnv)), &cfg)
	var exec Executor
	switch name {
	case "shell":
		// A shell plugin before this one may have died mid-action.
		sandbox.SweepCgroups()
		// go-plugin's own settings (its client certificate among them)
		// are not the actions' business.
		exec = &Shell{Sandbox: cfg.Sandbox, Defaults: cfg.Defaults, DropEnv: []string{builtinConfigEnv, "OPSCONDUCTOR_PLUGIN", sdk.ParentEnv, "PLUGIN_"}}
	case "ssh":
		exec = SSH{}
	case "winrm":
		exec = WinRM{}
	default:
		fmt.Fprintf(os.Stderr, "no built-in executor %q (have %s)\n", name, strings.Join(BuiltinNames, ", "))
		os.Exit(2)
	}
	var idle *IdleConns
	if name == "ssh" && cfg.SSHPersist > 0 {
		idle = NewIdleConns(cfg.SSHPersist, cfg.SSHPersistMax)
		defer idle.Close()
	}
	sdk.Serve(&builtinServer{name: name, exec: exec, idle: idle, conns: map[string]*ConnCache{}})
}

// builtinServer is the plugin side of a built-in executor. It keeps one
// connection cache per task until EndTask, which hands the task's
// connections to idle (when set) for the next task to reuse.
type builtinServer struct {
	name string
	exec Executor
	idle *IdleConns

	mu    sync.Mutex
	conns map[string]*ConnCache
}

var _ sdk.TaskEnder = (*builtinServer)(nil)

// builtinSpecs are the spec keys of the built-in executors (docs/plugins.md
// says more of each).
var builtinSpecs = map[string][][2]string{
	"shell": {{"sandbox", "true: run confined"}, {"sandbox_user", "user of a sandboxed action"}, {"sandbox_memory", "memory limit, e.g. 256M"},
		{"sandbox_processes", "process limit"}, {"sandbox_cpu", "CPU time per process, e.g. 30s"}, {"sandbox_open_files", "open files per process"}},
	"ssh": {{"host", "address (required)"}, {"port", "default 22"}, {"user", "default root"}, {"key_file", "private key on the agent"},
		{"private_key", "a stored credential, set by the control plane"}, {"password", "password"}, {"agent_socket", "ssh-agent socket, env: $SSH_AUTH_SOCK"},
		{"known_hosts", "trusted host keys"}, {"host_key_policy", "strict (default) or tofu"}, {"host_key_fingerprint", "pinned SHA256:..."},
		{"connect_timeout", "default 10s"}, {"keepalive_interval", "default 15s"}, {"keepalive_count_max", "default 3"},
		{"proxy_jump", "[user@]host[:port] of a bastion"}, {"proxy_jump_fingerprint", "pin of the bastion's key"}, {"become", "true: sudo"},
		{"become_password", "sudo password"}, {"connect_only", "true: log in, run nothing"}},
	"winrm": {{"host", "address (required)"}, {"port", "5985, or 5986 with https"}, {"user", "login"}, {"password", "login password"},
		{"https", "true: HTTPS"}, {"ca_file", "trusted CA bundle"}, {"insecure_skip_verify", "true: accept any certificate"},
		{"auth", "basic (default) or ntlm"}, {"shell", "cmd (default) or powershell"}, {"connect_timeout", "default 10s"},
		{"operation_timeout", "default 60s"}, {"connect_only", "true: open a shell, run nothing"}},
}

func (s *builtinServer) Describe(context.Context) (*pluginv1.DescribeResponse, error) {
	d := &pluginv1.DescribeResponse{Name: s.name, Version: "builtin", Kinds: []string{"command", "script", "upload"}}
	switch s.name {
	case "shell":
		d.Transports = []string{"local"}
	case "ssh":
		d.Transports = []string{"ssh"}
	case "winrm":
		d.Transports, d.Kinds = []string{"winrm"}, []string{"command", "script"}
	}
	for _, k := range builtinSpecs[s.name] {
		d.Spec = append(d.Spec, &pluginv1.SpecKey{Name: k[0], Description: k[1], Required: k[0] == "host"})
	}
	return d, nil
}

func (s *builtinServer) Validate(context.Context, *pluginv1.Action) []*pluginv1.Violation { return nil }

func (s *builtinServer) Execute(ctx context.Context, action *pluginv1.Action, _ *pluginv1.Target, stdout, stderr io.Writer) sdk.Result {
	a := fromPluginAction(action)
	a.Plugin = s.name
	if a.Task != "" {
		ctx = WithConnCache(ctx, s.cache(a.Task))
	}
	res := s.exec.Execute(ctx, a, stdout, stderr)
	return sdk.Result{Status: res.Status, ExitCode: res.ExitCode, Error: res.Error}
}

func (s *builtinServer) cache(task string) *ConnCache {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.conns[task]
	if c == nil {
		c = NewConnCache(s.idle)
		s.conns[task] = c
	}
	return c
}

func (s *builtinServer) EndTask(_ context.Context, task string) {
	s.mu.Lock()
	c := s.conns[task]
	delete(s.conns, task)
	s.mu.Unlock()
	if c != nil {
		c.Close()
	}
}
