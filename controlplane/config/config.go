// Package config is the control plane's configuration: defaults, then
// OPSCONDUCTOR_* environment variables (plus DATABASE_URL and REDIS_URL),
// then command-line flags. Validate reports every problem at once.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"golang.org/x/mod/sumdb/note"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/secretbox"
)

// Config configures `opsconductor server`.
type Config struct {
	// Addr is the listen address of the API (Connect, gRPC, REST, health).
	Addr string
	// DatabaseURL is postgres://... or sqlite:DIR (the embedded default).
	DatabaseURL string
	// RedisURL enables cross-replica wake-ups; empty means in-process only.
	RedisURL string
	// Bus carries the services' events to their consumers (the audit
	// service): memory (one node), redis (Streams on RedisURL) or
	// rabbitmq (RabbitMQURL). Empty: redis when RedisURL is set, else
	// memory.
	Bus string
	// RabbitMQURL is amqp://user:pass@host:port/vhost, for Bus rabbitmq.
	RabbitMQURL string
	// DistDir holds the agent binaries and SHA256SUMS served at
	// /downloads/ (make dist); empty: none served.
	DistDir string
	// BusPrefix names the bus's streams, exchanges and queues (default
	// opsconductor): deployments sharing a broker use their own.
	BusPrefix string
	// AuditSigningKey signs checkpoints of the audit log (a
	// golang.org/x/mod/sumdb/note signer key: opsconductor audit keygen);
	// empty: no checkpoints.
	AuditSigningKey string
	// AuditCheckpointInterval is how often a checkpoint is signed while
	// the log grows.
	AuditCheckpointInterval time.Duration
	// Retention (0: keep): finished executions with their output and
	// events, the audit service's events, and published outbox rows.
	RetainExecutions, RetainEvents, RetainOutbox time.Duration
	// RetainAudit deletes audit records older than this (0: keep), each
	// batch exported first to AuditExportDir.
	RetainAudit    time.Duration
	AuditExportDir string
	// RetentionInterval is how often the retention policy runs.
	RetentionInterval time.Duration
	// LogFormat is json or console; LogLevel debug, info, warn or error.
	LogFormat string
	LogLevel  string
	// LeaseDuration is how long a claimed task stays an agent's without news.
	LeaseDuration time.Duration
	// PollMaxWait caps an agent's long-poll.
	PollMaxWait time.Duration
	// PollRecheck is how often one query looks for agents with work and
	// wakes their waiting polls (the safety net when a wake-up is lost).
	PollRecheck time.Duration
	// ReapInterval is how often expired leases are looked for.
	ReapInterval time.Duration
	// OutputLimit caps the stored output of one task, in bytes.
	OutputLimit int64
	// AgentOnlineWindow: an agent seen within it is shown online.
	AgentOnlineWindow time.Duration
	// JWTSecret enables HS256 JWTs signed with it; JWTIssuer and
	// JWTAudience, when set, must match the tokens' iss and aud.
	JWTSecret   string
	JWTIssuer   string
	JWTAudience string
	// JWTJWKS is a JWKS file or URL whose keys verify RS256/ES256 JWTs.
	JWTJWKS string
	// BootstrapTokenFile receives the first admin token (mode 0600) when
	// the server makes it, besides the log.
	BootstrapTokenFile string
	// TLSCert and TLSKey are PEM files; with them the server speaks HTTPS
	// (HTTP/1.1 and HTTP/2). TLSClientCA, when set, makes it verify client
	// certificates that callers present (agents with mutual TLS).
	TLSCert     string
	TLSKey      string
	TLSClientCA string
	// AgentMTLS requires agents to present a client certificate that
	// chains to TLSClientCA, on top of their signed tokens.
	AgentMTLS bool
	// InsecureHTTP allows plain HTTP when no certificate is configured.
	// Without TLS and without it the server refuses to start.
	InsecureHTTP bool
	// RateLimit is each principal's sustained calls per second (0: no
	// limit); RateBurst how many may come at once.
	RateLimit int64
	RateBurst int64
	// MaxRequestBytes caps a request body.
	MaxRequestBytes int64
	// ProtectedLabels selects the agents (production) on which running a
	// job needs permission executions:run-protected; empty: none.
	ProtectedLabels string
	// MetricsToken, when set, must be sent as a bearer token to read
	// /metrics; empty leaves /metrics open (the usual Prometheus setup).
	MetricsToken string
	// Plugins are the external executor plugins (installed on agents)
	// that actions may name, comma-separated.
	Plugins string
	// SecretKey (base64, 32 bytes) seals secret parameter values at rest.
	SecretKey string
	// InventoryURL is an external inventory imported every
	// InventoryInterval (with InventoryToken as a bearer token).
	InventoryURL      string
	InventoryInterval time.Duration
	InventoryToken    string
	// CredentialKeys seal stored credentials: "id:base64,id2:base64", the
	// first one current (credential store disabled when empty).
	CredentialKeys string
	// SafetyRules is a YAML/JSON file of extra dangerous-command rules and
	// allow-lists (docs/safety.md).
	SafetyRules string
	// CORSOrigins are the browser origins (the dashboard's) allowed to call
	// the API, comma-separated; "*" allows any.
	CORSOrigins string

	// Services are the services this process runs, comma-separated, of
	// jobs, executions, scheduling and audit ("all" or empty: every one).
	// The others are reached at their URLs below (split mode).
	Services string
	// Per-service database URLs (empty: DatabaseURL).
	JobsDatabaseURL, ExecutionsDatabaseURL, SchedulingDatabaseURL, AuditDatabaseURL string
	// Where the services this process does not run are (split mode).
	JobsURL, ExecutionsURL, SchedulingURL, AuditURL string
	// ServiceToken is the shared secret the services present to each
	// other in split mode.
	ServiceToken string
	// DebugAddr, when set, serves Go's profiler (net/http/pprof) there:
	// keep it on loopback.
	DebugAddr string
}

