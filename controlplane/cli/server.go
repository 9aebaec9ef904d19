package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/opsconductor/opsconductor/agent"
	"github.com/opsconductor/opsconductor/agent/executor"
	"github.com/opsconductor/opsconductor/agent/logging"
	"github.com/opsconductor/opsconductor/agent/state"
	"github.com/opsconductor/opsconductor/controlplane/config"
	"github.com/opsconductor/opsconductor/controlplane/remote"
	"github.com/opsconductor/opsconductor/controlplane/router"
	"github.com/opsconductor/opsconductor/controlplane/server"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

func newServerCmd() *cobra.Command {
	cfg := config.Default()
	var cmd *cobra.Command
	cmd = &cobra.Command{
		Use:   "server",
		Short: "Run the control plane (every service in one process)",
		Long: `Run the control plane: jobs, executions, the agent gateway and registry.

Settings come from defaults, then the environment, then flags. With no
database configured it keeps its state in SQLite under ./opsconductor-data;
set DATABASE_URL=postgres://... for production and REDIS_URL when several
replicas share the database.`,
		Args: cobra.NoArgs,
		RunE: withServerConfig(&cfg, func(cmd *cobra.Command, logger *zap.Logger) error {
			return serve(cmd.Context(), cfg, logger, nil)
		}),
	}
	cfg.BindFlags(cmd.Flags())
	return cmd
}

func newMigrateCmd() *cobra.Command {
	cfg := config.Default()
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Bring the database's schemas up to this version, then exit",
		Long: `Apply the migrations of every service's schema that have not run yet, then
exit. Servers also migrate when they start; run this first (a Kubernetes
Job, a deploy step) so a rollout does not wait on it. It takes the
server's settings (DATABASE_URL above all) and is safe to run while older
replicas serve: migrations only add.`,
		Args: cobra.NoArgs,
		RunE: withServerConfig(&cfg, func(cmd *cobra.Command, logger *zap.Logger) error {
			return server.Migrate(cmd.Context(), cfg, logger)
		}),
	}
	cfg.BindFlags(cmd.Flags())
	return cmd
}

// withServerConfig completes cfg from the environment (flags win) and
// runs fn with a logger made from it: what server and migrate share.
func withServerConfig(cfg *config.Config, fn func(cmd *cobra.Command, logger *zap.Logger) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if err := cfg.ApplyEnv(os.LookupEnv, cmd.Flags().Changed); err != nil {
			return fmt.Errorf("environment: %w", err)
		}
		logger, err := logging.New(cfg.LogFormat, cfg.LogLevel)
		if err != nil {
			return err
		}
		defer func() { _ = logger.Sync() }()
		return fn(cmd, logger)
	}
}

// serve runs the control plane until ctx ends. ready, when not nil, is
// called with the bound address once it listens.
func serve(ctx context.Context, cfg config.Config, logger *zap.Logger, ready func(addr string)) error {
	app, err := server.New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer app.Close()
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	if ready != nil {
		ready(ln.Addr().String())
	}
	return app.Run(ctx, ln)
}

