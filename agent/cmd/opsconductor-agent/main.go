// Command opsconductor-agent runs the OpsConductor agent on a host: it
// enrolls with a join token once, then long-polls the control plane for
// tasks and runs them locally.
//
//	opsconductor-agent --server http://cp:8080 --join-token ocj_... --labels role=web,env=prod
//
// Its other verbs put it on a Linux host as a systemd service (the same
// steps installer/install.sh takes once it has downloaded the binary):
//
//	opsconductor-agent install --server https://cp --token ocj_... [--labels ...] [--dry-run]
//	opsconductor-agent uninstall [--purge]
//	opsconductor-agent status
//	opsconductor-agent version
//
// Every flag can also be set through the environment (OPSCONDUCTOR_SERVER,
// OPSCONDUCTOR_JOIN_TOKEN or OPSCONDUCTOR_JOIN_TOKEN_FILE, OPSCONDUCTOR_STATE_DIR,
// OPSCONDUCTOR_AGENT_NAME, OPSCONDUCTOR_LABELS, OPSCONDUCTOR_CAPACITY,
// OPSCONDUCTOR_POLL_WAIT, OPSCONDUCTOR_KEY_MAX_AGE, OPSCONDUCTOR_SAFETY_RULES, OPSCONDUCTOR_LOG_FORMAT, OPSCONDUCTOR_LOG_LEVEL).
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"sigs.k8s.io/yaml"

	"github.com/opsconductor/opsconductor/agent"
	"github.com/opsconductor/opsconductor/agent/executor"
	"github.com/opsconductor/opsconductor/agent/logging"
	"github.com/opsconductor/opsconductor/agent/safety"
	"github.com/opsconductor/opsconductor/agent/sandbox"
	"github.com/opsconductor/opsconductor/agent/state"
	"github.com/opsconductor/opsconductor/agent/transport"
	"github.com/opsconductor/opsconductor/proto/protocol"
)