// Service names, as --services takes them.
const (
	ServiceJobs       = "jobs"
	ServiceExecutions = "executions"
	ServiceScheduling = "scheduling"
	ServiceAudit      = "audit"
)

// AllServices are every service, in the order they are listed.
var AllServices = []string{ServiceJobs, ServiceExecutions, ServiceScheduling, ServiceAudit}

// Runs reports whether this process runs service.
func (c Config) Runs(service string) bool {
	if c.Services == "" || c.Services == "all" {
		return true
	}
	for _, s := range strings.Split(c.Services, ",") {
		if strings.TrimSpace(s) == service {
			return true
		}
	}
	return false
}

// Split reports whether some service runs in another process.
func (c Config) Split() bool {
	for _, s := range AllServices {
		if !c.Runs(s) {
			return true
		}
	}
	return false
}

// ServiceDatabaseURL is the database of service.
func (c Config) ServiceDatabaseURL(service string) string {
	u := map[string]string{ServiceJobs: c.JobsDatabaseURL, ServiceExecutions: c.ExecutionsDatabaseURL,
		ServiceScheduling: c.SchedulingDatabaseURL, ServiceAudit: c.AuditDatabaseURL}[service]
	if u == "" {
		return c.DatabaseURL
	}
	return u
}

// ServiceURL is where service runs when not in this process.
func (c Config) ServiceURL(service string) string {
	return map[string]string{ServiceJobs: c.JobsURL, ServiceExecutions: c.ExecutionsURL,
		ServiceScheduling: c.SchedulingURL, ServiceAudit: c.AuditURL}[service]
}

// Needs are the services each service calls (split mode): the jobs
// service keeps the users and tokens every process authenticates with.
var Needs = map[string][]string{
	ServiceJobs:       {ServiceExecutions},
	ServiceExecutions: {ServiceJobs},
	ServiceScheduling: {ServiceJobs, ServiceExecutions},
	ServiceAudit:      {ServiceJobs, ServiceExecutions, ServiceScheduling},
}

// Default returns the configuration of a single node on the embedded store.
func Default() Config {
	return Config{
		Addr:                    "127.0.0.1:8080",
		DatabaseURL:             "sqlite:./opsconductor-data",
		LogFormat:               "json",
		LogLevel:                "info",
		LeaseDuration:           30 * time.Second,
		PollMaxWait:             60 * time.Second,
		PollRecheck:             5 * time.Second,
		ReapInterval:            5 * time.Second,
		OutputLimit:             1 << 20,
		AgentOnlineWindow:       90 * time.Second,
		InventoryInterval:       5 * time.Minute,
		AuditCheckpointInterval: time.Minute,
		RetainOutbox:            7 * 24 * time.Hour,
		RetentionInterval:       time.Hour,
		BusPrefix:               "opsconductor",
		RateLimit:               20,
		RateBurst:               40,
		MaxRequestBytes:         4 << 20,
		ProtectedLabels:         "env=prod",
	}
}

