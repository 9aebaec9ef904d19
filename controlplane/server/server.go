// Package server assembles the control plane: it opens each service's
// store, wires the services together explicitly, mounts their Connect
// handlers behind the REST transcoder (connectrpc.com/vanguard), adds
// /health, /version and /metrics, and runs the HTTP server and background
// loops until its context ends.
//
// A hand-written Connect JSON call (curl -H 'Content-Type: application/json'
// to /opsconductor.v1.JobService/GetJob) must send the header
// "Connect-Protocol-Version: 1": the transcoder needs it to tell Connect
// from REST. REST calls at /api/v1/... need nothing special.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"google.golang.org/protobuf/reflect/protoreflect"

	agentsafety "github.com/opsconductor/opsconductor/agent/safety"
	"github.com/opsconductor/opsconductor/controlplane/audit"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/config"
	"github.com/opsconductor/opsconductor/controlplane/correlation"
	"github.com/opsconductor/opsconductor/controlplane/credential"
	"github.com/opsconductor/opsconductor/controlplane/dispatch"
	"github.com/opsconductor/opsconductor/controlplane/execution"
	"github.com/opsconductor/opsconductor/controlplane/interceptor"
	"github.com/opsconductor/opsconductor/controlplane/inventory"
	"github.com/opsconductor/opsconductor/controlplane/job"
	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/notify"
	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/ratelimit"
	"github.com/opsconductor/opsconductor/controlplane/registry"
	"github.com/opsconductor/opsconductor/controlplane/remote"
	"github.com/opsconductor/opsconductor/controlplane/retention"
	"github.com/opsconductor/opsconductor/controlplane/safety"
	"github.com/opsconductor/opsconductor/controlplane/schedule"
	"github.com/opsconductor/opsconductor/controlplane/secretbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1/agentv1connect"
	interservicev1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/interservice/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/interservice/v1/interservicev1connect"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
	"github.com/opsconductor/opsconductor/proto/protocol"
)

// App is a running control plane: every service in one process, or
// (split mode) the services --services names, with the others reached
// through their internal API.
type App struct {
	cfg    config.Config
	tls    *tls.Config
	logger *zap.Logger
	dbs    []*store.DB
	redis  *redis.Client
	hub    *notify.Hub
	relays []*outbox.Relay
	// The services' events go from their outboxes (publishers) over the
	// bus to the audit service's store (auditor).
	publishers []*outbox.Publisher
	auditor    *audit.Consumer   // nil unless the audit service runs here
	auditLog   *audit.Log        // nil unless the audit service runs here
	retention  *retention.Purger // what this process keeps for a time
	notifier   *audit.Notifier   // nil unless the audit service runs here
	eventBus   bus.Bus
	rabbit     *bus.Rabbit         // nil unless --bus rabbitmq
	gateway    *dispatch.Gateway   // nil unless the executions service runs here
	sync       *inventory.Syncer   // nil: no external inventory
	scheduler  *schedule.Scheduler // nil unless the scheduling service runs here
	remotes    []*remote.Service   // the services reached over the network
	handler    http.Handler
}

