// Package router is `opsconductor gateway`, the front door of a split
// deployment (opsconductor server --services=...): clients, the CLI and
// agents talk to it as to one control plane, and it sends each call to
// the process that runs the call's service. REST paths are matched with
// the same HTTP rules the services serve (connectrpc.com/vanguard reads
// them from the API's descriptors), so /api/v1/jobs/{id}/execute goes to
// the executions service and /api/v1/jobs/{id} to the jobs service.
//
// Each service is behind a circuit breaker: while one is down, its calls
// fail at once with a clear Unavailable error naming it, and the others
// go on being served.
package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"go.uber.org/zap"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/opsconductor/opsconductor/controlplane/config"
	"github.com/opsconductor/opsconductor/controlplane/remote"
)

// Owners maps each public API service to the control-plane service that
// serves it. The services' internal API is not routed: only the services
// call it, directly.
var Owners = map[protoreflect.FullName]string{
	"opsconductor.v1.JobService":           config.ServiceJobs,
	"opsconductor.v1.AuthService":          config.ServiceJobs,
	"opsconductor.v1.SafetyService":        config.ServiceJobs,
	"opsconductor.v1.ExecutionService":     config.ServiceExecutions,
	"opsconductor.v1.AgentRegistryService": config.ServiceExecutions,
	"opsconductor.v1.CredentialService":    config.ServiceExecutions,
	"opsconductor.v1.InventoryService":     config.ServiceExecutions,
	"opsconductor.agent.v1.AgentService":   config.ServiceExecutions,
	"opsconductor.v1.ScheduleService":      config.ServiceScheduling,
	"opsconductor.v1.AuditService":         config.ServiceAudit,
}

// Router is the gateway's handler.
type Router struct {
	services map[string]*remote.Service
	handler  http.Handler
	logger   *zap.Logger
}

// New routes the API services in apis to the URLs of their owners
// (service name -> base URL); breakers use opts.
func New(apis []protoreflect.ServiceDescriptor, urls map[string]string, opts remote.Options, logger *zap.Logger) (*Router, error) {
	r := &Router{services: map[string]*remote.Service{}, logger: logger.Named("gateway")}
	proxies := map[string]http.Handler{}
	for _, name := range config.AllServices {
		raw := strings.TrimRight(urls[name], "/")
		target, err := url.Parse(raw)
		if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
			return nil, fmt.Errorf("--%s-url: want the http(s):// URL of the %s service, not %q", name, name, raw)
		}
		// Several trial calls when the breaker half-opens: one of them
		// may be an agent's long poll, which holds its slot for a minute.
		svcOpts := opts
		if svcOpts.TrialCalls == 0 {
			svcOpts.TrialCalls = 5
		}
		svc := remote.NewService(name, raw, svcOpts, logger)
		r.services[name] = svc
		proxy := httputil.NewSingleHostReverseProxy(target)
		base := http.DefaultTransport.(*http.Transport).Clone()
		base.MaxIdleConnsPerHost = 256
		base.ResponseHeaderTimeout = 0 // long polls and streams answer late
		proxy.Transport = svc.Transport(base)
		proxy.FlushInterval = -1 // streams (WatchExecution, SSE) pass at once
		proxy.ErrorHandler = r.failed(svc)
		proxies[name] = proxy
	}
	var services []*vanguard.Service
	for _, sd := range apis {
		owner, ok := Owners[sd.FullName()]
		if !ok {
			continue // the services' internal API
		}
		// The proxy speaks Connect to the services; vanguard turns REST,
		// gRPC and gRPC-Web calls into Connect on the way.
		services = append(services, vanguard.NewService("/"+string(sd.FullName())+"/", proxies[owner],
			vanguard.WithTargetProtocols(vanguard.ProtocolConnect)))
	}
	transcoder, err := vanguard.NewTranscoder(services)
	if err != nil {
		return nil, fmt.Errorf("build the gateway's routes: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", transcoder)
	// Plain HTTP endpoints of the executions service: live output, and
	// what agents install from.
	for _, path := range []string{"GET /api/v1/executions/{id}/events", "GET /install.sh", "GET /install.ps1", "GET /downloads/"} {
		mux.Handle(path, proxies[config.ServiceExecutions])
	}
	// Browsers' CORS preflights and /version: every process answers them
	// alike (they share the configuration); the jobs process does.
	mux.Handle("OPTIONS /", proxies[config.ServiceJobs])
	mux.Handle("GET /version", proxies[config.ServiceJobs])
	mux.HandleFunc("GET /health", r.health)
	r.handler = mux
	return r, nil
}

// ServeHTTP routes one call.
func (r *Router) ServeHTTP(w http.ResponseWriter, req *http.Request) { r.handler.ServeHTTP(w, req) }

// failed answers a call its service could not take, in the Connect
// protocol the proxied call speaks (vanguard turns it into REST's or
// gRPC's form for the caller): Unavailable, naming the service.
func (r *Router) failed(svc *remote.Service) func(http.ResponseWriter, *http.Request, error) {
	return func(w http.ResponseWriter, req *http.Request, err error) {
		cause := err.Error()
		var ce *connect.Error
		if errors.As(err, &ce) {
			cause = ce.Message()
		}
		msg := fmt.Sprintf("the %s service is unavailable: %s", svc.Name, cause)
		if remote.IsOpenError(err) {
			msg = err.Error()
		}
		r.logger.Warn("call not delivered", zap.String("service", svc.Name), zap.String("path", req.URL.Path), zap.Error(err))
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]string{"code": "unavailable", "message": msg})
	}
}

// health reports each service's breaker; the gateway is healthy while it
// serves, whatever the services' state (each has its own health).
func (r *Router) health(w http.ResponseWriter, _ *http.Request) {
	checks := map[string]string{}
	names := make([]string, 0, len(r.services))
	for name := range r.services {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		s := r.services[name]
		state := "breaker " + s.State()
		if e := s.LastError(); e != "" {
			state += "; last error: " + e
		}
		checks["service."+name] = state
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"status": "ok", "checks": checks, "time": time.Now().UTC()})
}

// State is the breaker state of service name, for tests and metrics.
func (r *Router) State(name string) string { return r.services[name].State() }