// setting ties one field to its environment variable and flag.
type setting struct {
	flag, env, help string
	str             *string
	dur             *time.Duration
	i64             *int64
	boolean         *bool
	secret          bool // never shown as a flag default
}

func (c *Config) settings() []setting {
	return []setting{
		{flag: "addr", env: "OPSCONDUCTOR_ADDR", help: "listen address of the API", str: &c.Addr},
		{flag: "database-url", env: "DATABASE_URL", help: "postgres://user@host/db or sqlite:DIR (embedded)", str: &c.DatabaseURL},
		{flag: "redis-url", env: "REDIS_URL", help: "redis://host:port; needed when several replicas share a database", str: &c.RedisURL},
		{flag: "bus", env: "OPSCONDUCTOR_BUS", help: "event bus: memory, redis or rabbitmq (default: redis with --redis-url, else memory)", str: &c.Bus},
		{flag: "dist-dir", env: "OPSCONDUCTOR_DIST_DIR", help: "agent binaries and SHA256SUMS to serve at /downloads/ (make dist); the installers fetch them", str: &c.DistDir},
		{flag: "bus-prefix", env: "OPSCONDUCTOR_BUS_PREFIX", help: "names the event bus's streams, exchanges and queues (deployments sharing a broker use their own)", str: &c.BusPrefix},
		{flag: "rabbitmq-url", env: "OPSCONDUCTOR_RABBITMQ_URL", help: "amqp://user:pass@host:5672/ for --bus rabbitmq", str: &c.RabbitMQURL, secret: true},
		{flag: "audit-signing-key", env: "OPSCONDUCTOR_AUDIT_SIGNING_KEY", help: "signs checkpoints of the audit log (opsconductor audit keygen; use the _FILE variant)", str: &c.AuditSigningKey, secret: true},
		{flag: "audit-checkpoint-interval", env: "OPSCONDUCTOR_AUDIT_CHECKPOINT_INTERVAL", help: "how often the audit log's head is signed while it grows", dur: &c.AuditCheckpointInterval},
		{flag: "retain-executions", env: "OPSCONDUCTOR_RETAIN_EXECUTIONS", help: "delete finished executions (output, events) older than this (0: keep)", dur: &c.RetainExecutions},
		{flag: "retain-events", env: "OPSCONDUCTOR_RETAIN_EVENTS", help: "delete the audit service's events older than this (0: keep)", dur: &c.RetainEvents},
		{flag: "retain-outbox", env: "OPSCONDUCTOR_RETAIN_OUTBOX", help: "delete published outbox rows older than this (0: keep)", dur: &c.RetainOutbox},
		{flag: "retain-audit", env: "OPSCONDUCTOR_RETAIN_AUDIT", help: "delete audit records older than this, exported first to --audit-export-dir (0: keep)", dur: &c.RetainAudit},
		{flag: "audit-export-dir", env: "OPSCONDUCTOR_AUDIT_EXPORT_DIR", help: "where audit records are exported before retention deletes them", str: &c.AuditExportDir},
		{flag: "retention-interval", env: "OPSCONDUCTOR_RETENTION_INTERVAL", help: "how often the retention policy runs", dur: &c.RetentionInterval},
		{flag: "log-format", env: "OPSCONDUCTOR_LOG_FORMAT", help: "json or console", str: &c.LogFormat},
		{flag: "log-level", env: "OPSCONDUCTOR_LOG_LEVEL", help: "debug, info, warn or error", str: &c.LogLevel},
		{flag: "lease-duration", env: "OPSCONDUCTOR_LEASE_DURATION", help: "how long a task stays an agent's without news", dur: &c.LeaseDuration},
		{flag: "poll-max-wait", env: "OPSCONDUCTOR_POLL_MAX_WAIT", help: "longest agent long-poll", dur: &c.PollMaxWait},
		{flag: "poll-recheck", env: "OPSCONDUCTOR_POLL_RECHECK", help: "how often one query looks for agents with work whose waiting polls were not woken", dur: &c.PollRecheck},
		{flag: "reap-interval", env: "OPSCONDUCTOR_REAP_INTERVAL", help: "how often expired task leases are looked for", dur: &c.ReapInterval},
		{flag: "output-limit", env: "OPSCONDUCTOR_OUTPUT_LIMIT", help: "bytes of output kept per task; more is cut with a visible marker", i64: &c.OutputLimit},
		{flag: "agent-online-window", env: "OPSCONDUCTOR_AGENT_ONLINE_WINDOW", help: "an agent seen within it is online", dur: &c.AgentOnlineWindow},
		{flag: "jwt-secret", env: "OPSCONDUCTOR_JWT_SECRET", help: "accept HS256 JWTs signed with this secret (use the _FILE variant)", str: &c.JWTSecret, secret: true},
		{flag: "jwt-jwks", env: "OPSCONDUCTOR_JWT_JWKS", help: "JWKS file or https URL of the identity provider: accept RS256/ES256 JWTs signed by its keys", str: &c.JWTJWKS},
		{flag: "jwt-issuer", env: "OPSCONDUCTOR_JWT_ISSUER", help: "required iss of JWTs", str: &c.JWTIssuer},
		{flag: "jwt-audience", env: "OPSCONDUCTOR_JWT_AUDIENCE", help: "required aud of JWTs", str: &c.JWTAudience},
		{flag: "tls-cert", env: "OPSCONDUCTOR_TLS_CERT", help: "PEM certificate (chain) to serve HTTPS with", str: &c.TLSCert},
		{flag: "tls-key", env: "OPSCONDUCTOR_TLS_KEY", help: "PEM private key of --tls-cert", str: &c.TLSKey},
		{flag: "tls-client-ca", env: "OPSCONDUCTOR_TLS_CLIENT_CA", help: "PEM CA bundle that client certificates (agents' mutual TLS) must chain to", str: &c.TLSClientCA},
		{flag: "agent-mtls", env: "OPSCONDUCTOR_AGENT_MTLS", help: "refuse agent calls without a client certificate from --tls-client-ca", boolean: &c.AgentMTLS},
		{flag: "insecure-http", env: "OPSCONDUCTOR_INSECURE_HTTP", help: "allow plain HTTP when no certificate is set (tokens then cross the network in clear)", boolean: &c.InsecureHTTP},
		{flag: "rate-limit", env: "OPSCONDUCTOR_RATE_LIMIT", help: "calls per second per principal (0: no limit); shared through Redis when set", i64: &c.RateLimit},
		{flag: "rate-burst", env: "OPSCONDUCTOR_RATE_BURST", help: "calls a principal may make at once", i64: &c.RateBurst},
		{flag: "max-request-bytes", env: "OPSCONDUCTOR_MAX_REQUEST_BYTES", help: "largest request body", i64: &c.MaxRequestBytes},
		{flag: "protected-labels", env: "OPSCONDUCTOR_PROTECTED_LABELS", help: "label selector of agents where running needs executions:run-protected (developers lack it); empty: none", str: &c.ProtectedLabels},
		{flag: "metrics-token", env: "OPSCONDUCTOR_METRICS_TOKEN", help: "require this bearer token on /metrics (use the _FILE variant); empty: open", str: &c.MetricsToken, secret: true},
		{flag: "plugins", env: "OPSCONDUCTOR_PLUGINS", help: "external executor plugins actions may name, comma-separated (agents pin their binaries)", str: &c.Plugins},
		{flag: "secret-key", env: "OPSCONDUCTOR_SECRET_KEY", help: "base64 of 32 random bytes sealing secret parameter values at rest (use the _FILE variant); unset: a key per process", str: &c.SecretKey, secret: true},
		{flag: "inventory-url", env: "OPSCONDUCTOR_INVENTORY_URL", help: "external inventory to import hosts from (GET returns an InventoryDocument as JSON); empty: none", str: &c.InventoryURL},
		{flag: "inventory-interval", env: "OPSCONDUCTOR_INVENTORY_INTERVAL", help: "how often the external inventory is imported", dur: &c.InventoryInterval},
		{flag: "inventory-token", env: "OPSCONDUCTOR_INVENTORY_TOKEN", help: "bearer token for --inventory-url (use the _FILE variant)", str: &c.InventoryToken, secret: true},
		{flag: "credential-keys", env: "OPSCONDUCTOR_CREDENTIAL_KEYS", help: "keys sealing stored credentials, id:base64-of-32-bytes comma-separated, the first current (use the _FILE variant); unset: no credential store", str: &c.CredentialKeys, secret: true},
		{flag: "safety-rules", env: "OPSCONDUCTOR_SAFETY_RULES", help: "YAML/JSON file of extra dangerous-command rules and allow-lists", str: &c.SafetyRules},
		{flag: "cors-origins", env: "OPSCONDUCTOR_CORS_ORIGINS", help: "browser origins allowed to call the API, comma-separated", str: &c.CORSOrigins},
		{flag: "bootstrap-token-file", env: "OPSCONDUCTOR_BOOTSTRAP_TOKEN_FILE", help: "also write the first admin token to this file (0600)", str: &c.BootstrapTokenFile},
		{flag: "services", env: "OPSCONDUCTOR_SERVICES", help: "services this process runs: all, or some of jobs,executions,scheduling,audit (split mode; the others are reached at --jobs-url and the rest)", str: &c.Services},
		{flag: "jobs-database-url", env: "OPSCONDUCTOR_JOBS_DATABASE_URL", help: "the jobs service's database (default --database-url)", str: &c.JobsDatabaseURL},
		{flag: "executions-database-url", env: "OPSCONDUCTOR_EXECUTIONS_DATABASE_URL", help: "the executions service's database (default --database-url)", str: &c.ExecutionsDatabaseURL},
		{flag: "scheduling-database-url", env: "OPSCONDUCTOR_SCHEDULING_DATABASE_URL", help: "the scheduling service's database (default --database-url)", str: &c.SchedulingDatabaseURL},
		{flag: "audit-database-url", env: "OPSCONDUCTOR_AUDIT_DATABASE_URL", help: "the audit service's database (default --database-url)", str: &c.AuditDatabaseURL},
		{flag: "jobs-url", env: "OPSCONDUCTOR_JOBS_URL", help: "where the jobs service runs, when not in this process", str: &c.JobsURL},
		{flag: "executions-url", env: "OPSCONDUCTOR_EXECUTIONS_URL", help: "where the executions service runs, when not in this process", str: &c.ExecutionsURL},
		{flag: "scheduling-url", env: "OPSCONDUCTOR_SCHEDULING_URL", help: "where the scheduling service runs, when not in this process", str: &c.SchedulingURL},
		{flag: "audit-url", env: "OPSCONDUCTOR_AUDIT_URL", help: "where the audit service runs, when not in this process", str: &c.AuditURL},
		{flag: "debug-addr", env: "OPSCONDUCTOR_DEBUG_ADDR", help: "serve Go's profiler (/debug/pprof/) at this address, e.g. 127.0.0.1:6060; empty: off. Keep it on loopback: it is not authenticated", str: &c.DebugAddr},
		{flag: "service-token", env: "OPSCONDUCTOR_SERVICE_TOKEN", help: "shared secret the services present to each other in split mode (use the _FILE variant); at least 32 characters", str: &c.ServiceToken, secret: true},
	}
}