// New opens and migrates the stores and builds the services. Close
// releases what New opened; Run serves.
func New(ctx context.Context, cfg config.Config, logger *zap.Logger) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	a := &App{cfg: cfg, logger: logger}
	if cfg.TLSCert != "" {
		tlsCfg, err := serverTLS(cfg)
		if err != nil {
			return nil, err
		}
		a.tls = tlsCfg
	}
	ok := false
	defer func() {
		if !ok {
			a.Close()
		}
	}()
	runs := cfg.Runs
	// remoteOf is the client of a service that runs elsewhere.
	remotes := map[string]*remote.Service{}
	remoteOf := func(name string) *remote.Service {
		if r, ok := remotes[name]; ok {
			return r
		}
		r := remote.NewService(name, strings.TrimRight(cfg.ServiceURL(name), "/"), remote.Options{Token: cfg.ServiceToken,
			// A connection check waits for its hosts (up to 90s).
			Slow: map[string]time.Duration{interservicev1connect.ExecutionsInternalServiceCheckHostsProcedure: 2 * time.Minute}}, logger)
		remotes[name] = r
		a.remotes = append(a.remotes, r)
		return r
	}
	var plugins []string
	for _, p := range strings.Split(cfg.Plugins, ",") {
		if p = strings.TrimSpace(p); p != "" {
			plugins = append(plugins, p)
		}
	}

	if cfg.RedisURL != "" {
		opts, err := redis.ParseURL(cfg.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("parse redis url: %w", err)
		}
		a.redis = redis.NewClient(opts)
		if err := a.redis.Ping(ctx).Err(); err != nil {
			return nil, fmt.Errorf("connect to redis: %w", err)
		}
	}
	a.hub = notify.New(a.redis, logger)
	metricsReg := prometheus.NewRegistry()
	metricsReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var eventBus bus.Bus
	switch cfg.EventBus() {
	case "redis":
		eventBus = bus.NewRedis(a.redis, cfg.BusPrefix, bus.Options{}, logger)
	case "rabbitmq":
		a.rabbit = bus.NewRabbit(cfg.RabbitMQURL, cfg.BusPrefix, bus.Options{}, logger)
		eventBus = a.rabbit
	default:
		eventBus = bus.NewMemory(bus.Options{})
	}
	eventBus = bus.Instrument(eventBus, cfg.EventBus(), metricsReg)
	a.eventBus = eventBus
	key := secretbox.NewKey()
	if cfg.SecretKey != "" {
		key, _ = base64.StdEncoding.DecodeString(cfg.SecretKey) // checked by Validate
	} else {
		logger.Warn("no --secret-key: secret parameters are sealed with a key of this process only; executions still queued across a restart cannot open theirs")
	}
	box, err := secretbox.New(key)
	if err != nil {
		return nil, err
	}
	safetyCfg, err := safety.LoadConfig(cfg.SafetyRules)
	if err != nil {
		return nil, err
	}
	checker, err := agentsafety.New(safetyCfg)
	if err != nil {
		return nil, fmt.Errorf("safety rules: %w", err)
	}
	safetySvc := safety.NewService(checker)

	type mount struct {
		path    string
		handler http.Handler
	}
	var mounts []mount
	add := func(path string, h http.Handler) { mounts = append(mounts, mount{path, h}) }
	// handlers are filled in once the interceptors exist (below); each
	// service that runs here adds its own.
	var handlers []func(opts connect.HandlerOption)
	// home is the first database of this process: where refusals and
	// (without the audit service) call records are written.
	var home *store.DB

	// The jobs service, with the users and tokens.
	var (
		jobs      *job.Service
		authStore *auth.Store
		authn     auth.PrincipalSource
	)
	if runs(config.ServiceJobs) {
		url := cfg.ServiceDatabaseURL(config.ServiceJobs)
		jobsDB, err := a.openStore(ctx, url, job.Schema, job.Migrations())
		if err != nil {
			return nil, err
		}
		authDB, err := a.openStore(ctx, url, auth.Schema, auth.Migrations())
		if err != nil {
			return nil, err
		}
		home = jobsDB
		authStore = auth.NewStore(authDB)
		if _, err := auth.Bootstrap(ctx, authStore, cfg.BootstrapTokenFile, logger); err != nil {
			return nil, fmt.Errorf("bootstrap admin token: %w", err)
		}
		jwtCfg := auth.JWTConfig{Secret: []byte(cfg.JWTSecret), Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience}
		if cfg.JWTJWKS != "" {
			if jwtCfg.JWKS, err = auth.NewJWKS(ctx, cfg.JWTJWKS, nil, logger); err != nil {
				return nil, err
			}
		}
		local := auth.NewAuthenticator(authStore, jwtCfg, logger)
		authn = local
		jobs = job.NewService(job.NewStore(jobsDB), nil, safetySvc, logger, plugins...)
		handlers = append(handlers, func(opts connect.HandlerOption) {
			add(opsconductorv1connect.NewJobServiceHandler(jobs, opts))
			add(opsconductorv1connect.NewAuthServiceHandler(auth.NewService(authStore, logger), opts))
			add(opsconductorv1connect.NewSafetyServiceHandler(safetySvc, opts))
			add(interservicev1connect.NewAuthInternalServiceHandler(remote.AuthHandler{Authn: local}, opts))
			add(interservicev1connect.NewJobsInternalServiceHandler(remote.JobsHandler{Jobs: jobs}, opts))
		})
	} else {
		authn = remote.NewAuth(remoteOf(config.ServiceJobs))
	}

	// The executions service, with the agent registry and gateway.
	var (
		execs     *execution.Service
		execStore *execution.Store
		reg       *registry.Registry
	)
	if runs(config.ServiceExecutions) {
		url := cfg.ServiceDatabaseURL(config.ServiceExecutions)
		execDB, err := a.openStore(ctx, url, execution.Schema, execution.Migrations())
		if err != nil {
			return nil, err
		}
		if home == nil {
			home = execDB
		}
		agentsDB, err := a.openStore(ctx, url, registry.Schema, registry.Migrations())
		if err != nil {
			return nil, err
		}
		credDB, err := a.openStore(ctx, url, credential.Schema, credential.Migrations())
		if err != nil {
			return nil, err
		}
		invDB, err := a.openStore(ctx, url, inventory.Schema, inventory.Migrations())
		if err != nil {
			return nil, err
		}
		var credKeys *secretbox.Keyring
		if cfg.CredentialKeys != "" {
			credKeys, _ = secretbox.ParseKeyring(cfg.CredentialKeys) // checked by Validate
		}
		creds := credential.NewService(credential.NewStore(credDB), credKeys, logger)
		invStore := inventory.NewStore(invDB)
		if cfg.InventoryURL != "" {
			a.sync = inventory.NewSyncer(invStore, inventory.SyncConfig{URL: cfg.InventoryURL, Interval: cfg.InventoryInterval, Token: cfg.InventoryToken}, nil, logger)
		}
		inv := inventory.NewService(invStore, a.sync, logger)
		execStore = execution.NewStore(execDB)
		var nudgeExecRelay func() // set below, once the relays exist
		loseTasks := func(ctx context.Context, agentID, reason string) (int, error) {
			return execStore.TaskLoseByAgent(ctx, agentID, reason, func() { nudgeExecRelay() })
		}
		reg = registry.New(registry.NewStore(agentsDB), loseTasks, logger, registry.Config{OnlineWindow: cfg.AgentOnlineWindow, Inventory: inv})
		var jobReader execution.JobReader = jobs
		if jobs == nil {
			jobReader = remote.NewJobs(remoteOf(config.ServiceJobs), plugins)
		}
		protected, _ := label.ParseSelector(cfg.ProtectedLabels) // checked by Validate
		execs = execution.NewService(execStore, jobReader, reg, safetySvc, a.hub, logger, execution.Config{OutputLimit: cfg.OutputLimit, Protected: protected, Secrets: box,
			Credentials: creds, Nudge: func() { nudgeExecRelay() }})
		// The executions relay wakes an execution's watchers on this replica.
		execRelay := outbox.NewRelay(execDB, logger, outbox.RelayConfig{})
		execRelay.Subscribe(func(e outbox.Event) { a.hub.PublishLocal(notify.ExecutionKey(e.AggregateID)) })
		a.relays = append(a.relays, execRelay)
		nudgeExecRelay = execRelay.Nudge
		gwCfg := dispatch.Config{
			Secrets:       box,
			Credentials:   creds,
			LeaseDuration: cfg.LeaseDuration, MaxPollWait: cfg.PollMaxWait, Recheck: cfg.PollRecheck, ReapInterval: cfg.ReapInterval,
		}
		if cfg.AgentMTLS {
			gwCfg.ClientCertVerified = hasClientCert
		}
		a.gateway = dispatch.New(reg, execStore, a.hub, execRelay.Nudge, metricsReg, logger, gwCfg)
		handlers = append(handlers, func(opts connect.HandlerOption) {
			add(opsconductorv1connect.NewExecutionServiceHandler(execs, opts))
			add(opsconductorv1connect.NewAgentRegistryServiceHandler(reg, opts))
			add(agentv1connect.NewAgentServiceHandler(a.gateway, opts))
			add(opsconductorv1connect.NewCredentialServiceHandler(creds, opts))
			add(opsconductorv1connect.NewInventoryServiceHandler(inv, opts))
			add(interservicev1connect.NewExecutionsInternalServiceHandler(remote.ExecutionsHandler{Executions: execs, Store: execStore, Registry: reg}, opts))
		})
	}
	if jobs != nil {
		// The jobs service checks targets and hosts with the executions
		// service, here or elsewhere.
		if execs != nil {
			jobs.SetTargets(reg)
			jobs.SetHostChecker(execs)
		} else {
			rexec := remote.NewExecutions(remoteOf(config.ServiceExecutions))
			jobs.SetTargets(rexec)
			jobs.SetHostChecker(rexec)
		}
	}
	// What the scheduling and audit services use of the executions service.
	var (
		planner    schedule.Planner
		firer      schedule.Firer
		summaries  func(ctx context.Context, from, to time.Time) ([]audit.Execution, error)
		runsOf     func(ctx context.Context, from, to time.Time) ([]audit.Run, error)
		agentCount func(ctx context.Context) (int64, int64, error)
	)
	if execs != nil {
		planner, firer, agentCount = execs, execs, reg.AgentCounts
		summaries = func(ctx context.Context, from, to time.Time) ([]audit.Execution, error) {
			sums, err := execStore.Summaries(ctx, from, to)
			out := make([]audit.Execution, len(sums))
			for i, e := range sums {
				out[i] = audit.Execution{JobID: e.JobID, JobName: e.JobName, Status: e.Status, StartedAt: e.StartedAt, FinishedAt: e.FinishedAt}
			}
			return out, err
		}
		runsOf = func(ctx context.Context, from, to time.Time) ([]audit.Run, error) {
			runs, err := execStore.Runs(ctx, from, to)
			out := make([]audit.Run, len(runs))
			for i, r := range runs {
				out[i] = audit.Run{ID: r.ID, JobName: r.JobName, CreatedBy: r.CreatedBy, Status: r.Status, CreatedAt: r.CreatedAt, Targets: r.Targets,
					DangerousReason: r.DangerousReason}
			}
			return out, err
		}
	} else if runs(config.ServiceScheduling) || runs(config.ServiceAudit) {
		rexec := remote.NewExecutions(remoteOf(config.ServiceExecutions))
		planner, firer, summaries, runsOf, agentCount = rexec, rexec, rexec.Summaries, rexec.Runs, rexec.AgentCounts
	}

	// The scheduling service.
	var fireStats func(ctx context.Context, from, to time.Time) (map[string]int64, []time.Duration, error)
	if runs(config.ServiceScheduling) {
		schedDB, err := a.openStore(ctx, cfg.ServiceDatabaseURL(config.ServiceScheduling), schedule.Schema, schedule.Migrations())
		if err != nil {
			return nil, err
		}
		if home == nil {
			home = schedDB
		}
		schedStore := schedule.NewStore(schedDB)
		fireStats = schedStore.FireStats
		schedules := schedule.NewService(schedStore, planner, nil, logger)
		lateness := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "opsconductor_schedule_lateness_seconds",
			Help:    "From a schedule's nominal fire time to its execution's creation, as this replica fired them.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}})
		metricsReg.MustRegister(lateness)
		a.scheduler = schedule.NewScheduler(schedDB, schedStore, firer, nil, logger, schedule.SchedulerConfig{Lateness: lateness})
		handlers = append(handlers, func(opts connect.HandlerOption) {
			add(opsconductorv1connect.NewScheduleServiceHandler(schedules, opts))
			add(interservicev1connect.NewSchedulingInternalServiceHandler(remote.SchedulingHandler{Store: schedStore}, opts))
		})
	} else if runs(config.ServiceAudit) {
		fireStats = remote.NewScheduling(remoteOf(config.ServiceScheduling)).FireStats
	}

	// The audit service: the events, the hash-chained log, the webhooks.
	var (
		auditDB     *store.DB
		auditEvents *audit.Store
		callLog     audit.CallLog
	)
	if runs(config.ServiceAudit) {
		auditDB, err = a.openStore(ctx, cfg.ServiceDatabaseURL(config.ServiceAudit), audit.Schema, audit.Migrations())
		if err != nil {
			return nil, err
		}
		if home == nil {
			home = auditDB
		}
		auditEvents = audit.NewStore(auditDB)
		a.auditLog = audit.NewLog(auditDB)
		callLog = a.auditLog
		a.auditor = audit.NewConsumer(auditEvents, a.auditLog, eventBus, logger)
		a.notifier = audit.NewNotifier(auditDB, box, logger, audit.NotifierConfig{})
		auditSvc := audit.NewService(auditEvents, a.auditLog, eventBus, audit.MetricSources{
			Executions: summaries, Agents: agentCount, Fires: fireStats, Runs: runsOf,
		}, a.notifier, logger)
		handlers = append(handlers, func(opts connect.HandlerOption) {
			add(opsconductorv1connect.NewAuditServiceHandler(auditSvc, opts))
		})
	} else {
		// Call records travel in this process's outbox to the audit service.
		callLog = audit.ForwardingLog{DB: home}
	}
	var denials auth.Denials = auth.OutboxDenials{DB: home}
	if authStore != nil {
		denials = authStore
	}

	// Each service's outbox relay hands its committed events to in-process
	// subscribers (a counter; the executions relay, made above, also wakes
	// watchers), and its publisher puts them on the bus.
	relayed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "opsconductor_events_relayed_total", Help: "Outbox events relayed to this replica's subscribers, by schema and topic.",
	}, []string{"schema", "topic"})
	metricsReg.MustRegister(relayed)
	for _, db := range a.dbs {
		schema := db.Schema()
		var r *outbox.Relay
		for _, existing := range a.relays {
			if existing.DB() == db {
				r = existing
			}
		}
		if r == nil {
			r = outbox.NewRelay(db, logger, outbox.RelayConfig{})
			a.relays = append(a.relays, r)
		}
		r.Subscribe(func(e outbox.Event) { relayed.WithLabelValues(schema, e.Topic).Inc() })
		a.publishers = append(a.publishers, outbox.NewPublisher(db, eventBus, schema, logger, outbox.RelayConfig{}))
	}
	queued := func(context.Context) (int64, error) { return 0, nil }
	if execStore != nil {
		queued = execStore.QueuedTasks
	}
	a.registerInfraMetrics(metricsReg, queued, execStore != nil)

	// Retention: what this process keeps for a time.
	var targets []retention.Target
	for _, p := range a.publishers {
		if p.Schema() == execution.Schema {
			targets = append(targets, retention.Target{Name: "executions", Keep: cfg.RetainExecutions, Purge: func(ctx context.Context, before time.Time, batch int) (int, error) {
				published, err := p.Position(ctx)
				if err != nil {
					return 0, err
				}
				return execStore.PurgeFinished(ctx, before, published, batch)
			}})
			// An execution's events are its history: they go with it. The
			// records of calls and refusals a process without the audit
			// service writes here (split mode) go like any outbox row.
			db := p.DB()
			targets = append(targets, retention.Target{Name: "outbox.executions.audit", Keep: cfg.RetainOutbox,
				Purge: func(ctx context.Context, before time.Time, batch int) (int, error) {
					upTo, err := p.Position(ctx)
					if err != nil {
						return 0, err
					}
					return outbox.PurgeTopics(ctx, db, "audit.", upTo, before, batch)
				}})
			continue
		}
		db := p.DB()
		targets = append(targets, retention.Target{Name: "outbox." + p.Schema(), Keep: cfg.RetainOutbox,
			Purge: func(ctx context.Context, before time.Time, batch int) (int, error) {
				upTo, err := p.Position(ctx)
				if err != nil {
					return 0, err
				}
				return outbox.Purge(ctx, db, upTo, before, batch)
			}})
	}
	if a.auditLog != nil {
		targets = append(targets,
			retention.Target{Name: "events", Keep: cfg.RetainEvents, Purge: auditEvents.PurgeEvents},
			retention.Target{Name: "audit", Keep: cfg.RetainAudit, Purge: func(ctx context.Context, before time.Time, batch int) (int, error) {
				return a.auditLog.PurgeBefore(ctx, before, batch, cfg.AuditExportDir)
			}})
	}
	lockName := "opsconductor.retention"
	if cfg.Split() {
		lockName += "." + a.servicesLabel() // its own targets: its own lock
	}
	a.retention = retention.New(home, targets, retention.Config{Interval: cfg.RetentionInterval, LockName: lockName}, metricsReg, logger)

	authz := auth.NewInterceptor(authn, denials, a.limiter(), logger)
	if cfg.Split() {
		// The internal API is mounted everywhere (so every RPC has one
		// answer) but only split processes accept the service token.
		authz.AcceptServiceToken(cfg.ServiceToken)
	}
	// The audit log's keyed hashes of secret values use a key derived from
	// the secret key (a key per process when none is set: hashes then only
	// compare within one run).
	auditKey := sha256.Sum256(append([]byte("opsconductor audit hmac\x00"), key...))
	recorder := audit.NewRecorder(callLog, auditKey[:], logger)
	opts := connect.WithHandlerOptions(
		connect.WithInterceptors(interceptor.New(logger, interceptor.NewMetrics(metricsReg)), recorder, authz),
		connect.WithReadMaxBytes(int(cfg.MaxRequestBytes)),
		// Most messages (polls, acknowledgements) are a few bytes: setting
		// up gzip for them cost more CPU than it saved bytes.
		connect.WithCompressMinBytes(1024),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			logger.Error("handler panic", zap.String("procedure", spec.Procedure), zap.Any("panic", p),
				zap.String("correlation_id", correlation.ID(ctx)), zap.Stack("stack"))
			return connect.NewError(connect.CodeInternal, errors.New("internal error"))
		}),
	)
	for _, h := range handlers {
		h(opts)
	}
	var services []*vanguard.Service
	for _, m := range mounts {
		services = append(services, vanguard.NewService(m.path, m.handler))
	}
	if err := auth.CheckServices(Services()...); err != nil {
		return nil, err
	}
	transcoder, err := vanguard.NewTranscoder(services, vanguard.WithCodec(newJSONCodec), vanguard.WithUnknownHandler(http.HandlerFunc(a.notServedHere)))
	if err != nil {
		return nil, fmt.Errorf("build REST transcoder: %w", err)
	}

	mux := http.NewServeMux()
	mux.Handle("/", transcoder)
	if execs != nil {
		mux.Handle("GET /api/v1/executions/{id}/events", eventStream(authz, execs, logger))
	}
	mux.HandleFunc("GET /health", a.health)
	mux.HandleFunc("GET /version", version)
	mountDownloads(mux, cfg.DistDir)
	mux.Handle("GET /metrics", requireToken(cfg.MetricsToken, promhttp.HandlerFor(metricsReg, promhttp.HandlerOpts{})))
	var origins []string
	for _, o := range strings.Split(cfg.CORSOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			origins = append(origins, o)
		}
	}
	a.handler = correlation.Middleware(securityHeaders(a.tls != nil, withCORS(origins, limitBody(cfg.MaxRequestBytes, withClientCert(mux)))))
	ok = true
	return a, nil
}