func main() {
	// The agent run again as the sandbox helper: confine, then exec.
	if len(os.Args) > 1 && os.Args[1] == sandbox.HelperArg {
		sandbox.Main()
	}
	// The agent run again as one of its built-in executor plugins.
	if len(os.Args) > 2 && os.Args[1] == executor.BuiltinArg {
		executor.ServeBuiltin(os.Args[2])
		return
	}
	args := os.Args[1:]
	command := run
	if len(args) > 0 {
		if sub, ok := subcommands[args[0]]; ok {
			command, args = sub, args[1:]
		}
	}
	if err := command(args); err != nil {
		fmt.Fprintln(os.Stderr, "opsconductor-agent:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func run(args []string) error {
	// --env-file (or OPSCONDUCTOR_ENV_FILE) is read first: the flags'
	// defaults come from the environment. A Windows service has no
	// EnvironmentFile= as a systemd unit has; install.ps1 passes it.
	if err := loadEnvFile(args); err != nil {
		return err
	}
	fs := pflag.NewFlagSet("opsconductor-agent", pflag.ContinueOnError)
	server := fs.String("server", env("OPSCONDUCTOR_SERVER", "http://127.0.0.1:8080"), "control plane URL (env OPSCONDUCTOR_SERVER)")
	joinToken := fs.String("join-token", env("OPSCONDUCTOR_JOIN_TOKEN", ""), "join token for the first start (env OPSCONDUCTOR_JOIN_TOKEN, or a file in OPSCONDUCTOR_JOIN_TOKEN_FILE)")
	stateDir := fs.String("state-dir", env("OPSCONDUCTOR_STATE_DIR", "/var/lib/opsconductor-agent"), "where the agent keeps its identity (env OPSCONDUCTOR_STATE_DIR)")
	name := fs.String("name", env("OPSCONDUCTOR_AGENT_NAME", ""), "name shown to operators; default the hostname (env OPSCONDUCTOR_AGENT_NAME)")
	labels := fs.String("labels", env("OPSCONDUCTOR_LABELS", ""), "labels jobs select on, e.g. role=web,env=prod (env OPSCONDUCTOR_LABELS)")
	capacity := fs.Int("capacity", envInt("OPSCONDUCTOR_CAPACITY", 4), "tasks run at once on this host (env OPSCONDUCTOR_CAPACITY)")
	remoteCapacity := fs.Int("remote-capacity", envInt("OPSCONDUCTOR_REMOTE_CAPACITY", 256),
		"remote-host tasks (over SSH, as a jump host) run at once (env OPSCONDUCTOR_REMOTE_CAPACITY)")
	sshPersist := fs.Duration("ssh-persist", envDuration("OPSCONDUCTOR_SSH_PERSIST", 0),
		"keep an SSH connection open this long after its task, for the next task on the same host and login, like OpenSSH's ControlPersist (0: close it) (env OPSCONDUCTOR_SSH_PERSIST)")
	sshPersistMax := fs.Int("ssh-persist-max", envInt("OPSCONDUCTOR_SSH_PERSIST_MAX", 1000),
		"most SSH connections kept open by --ssh-persist; past it the one idle longest is closed (env OPSCONDUCTOR_SSH_PERSIST_MAX)")
	keyMaxAge := fs.Duration("key-max-age", envDuration("OPSCONDUCTOR_KEY_MAX_AGE", 30*24*time.Hour), "rotate the agent key at start when it is older (0: never) (env OPSCONDUCTOR_KEY_MAX_AGE)")
	pollWait := fs.Duration("poll-wait", envDuration("OPSCONDUCTOR_POLL_WAIT", 30*time.Second), "longest wait of one long-poll (env OPSCONDUCTOR_POLL_WAIT)")
	logFormat := fs.String("log-format", env("OPSCONDUCTOR_LOG_FORMAT", "json"), "json or console (env OPSCONDUCTOR_LOG_FORMAT)")
	logLevel := fs.String("log-level", env("OPSCONDUCTOR_LOG_LEVEL", "info"), "debug, info, warn or error (env OPSCONDUCTOR_LOG_LEVEL)")
	caFile := fs.String("ca-file", env("OPSCONDUCTOR_CA_FILE", ""), "PEM CA bundle the server certificate must chain to (env OPSCONDUCTOR_CA_FILE)")
	pin := fs.String("server-fingerprint", env("OPSCONDUCTOR_SERVER_FINGERPRINT", ""), "hex SHA-256 of the server certificate to pin instead (env OPSCONDUCTOR_SERVER_FINGERPRINT)")
	clientCert := fs.String("client-cert", env("OPSCONDUCTOR_CLIENT_CERT", ""), "PEM client certificate for mutual TLS (env OPSCONDUCTOR_CLIENT_CERT)")
	clientKey := fs.String("client-key", env("OPSCONDUCTOR_CLIENT_KEY", ""), "PEM key of --client-cert (env OPSCONDUCTOR_CLIENT_KEY)")
	safetyRules := fs.String("safety-rules", env("OPSCONDUCTOR_SAFETY_RULES", ""), "YAML/JSON file of extra dangerous-command rules and allow-lists (env OPSCONDUCTOR_SAFETY_RULES)")
	pluginDir := fs.String("plugin-dir", env("OPSCONDUCTOR_PLUGIN_DIR", "/usr/lib/opsconductor/plugins"), "directory of external executor plugins (env OPSCONDUCTOR_PLUGIN_DIR)")
	pins := fs.StringArray("plugin", nil, "allow the plugin NAME in --plugin-dir, pinned to the hex SHA-256 of its binary: NAME=SHA256 (repeat)")
	sandboxAll := fs.Bool("sandbox", envBool("OPSCONDUCTOR_SANDBOX"), "run every local action in a sandbox (env OPSCONDUCTOR_SANDBOX); actions may also ask for one")
	sandboxUser := fs.String("sandbox-user", env("OPSCONDUCTOR_SANDBOX_USER", "nobody"), "unprivileged user sandboxed actions run as (env OPSCONDUCTOR_SANDBOX_USER)")
	sandboxMemory := fs.String("sandbox-memory", env("OPSCONDUCTOR_SANDBOX_MEMORY", "1G"), "memory of one sandboxed action, e.g. 512M (env OPSCONDUCTOR_SANDBOX_MEMORY)")
	sandboxProcesses := fs.Int("sandbox-processes", envInt("OPSCONDUCTOR_SANDBOX_PROCESSES", 256), "processes of one sandboxed action at once (env OPSCONDUCTOR_SANDBOX_PROCESSES)")
	sandboxCPU := fs.Duration("sandbox-cpu", envDuration("OPSCONDUCTOR_SANDBOX_CPU", time.Hour), "CPU time of each sandboxed process (env OPSCONDUCTOR_SANDBOX_CPU)")
	sandboxFiles := fs.Int("sandbox-open-files", envInt("OPSCONDUCTOR_SANDBOX_OPEN_FILES", 1024), "open files of each sandboxed process (env OPSCONDUCTOR_SANDBOX_OPEN_FILES)")
	metricsAddr := fs.String("metrics-addr", env("OPSCONDUCTOR_METRICS_ADDR", ""), "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9102 (default off) (env OPSCONDUCTOR_METRICS_ADDR)")
	_ = fs.String("env-file", env("OPSCONDUCTOR_ENV_FILE", ""), "read KEY=VALUE lines into the environment first (for a Windows service) (env OPSCONDUCTOR_ENV_FILE)")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if *version {
		fmt.Printf("opsconductor-agent %s (agent protocol %d)\n", protocol.Version, protocol.AgentProtocolVersion)
		return nil
	}
	if *joinToken == "" {
		if path := os.Getenv("OPSCONDUCTOR_JOIN_TOKEN_FILE"); path != "" {
			b, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("OPSCONDUCTOR_JOIN_TOKEN_FILE: %w", err)
			}
			*joinToken = strings.TrimSpace(string(b))
		}
	}
	labelMap, err := ParseLabels(*labels)
	if err != nil {
		return fmt.Errorf("--labels: %w", err)
	}
	logger, err := logging.New(*logFormat, *logLevel)
	if err != nil {
		return err
	}
	defer func() { _ = logger.Sync() }()

	var safetyCfg safety.Config
	if *safetyRules != "" {
		raw, err := os.ReadFile(*safetyRules)
		if err != nil {
			return fmt.Errorf("--safety-rules: %w", err)
		}
		if err := yaml.UnmarshalStrict(raw, &safetyCfg); err != nil {
			return fmt.Errorf("--safety-rules %s: %w", *safetyRules, err)
		}
	}
	checker, err := safety.New(safetyCfg)
	if err != nil {
		return fmt.Errorf("--safety-rules: %w", err)
	}
	client, err := transport.NewHTTPClient(transport.Options{CAFile: *caFile, PinSHA256: *pin, ClientCert: *clientCert, ClientKey: *clientKey})
	if err != nil {
		return err
	}
	if strings.HasPrefix(*server, "http://") {
		logger.Warn("talking to the control plane over plain HTTP: use https:// outside a lab")
	}
	plugins := &executor.Plugins{Dir: *pluginDir, Pins: map[string]string{}}
	for _, p := range *pins {
		name, sum, ok := strings.Cut(p, "=")
		if !ok || name == "" || len(sum) != 64 {
			return fmt.Errorf("--plugin %q: want NAME=SHA256 (64 hex digits)", p)
		}
		plugins.Pins[name] = strings.ToLower(sum)
	}
	defer plugins.Close()
	memory, err := sandbox.ParseBytes(*sandboxMemory)
	if err != nil {
		return fmt.Errorf("--sandbox-memory: %w", err)
	}
	limits := &sandbox.Limits{User: *sandboxUser, Memory: memory, Processes: *sandboxProcesses, CPU: *sandboxCPU, OpenFiles: *sandboxFiles}
	// The built-in executors run in plugin processes of this same binary:
	// one that crashes or hangs fails its action, not the agent.
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the agent binary (to run its built-in executors): %w", err)
	}
	if *sshPersist < 0 {
		return fmt.Errorf("--ssh-persist %s: must be 0 (off) or a positive duration", *sshPersist)
	}
	if *sshPersistMax < 1 {
		return fmt.Errorf("--ssh-persist-max %d: must be at least 1", *sshPersistMax)
	}
	builtins := &executor.Builtins{Self: self, Config: executor.BuiltinConfig{SSHPersist: *sshPersist, SSHPersistMax: *sshPersistMax}}
	defer builtins.Close()
	if *sandboxAll {
		builtins.Config.Sandbox = limits
		logger.Sugar().Infof("every local action runs in a sandbox: %s", limits.Describe())
	} else {
		// An action that asks for a sandbox gets the agent's user and
		// limits unless it sets others.
		builtins.Config.Defaults = limits
	}
	// What the agent tells the control plane it can run.
	have := []string{"shell", "ssh", "winrm"}
	for name := range plugins.Pins {
		have = append(have, name)
	}
	slices.Sort(have[3:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var metrics *agent.Metrics
	if *metricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		metrics = agent.NewMetrics(reg)
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-addr: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		logger.Info("serving metrics", zap.String("addr", ln.Addr().String()))
	}
	a, err := agent.New(agent.Config{
		ServerURL: strings.TrimRight(*server, "/"), JoinToken: *joinToken, Name: *name, Labels: labelMap,
		Capacity: *capacity, RemoteCapacity: *remoteCapacity, PollWait: *pollWait, KeyMaxAge: *keyMaxAge, Safety: checker, Plugins: have,
		Metrics: metrics,
	}, state.FileStore{Dir: *stateDir}, executor.Router{Shell: builtins.Executor("shell"), SSH: builtins.Executor("ssh"), WinRM: builtins.Executor("winrm"), Plugins: plugins}, client, logger)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// ParseLabels parses "k=v,k2=v2" (the control plane checks each key and value).
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("%q is not key=value", part)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
}

func envInt(name string, def int) int {
	if v, ok := os.LookupEnv(name); ok {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
		fmt.Fprintf(os.Stderr, "opsconductor-agent: ignoring %s=%q: not a number\n", name, v)
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, ok := os.LookupEnv(name); ok {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
		fmt.Fprintf(os.Stderr, "opsconductor-agent: ignoring %s=%q: not a duration\n", name, v)
	}
	return def
}

func envBool(name string) bool {
	if v, ok := os.LookupEnv(name); ok {
		if b, err := strconv.ParseBool(v); err == nil {
			return b
		}
		fmt.Fprintf(os.Stderr, "opsconductor-agent: ignoring %s=%q: not true or false\n", name, v)
	}
	return false
}

// loadEnvFile sets the KEY=VALUE lines of the --env-file named in args
// (or OPSCONDUCTOR_ENV_FILE) in the environment, without overriding a
// variable already set; blank lines and # comments are skipped.
func loadEnvFile(args []string) error {
	path := os.Getenv("OPSCONDUCTOR_ENV_FILE")
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--env-file="); ok {
			path = v
		} else if a == "--env-file" && i+1 < len(args) {
			path = args[i+1]
		}
	}
	if path == "" {
		return nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--env-file: %w", err)
	}
	for n, line := range strings.Split(strings.ReplaceAll(string(raw), "\r\n", "\n"), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("--env-file %s line %d: want KEY=VALUE", path, n+1)
		}
		if _, set := os.LookupEnv(strings.TrimSpace(k)); !set {
			if err := os.Setenv(strings.TrimSpace(k), v); err != nil {
				return err
			}
		}
	}
	return nil
}