// ApplyEnv overrides fields from the environment, except those whose flag
// was set (flagSet reports that; nil means none was). lookup is
// os.LookupEnv in production. OPSCONDUCTOR_DATABASE_URL and
// OPSCONDUCTOR_REDIS_URL are accepted as well as the bare names, and any
// variable NAME_FILE reads the value (a secret, say) from a file.
func (c *Config) ApplyEnv(lookup func(string) (string, bool), flagSet func(flag string) bool) error {
	var errs []error
	for _, s := range c.settings() {
		if flagSet != nil && flagSet(s.flag) {
			continue
		}
		v, ok := lookup(s.env)
		if alt := "OPSCONDUCTOR_" + s.env; !ok && !strings.HasPrefix(s.env, "OPSCONDUCTOR_") {
			v, ok = lookup(alt)
		}
		if !ok {
			if path, fok := lookup(s.env + "_FILE"); fok {
				b, err := os.ReadFile(path)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s_FILE: %w", s.env, err))
					continue
				}
				v, ok = strings.TrimSpace(string(b)), true
			}
		}
		if !ok {
			continue
		}
		if err := s.set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.env, err))
		}
	}
	return errors.Join(errs...)
}

func (s setting) set(v string) error {
	switch {
	case s.str != nil:
		*s.str = v
	case s.dur != nil:
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s or 5m", v)
		}
		*s.dur = d
	case s.i64 != nil:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", v)
		}
		*s.i64 = n
	case s.boolean != nil:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*s.boolean = b
	}
	return nil
}