// Services are the API services the server mounts, for checks and tests
// that walk every RPC.
func Services() []protoreflect.ServiceDescriptor {
	return []protoreflect.ServiceDescriptor{
		opsconductorv1.File_opsconductor_v1_job_proto.Services().ByName("JobService"),
		opsconductorv1.File_opsconductor_v1_execution_proto.Services().ByName("ExecutionService"),
		opsconductorv1.File_opsconductor_v1_agent_registry_proto.Services().ByName("AgentRegistryService"),
		opsconductorv1.File_opsconductor_v1_auth_proto.Services().ByName("AuthService"),
		opsconductorv1.File_opsconductor_v1_safety_proto.Services().ByName("SafetyService"),
		opsconductorv1.File_opsconductor_v1_credential_proto.Services().ByName("CredentialService"),
		opsconductorv1.File_opsconductor_v1_inventory_proto.Services().ByName("InventoryService"),
		opsconductorv1.File_opsconductor_v1_schedule_proto.Services().ByName("ScheduleService"),
		opsconductorv1.File_opsconductor_v1_audit_proto.Services().ByName("AuditService"),
		agentv1.File_opsconductor_agent_v1_agent_proto.Services().ByName("AgentService"),
		interservicev1.File_opsconductor_interservice_v1_interservice_proto.Services().ByName("AuthInternalService"),
		interservicev1.File_opsconductor_interservice_v1_interservice_proto.Services().ByName("JobsInternalService"),
		interservicev1.File_opsconductor_interservice_v1_interservice_proto.Services().ByName("ExecutionsInternalService"),
		interservicev1.File_opsconductor_interservice_v1_interservice_proto.Services().ByName("SchedulingInternalService"),
	}
}