func newDevCmd(g *globals) *cobra.Command {
	var dataDir, addr, logLevel string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Start a control plane on the embedded store plus one local agent",
		Long: `Start a playground: a control plane on the embedded SQLite store and one
agent on this host (name "local", labels env=dev,role=local), ready in
seconds. Nothing else needs to run. Stop it with Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logging.New("console", logLevel)
			if err != nil {
				return err
			}
			defer func() { _ = logger.Sync() }()
			return runDev(cmd.Context(), g, dataDir, addr, logger)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", ".opsconductor/dev", "where the playground keeps its database and agent identity")
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:8080", "listen address")
	cmd.Flags().StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error")
	return cmd
}

func runDev(ctx context.Context, g *globals, dataDir, addr string, logger *zap.Logger) error {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	cfg := config.Default()
	cfg.Addr = addr
	cfg.DatabaseURL = "sqlite:" + filepath.Join(abs, "db")
	cfg.LogFormat, cfg.LogLevel = "console", "warn"
	cfg.InsecureHTTP = true // loopback playground; said so below
	tokenFile := filepath.Join(abs, "admin-token")
	cfg.BootstrapTokenFile = tokenFile

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan string, 1)
	serverErr := make(chan error, 1)
	go func() { serverErr <- serve(ctx, cfg, logger, func(a string) { ready <- a }) }()
	var url string
	select {
	case err := <-serverErr:
		return err
	case a := <-ready:
		url = "http://" + a
	}

	raw, err := os.ReadFile(tokenFile)
	if err != nil {
		return fmt.Errorf("read the admin token %s (remove %s to start afresh): %w", tokenFile, abs, err)
	}
	adminToken := strings.TrimSpace(string(raw))

	st := state.FileStore{Dir: filepath.Join(abs, "agent")}
	joinToken := ""
	if _, err := st.Load(); err != nil {
		reg := opsconductorv1connect.NewAgentRegistryServiceClient(httpClient(), url, connect.WithInterceptors(bearerToken(adminToken)))
		resp, err := reg.CreateJoinToken(ctx, connect.NewRequest(&opsconductorv1.CreateJoinTokenRequest{
			Ttl: durationpb.New(time.Minute), MaxUses: 1, Description: "opsconductor dev local agent",
		}))
		if err != nil {
			return fmt.Errorf("create join token for the local agent: %w", err)
		}
		joinToken = resp.Msg.GetToken()
	}
	ag, err := agent.New(agent.Config{ServerURL: url, JoinToken: joinToken, Name: "local", Labels: map[string]string{"env": "dev", "role": "local"}},
		st, &executor.Shell{}, nil, logger)
	if err != nil {
		return err
	}
	agentErr := make(chan error, 1)
	go func() { agentErr <- ag.Run(ctx) }()

	fmt.Fprintf(g.stdout, `OpsConductor dev is ready at %s (state in %s)
Plain HTTP on loopback: dev mode only. The admin token is in %s.

Next, in another terminal:
  export OPSCONDUCTOR_SERVER=%s
  export OPSCONDUCTOR_TOKEN=$(cat %s)
  opsconductor agent list
  opsconductor job apply -f docs/examples/hello.yaml
  opsconductor run hello --follow

Press Ctrl-C to stop.
`, url, abs, tokenFile, url, tokenFile)
	select {
	case err := <-serverErr:
		return err
	case err := <-agentErr:
		if err != nil {
			return fmt.Errorf("local agent: %w", err)
		}
		cancel()
		return <-serverErr
	case <-ctx.Done():
		<-agentErr
		return <-serverErr
	}
}

// newHealthCmd checks a control plane's /health, for container health
// checks where there is no curl (the image has nothing but the binary).
func newHealthCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "health",
		Short: "Exit 0 when the control plane at --server reports itself healthy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.server+"/health", nil)
			if err != nil {
				return err
			}
			resp, err := g.client.Do(req)
			if err != nil {
				return fmt.Errorf("health: %w", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			fmt.Fprintln(g.stdout, strings.TrimSpace(string(body)))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("health: %s", resp.Status)
			}
			return nil
		},
	}
}

// newGatewayCmd runs the front door of a split deployment.
func newGatewayCmd() *cobra.Command {
	var addr, logLevel, tlsCert, tlsKey string
	var insecure bool
	urls := map[string]*string{}
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Route API calls to the services of a split deployment (opsconductor server --services=...)",
		Long: `Serve the API of a split deployment as one control plane: each call goes to
the process that runs its service (REST paths by the API's HTTP rules),
through a circuit breaker per service, so a service that is down fails its
own calls at once with a clear error while the others go on. Agents, the
CLI and browsers point at the gateway. Every setting has an environment
variable (OPSCONDUCTOR_JOBS_URL, ...).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logging.New("json", logLevel)
			if err != nil {
				return err
			}
			defer func() { _ = logger.Sync() }()
			targets := map[string]string{}
			for name, u := range urls {
				targets[name] = *u
			}
			r, err := router.New(server.Services(), targets, remote.Options{}, logger)
			if err != nil {
				return err
			}
			if tlsCert == "" && !insecure {
				return fmt.Errorf("--tls-cert: set --tls-cert and --tls-key to serve HTTPS, or --insecure-http to allow plain HTTP")
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", addr, err)
			}
			srv := &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, Protocols: new(http.Protocols)}
			// HTTP/1.1 and HTTP/2 (gRPC): over TLS, or h2c when plain.
			srv.Protocols.SetHTTP1(true)
			if tlsCert != "" {
				srv.Protocols.SetHTTP2(true)
			} else {
				srv.Protocols.SetUnencryptedHTTP2(true)
				logger.Warn("serving plain HTTP (--insecure-http): tokens cross the network in clear")
			}
			go func() {
				<-cmd.Context().Done()
				ctx, cancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), 10*time.Second)
				defer cancel()
				_ = srv.Shutdown(ctx)
			}()
			logger.Info("gateway listening", zap.String("addr", ln.Addr().String()), zap.Any("services", targets))
			if tlsCert != "" {
				err = srv.ServeTLS(ln, tlsCert, tlsKey)
			} else {
				err = srv.Serve(ln)
			}
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return err
		},
	}
	envOr := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("OPSCONDUCTOR_ADDR", "127.0.0.1:8080"), "listen address (env OPSCONDUCTOR_ADDR)")
	for _, name := range config.AllServices {
		env := "OPSCONDUCTOR_" + strings.ToUpper(name) + "_URL"
		urls[name] = cmd.Flags().String(name+"-url", os.Getenv(env), "where the "+name+" service runs (env "+env+")")
	}
	cmd.Flags().StringVar(&tlsCert, "tls-cert", os.Getenv("OPSCONDUCTOR_TLS_CERT"), "PEM certificate to serve HTTPS with (env OPSCONDUCTOR_TLS_CERT)")
	cmd.Flags().StringVar(&tlsKey, "tls-key", os.Getenv("OPSCONDUCTOR_TLS_KEY"), "PEM key of --tls-cert (env OPSCONDUCTOR_TLS_KEY)")
	cmd.Flags().BoolVar(&insecure, "insecure-http", os.Getenv("OPSCONDUCTOR_INSECURE_HTTP") == "true", "allow plain HTTP (env OPSCONDUCTOR_INSECURE_HTTP)")
	cmd.Flags().StringVar(&logLevel, "log-level", envOr("OPSCONDUCTOR_LOG_LEVEL", "info"), "debug, info, warn or error (env OPSCONDUCTOR_LOG_LEVEL)")
	return cmd
}
