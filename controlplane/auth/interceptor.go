package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/correlation"
	"github.com/opsconductor/opsconductor/controlplane/ratelimit"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// AccessOf returns the access rule an RPC declares, or false when it
// declares none (a build mistake CheckServices catches at start).
func AccessOf(md protoreflect.MethodDescriptor) (*opsconductorv1.Access, bool) {
	if md == nil || !proto.HasExtension(md.Options(), opsconductorv1.E_Access) {
		return nil, false
	}
	return proto.GetExtension(md.Options(), opsconductorv1.E_Access).(*opsconductorv1.Access), true
}

// CheckServices refuses services with an RPC that declares no access rule,
// or a user RPC without a permission.
func CheckServices(services ...protoreflect.ServiceDescriptor) error {
	var missing []string
	for _, sd := range services {
		methods := sd.Methods()
		for i := 0; i < methods.Len(); i++ {
			md := methods.Get(i)
			acc, ok := AccessOf(md)
			if !ok || (acc.GetCaller() == opsconductorv1.Caller_CALLER_UNSPECIFIED && acc.GetPermission() == "") {
				missing = append(missing, string(md.FullName()))
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("RPCs without an (opsconductor.v1.access) permission: %s", strings.Join(missing, ", "))
	}
	return nil
}

// Interceptor enforces each RPC's access rule: it authenticates the caller
// of user RPCs, checks the permission and records refusals for the audit
// trail. Agent RPCs pass through to the agent gateway, which checks the
// agent's own credential; public RPCs pass through.
type Interceptor struct {
	authn   PrincipalSource
	denials Denials
	limiter ratelimit.Limiter
	logger  *zap.Logger
	// serviceToken is what the control plane's other services present in
	// split mode; empty: service RPCs are refused.
	serviceToken string
}

// PrincipalSource authenticates a bearer token: the Authenticator in the
// process that keeps the users and tokens, the jobs service's internal
// API in the others (split mode).
type PrincipalSource interface {
	Authenticate(ctx context.Context, bearer string) (Principal, error)
}

// Denials records refused calls for the audit trail.
type Denials interface {
	Denied(ctx context.Context, rec DeniedCall) error
}

var _ connect.Interceptor = (*Interceptor)(nil)

// NewInterceptor builds the interceptor. limiter bounds each principal's
// call rate, and the rate of failed authentications per peer address; nil
// means no limit.
func NewInterceptor(authn PrincipalSource, denials Denials, limiter ratelimit.Limiter, logger *zap.Logger) *Interceptor {
	return &Interceptor{authn: authn, denials: denials, limiter: limiter, logger: logger.Named("authz")}
}

// AcceptServiceToken lets the control plane's other services call the
// service RPCs with token (split mode).
func (i *Interceptor) AcceptServiceToken(token string) { i.serviceToken = token }

// limit applies the rate limit to key.
func (i *Interceptor) limit(ctx context.Context, key, who string) error {
	if i.limiter == nil {
		return nil
	}
	ok, after, err := i.limiter.Allow(ctx, key)
	if err != nil {
		i.logger.Warn("rate limiter unavailable; allowing the call", zap.Error(err))
		return nil
	}
	if !ok {
		return apperr.RateLimited(after, "rate limit exceeded for %s; retry in %s", who, after.Round(time.Millisecond))
	}
	return nil
}

func (i *Interceptor) authorize(ctx context.Context, spec connect.Spec, header interface{ Get(string) string }, peer string) (context.Context, error) {
	md, _ := spec.Schema.(protoreflect.MethodDescriptor)
	acc, ok := AccessOf(md)
	if !ok {
		return ctx, fmt.Errorf("procedure %s declares no access rule", spec.Procedure)
	}
	switch acc.GetCaller() {
	case opsconductorv1.Caller_CALLER_PUBLIC, opsconductorv1.Caller_CALLER_AGENT:
		return ctx, nil
	case opsconductorv1.Caller_CALLER_SERVICE:
		return ctx, i.checkService(ctx, spec.Procedure, header, peer)
	}
	return i.Check(ctx, spec.Procedure, acc.GetPermission(), header, peer)
}

// Check authenticates the caller from header, applies the rate limits and
// checks perm, recording refusals. Plain HTTP handlers (the SSE event
// stream) use it; RPCs go through the interceptor. what names the call in
// messages and audit records.
func (i *Interceptor) Check(ctx context.Context, what, perm string, header interface{ Get(string) string }, peer string) (context.Context, error) {
	spec := connect.Spec{Procedure: what}
	bearer, _ := strings.CutPrefix(header.Get("Authorization"), "Bearer ")
	p, err := i.authn.Authenticate(ctx, strings.TrimSpace(bearer))
	if err != nil {
		var refused *apperr.Error
		if !errors.As(err, &refused) {
			// The credential could not be checked (a store or, in split
			// mode, the jobs service is down): not a refusal to record,
			// nor a failed attempt to count against the caller's address.
			return ctx, err
		}
		i.deny(ctx, spec.Procedure, "", err, "unauthenticated", peer)
		// Guessing tokens is slowed down per address.
		if lerr := i.limit(ctx, "authfail:"+peerHost(peer), "failed authentications from "+peerHost(peer)); lerr != nil {
			return ctx, lerr
		}
		return ctx, err
	}
	noteCaller(ctx, p)
	if err := i.limit(ctx, "principal:"+p.Name, p.Name); err != nil {
		return ctx, err
	}
	if !p.Can(perm) {
		err := apperr.PermissionDenied("%s (roles %v) lacks permission %s for %s", p.Name, p.Roles, perm, spec.Procedure)
		i.deny(ctx, spec.Procedure, p.Name, err, "permission_denied", peer)
		return ctx, err
	}
	return WithPrincipal(ctx, p), nil
}

// checkService admits a call from another service of the control plane.
func (i *Interceptor) checkService(ctx context.Context, procedure string, header interface{ Get(string) string }, peer string) error {
	bearer, _ := strings.CutPrefix(header.Get("Authorization"), "Bearer ")
	if i.serviceToken == "" || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(bearer)), []byte(i.serviceToken)) != 1 {
		err := apperr.Unauthenticated("%s is for the control plane's own services (the service token)", procedure)
		i.deny(ctx, procedure, "", err, "unauthenticated", peer)
		// Guessing the service token is slowed down like guessing any.
		if lerr := i.limit(ctx, "authfail:"+peerHost(peer), "failed authentications from "+peerHost(peer)); lerr != nil {
			return lerr
		}
		return err
	}
	return nil
}

// deny records a refused call; the outbox carries it to the audit trail.
func (i *Interceptor) deny(ctx context.Context, procedure, principal string, reason error, code, peer string) {
	var ae *apperr.Error
	if !errors.As(reason, &ae) {
		return // a store failure, not a refusal; logged by the error interceptor
	}
	rec := DeniedCall{Procedure: procedure, Principal: principal, Reason: ae.Message, Code: code,
		CorrelationID: correlation.ID(ctx), Peer: peer, Time: time.Now().UTC()}
	if err := i.denials.Denied(context.WithoutCancel(ctx), rec); err != nil {
		i.logger.Error("record denied call", zap.Error(err), zap.String("procedure", procedure))
	}
	i.logger.Info("call denied", zap.String("procedure", procedure), zap.String("principal", principal),
		zap.String("code", code), zap.String("peer", peer), zap.String("correlation_id", rec.CorrelationID))
}

func peerHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

func (i *Interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := i.authorize(ctx, req.Spec(), req.Header(), req.Peer().Addr)
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (i *Interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *Interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := i.authorize(ctx, conn.Spec(), conn.RequestHeader(), conn.Peer().Addr)
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}