// Schema is one schema, its migrations and the service that keeps it.
type Schema struct {
	Name       string
	Migrations fs.FS
	Service    string // config.ServiceJobs, ...
}

// Schemas are every service's schema with its migrations.
func Schemas() []Schema {
	return []Schema{
		{job.Schema, job.Migrations(), config.ServiceJobs}, {execution.Schema, execution.Migrations(), config.ServiceExecutions},
		{registry.Schema, registry.Migrations(), config.ServiceExecutions}, {auth.Schema, auth.Migrations(), config.ServiceJobs},
		{credential.Schema, credential.Migrations(), config.ServiceExecutions}, {inventory.Schema, inventory.Migrations(), config.ServiceExecutions},
		{audit.Schema, audit.Migrations(), config.ServiceAudit}, {schedule.Schema, schedule.Migrations(), config.ServiceScheduling},
	}
}

// Migrate brings every service's schema in the database at cfg's
// DatabaseURL up to this version and returns (opsconductor migrate, a
// Kubernetes Job before a rollout). Servers migrate on start as well:
// this only moves the wait out of their start-up. Migrations only add
// (tables, columns with defaults, indexes), so replicas of the previous
// version keep working on a migrated schema.
func Migrate(ctx context.Context, cfg config.Config, logger *zap.Logger) error {
	// It serves nothing and calls no other service: only the database
	// settings matter (no certificate, service token or peer URLs).
	check := cfg
	check.InsecureHTTP, check.Services = true, ""
	if err := check.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	a := &App{cfg: cfg, logger: logger}
	defer a.Close()
	for _, s := range Schemas() {
		if !cfg.Runs(s.Service) {
			continue
		}
		if _, err := a.openStore(ctx, cfg.ServiceDatabaseURL(s.Service), s.Name, s.Migrations); err != nil {
			return err
		}
		logger.Info("schema migrated", zap.String("schema", s.Name))
	}
	return nil
}