// BindFlags registers one flag per setting on fs, defaulting to the current
// values. Call ApplyEnv after parsing, with fs.Changed, so that flags win
// over the environment and --help never shows a secret from it.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	for _, s := range c.settings() {
		help := s.help + " (env " + s.env + ")"
		switch {
		case s.str != nil && s.secret:
			fs.StringVar(s.str, s.flag, "", help)
		case s.str != nil:
			fs.StringVar(s.str, s.flag, *s.str, help)
		case s.dur != nil:
			fs.DurationVar(s.dur, s.flag, *s.dur, help)
		case s.i64 != nil:
			fs.Int64Var(s.i64, s.flag, *s.i64, help)
		case s.boolean != nil:
			fs.BoolVar(s.boolean, s.flag, *s.boolean, help)
		}
	}
}

// Validate reports every problem of the configuration.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Addr == "" {
		bad("addr", "must not be empty")
	}
	if !strings.HasPrefix(c.DatabaseURL, "postgres://") && !strings.HasPrefix(c.DatabaseURL, "postgresql://") && !strings.HasPrefix(c.DatabaseURL, "sqlite:") {
		bad("database-url", "must start with postgres://, postgresql:// or sqlite:")
	}
	if c.RedisURL != "" && !strings.HasPrefix(c.RedisURL, "redis://") && !strings.HasPrefix(c.RedisURL, "rediss://") {
		bad("redis-url", "must start with redis:// or rediss://")
	}
	if c.BusPrefix == "" || strings.ContainsAny(c.BusPrefix, " :*#") {
		bad("bus-prefix", "must be a plain name (no spaces, :, * or #), not %q", c.BusPrefix)
	}
	switch c.EventBus() {
	case "memory":
	case "redis":
		if c.RedisURL == "" {
			bad("bus", "redis needs --redis-url")
		}
	case "rabbitmq":
		if !strings.HasPrefix(c.RabbitMQURL, "amqp://") && !strings.HasPrefix(c.RabbitMQURL, "amqps://") {
			bad("rabbitmq-url", "must start with amqp:// or amqps:// for --bus rabbitmq")
		}
	default:
		bad("bus", "must be memory, redis or rabbitmq, not %q", c.Bus)
	}
	if c.AuditSigningKey != "" {
		if _, err := note.NewSigner(c.AuditSigningKey); err != nil {
			bad("audit-signing-key", "is not a signer key (make one with opsconductor audit keygen): %v", err)
		}
	}
	if c.AuditCheckpointInterval < time.Second {
		bad("audit-checkpoint-interval", "must be at least 1s, not %s", c.AuditCheckpointInterval)
	}
	if c.RetainAudit > 0 {
		if st, err := os.Stat(c.AuditExportDir); c.AuditExportDir == "" || err != nil || !st.IsDir() {
			bad("audit-export-dir", "must be an existing directory with --retain-audit: records are exported there before they are deleted")
		}
	}
	for name, d := range map[string]time.Duration{"retain-executions": c.RetainExecutions, "retain-events": c.RetainEvents, "retain-outbox": c.RetainOutbox,
		"retain-audit": c.RetainAudit} {
		if d < 0 {
			bad(name, "must not be negative")
		}
	}
	if c.RetentionInterval < time.Second {
		bad("retention-interval", "must be at least 1s, not %s", c.RetentionInterval)
	}
	if c.LogFormat != "json" && c.LogFormat != "console" {
		bad("log-format", "must be json or console, not %q", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "must be debug, info, warn or error, not %q", c.LogLevel)
	}
	if c.LeaseDuration < time.Second {
		bad("lease-duration", "must be at least 1s")
	}
	if c.PollMaxWait < time.Second {
		bad("poll-max-wait", "must be at least 1s")
	}
	if c.PollRecheck <= 0 {
		bad("poll-recheck", "must be positive")
	}
	if c.ReapInterval <= 0 {
		bad("reap-interval", "must be positive")
	}
	if c.OutputLimit < 1024 {
		bad("output-limit", "must be at least 1024 bytes")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("tls-cert", "--tls-cert and --tls-key go together")
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		bad("tls-client-ca", "needs --tls-cert and --tls-key")
	}
	if c.AgentMTLS && c.TLSClientCA == "" {
		bad("agent-mtls", "needs --tls-client-ca")
	}
	if c.TLSCert == "" && !c.InsecureHTTP {
		bad("tls-cert", "set --tls-cert and --tls-key to serve HTTPS, or --insecure-http to allow plain HTTP (never on an untrusted network)")
	}
	if c.JWTSecret != "" && len(c.JWTSecret) < 32 {
		bad("jwt-secret", "must be at least 32 bytes")
	}
	if c.RateLimit < 0 {
		bad("rate-limit", "must not be negative")
	}
	if c.RateLimit > 0 && c.RateBurst < 1 {
		bad("rate-burst", "must be at least 1")
	}
	if c.MaxRequestBytes < 1024 {
		bad("max-request-bytes", "must be at least 1024")
	}
	if _, err := label.ParseSelector(c.ProtectedLabels); err != nil {
		bad("protected-labels", "%v", err)
	}
	if c.SecretKey != "" {
		if k, err := base64.StdEncoding.DecodeString(c.SecretKey); err != nil || len(k) != 32 {
			bad("secret-key", "must be the base64 of 32 bytes (openssl rand -base64 32)")
		}
	}
	if c.CredentialKeys != "" {
		if _, err := secretbox.ParseKeyring(c.CredentialKeys); err != nil {
			bad("credential-keys", "%v", err)
		}
	}
	if c.AgentOnlineWindow <= 0 {
		bad("agent-online-window", "must be positive")
	}
	if c.Services != "" && c.Services != "all" {
		for _, s := range strings.Split(c.Services, ",") {
			if s = strings.TrimSpace(s); !slices.Contains(AllServices, s) {
				bad("services", "%q is not a service: want all, or some of %s", s, strings.Join(AllServices, ","))
			}
		}
	}
	if c.ServiceToken != "" && len(c.ServiceToken) < 32 {
		bad("service-token", "must be at least 32 characters (openssl rand -hex 32)")
	}
	for _, s := range AllServices {
		if u := c.ServiceDatabaseURL(s); u != c.DatabaseURL && !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") && !strings.HasPrefix(u, "sqlite:") {
			bad(s+"-database-url", "must start with postgres://, postgresql:// or sqlite:")
		}
	}
	if c.Split() {
		for _, s := range AllServices {
			if !c.Runs(s) {
				continue
			}
			for _, need := range Needs[s] {
				u := c.ServiceURL(need)
				if c.Runs(need) {
					continue
				}
				if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
					bad(need+"-url", "the %s service runs elsewhere and %s needs it: give its http(s):// URL", need, s)
				}
			}
		}
		if c.ServiceToken == "" {
			bad("service-token", "split mode needs a service token of at least 32 characters, the same in every process")
		}
		if c.SecretKey == "" {
			bad("secret-key", "split mode needs the same --secret-key in every process (secret values sealed by one are opened by another)")
		}
		if c.EventBus() == "memory" {
			bad("bus", "split mode needs a shared event bus (redis or rabbitmq): the memory bus does not leave the process")
		}
	}
	return errors.Join(errs...)
}

// Reference lists every setting as "flag, env, default, help" rows, for
// docs (docs/operations.md has them all; a test keeps it so).
func Reference() [][4]string {
	c := Default()
	var rows [][4]string
	for _, s := range c.settings() {
		def := ""
		switch {
		case s.secret:
		case s.str != nil:
			def = *s.str
		case s.dur != nil:
			def = s.dur.String()
		case s.i64 != nil:
			def = strconv.FormatInt(*s.i64, 10)
		case s.boolean != nil:
			def = strconv.FormatBool(*s.boolean)
		}
		rows = append(rows, [4]string{"--" + s.flag, s.env, def, s.help})
	}
	return rows
}

// EventBus is the bus in use: Bus, or its default.
func (c Config) EventBus() string {
	switch {
	case c.Bus != "":
		return c.Bus
	case c.RedisURL != "":
		return "redis"
	}
	return "memory"
}