// MigrateSchema applies a service's migrations to db and creates the
// outbox publisher's table beside them.
func MigrateSchema(ctx context.Context, db *store.DB, migrations fs.FS) error {
	if err := db.Migrate(ctx, migrations); err != nil {
		return err
	}
	return outbox.EnsureTables(ctx, db)
}

func (a *App) openStore(ctx context.Context, url, schema string, migrations fs.FS) (*store.DB, error) {
	db, err := store.Open(ctx, url, schema, store.Options{})
	if err != nil {
		return nil, fmt.Errorf("open %s store: %w", schema, err)
	}
	a.dbs = append(a.dbs, db)
	if err := MigrateSchema(ctx, db, migrations); err != nil {
		return nil, fmt.Errorf("migrate %s store: %w", schema, err)
	}
	return db, nil
}

// Handler is the whole HTTP surface, for tests that serve it themselves.
func (a *App) Handler() http.Handler { return a.handler }

// Run serves on ln and runs the background loops until ctx ends, then
// shuts down gracefully (in-flight calls get 10s).
func (a *App) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		Protocols:         new(http.Protocols),
	}
	// HTTP/1.1 for REST and Connect, HTTP/2 for gRPC: over TLS, or in
	// clear (h2c) only when plain HTTP was allowed.
	srv.Protocols.SetHTTP1(true)
	if a.tls != nil {
		srv.Protocols.SetHTTP2(true)
		srv.TLSConfig = a.tls
	} else {
		srv.Protocols.SetUnencryptedHTTP2(true)
		a.logger.Warn("serving plain HTTP (--insecure-http): tokens cross the network in clear")
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	background := func(name string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				a.logger.Error("background loop stopped", zap.String("loop", name), zap.Error(err))
			}
		}()
	}
	if a.cfg.DebugAddr != "" {
		debug, err := a.debugServer()
		if err != nil {
			return err
		}
		defer debug.Close()
	}
	background("notify", a.hub.Run)
	if a.gateway != nil {
		background("reaper", a.gateway.RunReaper)
		background("poll recheck", a.gateway.RunRecheck)
	}
	for _, r := range a.relays {
		background("outbox", r.Run)
	}
	// The audit and notification groups exist before anything is
	// published (on RabbitMQ a queue only gets what comes after it):
	// every process declares them, whichever runs the audit service.
	declared := make(chan struct{})
	background("declare", func(ctx context.Context) error {
		for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
			err := audit.DeclareGroups(ctx, a.eventBus)
			if err == nil {
				break
			}
			a.logger.Warn("declare the audit service's consumer groups; retrying", zap.Error(err), zap.Duration("retry_in", backoff))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
		}
		close(declared)
		return nil
	})
	afterDeclared := func(run func(context.Context) error) func(context.Context) error {
		return func(ctx context.Context) error {
			select {
			case <-ctx.Done():
				return nil
			case <-declared:
			}
			return run(ctx)
		}
	}
	if a.auditor != nil {
		background("audit", afterDeclared(a.auditor.Run))
		background("webhooks", afterDeclared(func(ctx context.Context) error { return a.notifier.Consume(ctx, a.eventBus) }))
		background("webhook-deliveries", a.notifier.Run)
		if a.cfg.AuditSigningKey != "" {
			background("audit-checkpoints", func(ctx context.Context) error {
				return a.auditLog.RunCheckpoints(ctx, a.cfg.AuditSigningKey, a.cfg.AuditCheckpointInterval, a.logger)
			})
		} else {
			a.logger.Warn("no --audit-signing-key: the audit log is hash-chained but no signed checkpoints are made")
		}
	}
	background("retention", a.retention.Run)
	for _, p := range a.publishers {
		background("publisher", afterDeclared(p.Run))
	}
	if a.sync != nil {
		background("inventory-sync", a.sync.Loop)
	}
	if a.scheduler != nil {
		background("scheduler", a.scheduler.Run)
	}

	errc := make(chan error, 1)
	go func() {
		if a.tls != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	a.logger.Info("control plane listening", zap.String("addr", ln.Addr().String()), zap.String("version", protocol.Version),
		zap.String("services", a.servicesLabel()), zap.String("database", string(a.dbs[0].Dialect())), zap.Bool("redis", a.redis != nil),
		zap.Bool("tls", a.tls != nil))

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutdownCtx, stop := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer stop()
	// Long-polls end with an empty answer when their context is cancelled.
	cancel()
	if serr := srv.Shutdown(shutdownCtx); serr != nil && err == nil {
		err = serr
	}
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// notServedHere answers a call to no API this process serves: in split
// mode, a service that runs in another process. The body is a Connect
// error (code unimplemented, HTTP 404), which REST callers read as well.
func (a *App) notServedHere(w http.ResponseWriter, r *http.Request) {
	msg := fmt.Sprintf("%s %s: no such API here", r.Method, r.URL.Path)
	if a.cfg.Split() {
		msg = fmt.Sprintf("%s %s: not served by this process, which runs the %s service(s); call the gateway or the process that runs it",
			r.Method, r.URL.Path, a.servicesLabel())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	_ = json.NewEncoder(w).Encode(map[string]string{"code": "unimplemented", "message": msg})
}

// debugServer serves Go's profiler at --debug-addr, apart from the API
// (it is not authenticated: keep it on loopback).
func (a *App) debugServer() (*http.Server, error) {
	ln, err := net.Listen("tcp", a.cfg.DebugAddr)
	if err != nil {
		return nil, fmt.Errorf("--debug-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	a.logger.Warn("serving the Go profiler (not authenticated)", zap.String("addr", ln.Addr().String()))
	return srv, nil
}

// servicesLabel names the services this process runs.
func (a *App) servicesLabel() string {
	var here []string
	for _, s := range config.AllServices {
		if a.cfg.Runs(s) {
			here = append(here, s)
		}
	}
	return strings.Join(here, ",")
}

// limiter is the per-principal rate limiter: shared through Redis when
// configured, in memory otherwise, none when the limit is 0.
func (a *App) limiter() ratelimit.Limiter {
	switch {
	case a.cfg.RateLimit == 0:
		return nil
	case a.redis != nil:
		return ratelimit.NewRedis(a.redis, int(a.cfg.RateBurst))
	default:
		return ratelimit.NewLocal(float64(a.cfg.RateLimit), int(a.cfg.RateBurst))
	}
}

// serverTLS loads the certificate and, for mutual TLS, the client CA.
func serverTLS(cfg config.Config) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if cfg.TLSClientCA != "" {
		pem, err := os.ReadFile(cfg.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s holds no PEM certificate", cfg.TLSClientCA)
		}
		// Operators and REST callers come without certificates; those
		// that present one (agents) must present a valid one.
		tc.ClientCAs, tc.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// Close releases the stores and the Redis client.
func (a *App) Close() {
	for _, db := range a.dbs {
		_ = db.Close()
	}
	if a.redis != nil {
		_ = a.redis.Close()
	}
	if a.rabbit != nil {
		_ = a.rabbit.Close()
	}
}

func (a *App) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	checks := map[string]string{}
	healthy := true
	for _, db := range a.dbs {
		if err := db.Ping(ctx); err != nil {
			checks["store."+db.Schema()] = err.Error()
			healthy = false
		} else {
			checks["store."+db.Schema()] = "ok"
		}
	}
	if a.redis != nil {
		if err := a.redis.Ping(ctx).Err(); err != nil {
			// Redis only speeds things up; report it, stay serving.
			checks["redis"] = err.Error()
		} else {
			checks["redis"] = "ok"
		}
	}
	// Services elsewhere are reported, not required: a process stays up
	// (and serves what does not need them) while another is down.
	for _, r := range a.remotes {
		state := "breaker " + r.State()
		if e := r.LastError(); e != "" {
			state += "; last error: " + e
		}
		checks["remote."+r.Name] = state
	}
	status, code := "ok", http.StatusOK
	if !healthy {
		status, code = "unavailable", http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]any{"status": status, "checks": checks})
}

func version(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"version":                 protocol.Version,
		"agentProtocolVersion":    protocol.AgentProtocolVersion,
		"minAgentProtocolVersion": protocol.MinAgentProtocolVersion,
		"go":                      runtime.Version(),
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
