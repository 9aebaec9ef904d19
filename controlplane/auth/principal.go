// Package auth authenticates callers and authorises every RPC. Users call
// with a JWT from the organisation's identity provider or with a long-lived
// API token (random, stored hashed, revocable); each RPC declares in its
// protobuf options the permission it needs, and one Connect interceptor
// enforces that for Connect, gRPC and REST alike. Roles are built in
// (admin, operator, developer, viewer, auditor) or custom: a set of
// permissions, optionally scoped to jobs and target agents by label
// selectors, which the services check where they know the labels. Agents
// are not users: they authenticate with their own credential in the agent
// gateway.
//
// API tokens, users and custom roles live in the "auth" schema, as does
// the outbox that records denied calls for the audit trail.
package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/opsconductor/opsconductor/controlplane/label"
)

// Permissions name what a caller may do. Each RPC declares one.
const (
	PermSelfRead       = "self:read"
	PermJobsRead       = "jobs:read"
	PermJobsWrite      = "jobs:write"
	PermExecutionsRead = "executions:read"
	PermExecutionsRun  = "executions:run"
	// PermExecutionsRunProtected runs jobs on agents with protected labels
	// (production, by default env=prod); developers lack it.
	PermExecutionsRunProtected = "executions:run-protected"
	PermExecutionsDanger       = "executions:dangerous"
	PermAgentsRead             = "agents:read"
	PermAgentsManage           = "agents:manage"
	PermTokensManage           = "tokens:manage"
	PermUsersManage            = "users:manage"
	PermAuditRead              = "audit:read"
	// Credentials: read shows names and metadata (never values), manage
	// writes them.
	PermCredentialsRead   = "credentials:read"
	PermCredentialsManage = "credentials:manage"
	// The inventory of remote hosts and groups.
	PermInventoryRead  = "inventory:read"
	PermInventoryWrite = "inventory:write"
	// Schedules that run jobs on a clock.
	PermSchedulesRead  = "schedules:read"
	PermSchedulesWrite = "schedules:write"
	// Blackout windows silence schedules, global ones all of them.
	PermSchedulesBlackouts = "schedules:blackouts"
	// The services' domain events (GET /api/v1/events); write: log an
	// external system's event.
	PermEventsRead  = "events:read"
	PermEventsWrite = "events:write"
	// The business metrics (GET /api/v1/metrics).
	PermMetricsRead = "metrics:read"
	// Webhook subscriptions and their delivery logs.
	PermWebhooksManage = "webhooks:manage"
)

// Permissions lists every permission, for validating custom roles.
var Permissions = []string{
	PermSelfRead, PermJobsRead, PermJobsWrite, PermExecutionsRead, PermExecutionsRun, PermExecutionsRunProtected,
	PermExecutionsDanger, PermAgentsRead, PermAgentsManage, PermTokensManage, PermUsersManage, PermAuditRead,
	PermCredentialsRead, PermCredentialsManage, PermInventoryRead, PermInventoryWrite, PermSchedulesRead, PermSchedulesWrite,
	PermSchedulesBlackouts, PermEventsRead, PermEventsWrite, PermMetricsRead, PermWebhooksManage,
}

// builtinRoles maps each built-in role to its permissions; "*" is all.
var builtinRoles = map[string][]string{
	"admin": {"*"},
	"operator": {PermSelfRead, PermJobsRead, PermExecutionsRead, PermExecutionsRun, PermExecutionsRunProtected, PermAgentsRead, PermCredentialsRead,
		PermInventoryRead, PermInventoryWrite, PermSchedulesRead, PermSchedulesWrite, PermSchedulesBlackouts, PermEventsRead, PermEventsWrite, PermMetricsRead,
		PermWebhooksManage},
	"developer": {PermSelfRead, PermJobsRead, PermJobsWrite, PermExecutionsRead, PermExecutionsRun, PermAgentsRead, PermCredentialsRead, PermInventoryRead,
		PermSchedulesRead, PermSchedulesWrite, PermEventsRead, PermMetricsRead},
	"viewer":  {PermSelfRead, PermJobsRead, PermExecutionsRead, PermAgentsRead, PermInventoryRead, PermSchedulesRead, PermEventsRead, PermMetricsRead},
	"auditor": {PermSelfRead, PermAuditRead, PermEventsRead, PermMetricsRead},
}

// BuiltinRoleNames lists the built-in roles.
func BuiltinRoleNames() []string {
	names := make([]string, 0, len(builtinRoles))
	for n := range builtinRoles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// IsBuiltinRole reports whether name is a built-in role.
func IsBuiltinRole(name string) bool {
	_, ok := builtinRoles[name]
	return ok
}

// Grant is what one role gives: permissions, limited to jobs whose labels
// match JobScope and to agents whose labels match TargetScope (an empty
// selector matches everything).
type Grant struct {
	Role        string
	Permissions []string
	JobScope    label.Selector
	TargetScope label.Selector
}

func (g Grant) has(perm string) bool {
	return slices.Contains(g.Permissions, "*") || slices.Contains(g.Permissions, perm)
}

// Principal is an authenticated caller.
type Principal struct {
	Name    string // user or token name
	Method  string // "api_token" or "jwt"
	TokenID string // for API tokens
	Roles   []string
	Grants  []Grant // what the roles give, resolved at authentication
}

// Can reports whether any grant holds perm, whatever its scope. The
// interceptor uses it; services that know the labels involved call CanOn.
func (p Principal) Can(perm string) bool {
	for _, g := range p.Grants {
		if g.has(perm) {
			return true
		}
	}
	return false
}

// CanOn reports whether one grant holds perm for a job with jobLabels on
// every agent in agents (nil: no agents involved).
func (p Principal) CanOn(perm string, jobLabels map[string]string, agents []map[string]string) bool {
	for _, g := range p.Grants {
		if !g.has(perm) || !g.JobScope.Matches(jobLabels) {
			continue
		}
		ok := true
		for _, a := range agents {
			if !g.TargetScope.Matches(a) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// AllPermissions lists what the principal may do somewhere, with the
// scope of scoped grants.
func (p Principal) AllPermissions() []string {
	set := map[string]bool{}
	for _, g := range p.Grants {
		for _, perm := range g.Permissions {
			if len(g.JobScope) > 0 || len(g.TargetScope) > 0 {
				perm = fmt.Sprintf("%s (jobs %q, targets %q)", perm, g.JobScope.String(), g.TargetScope.String())
			}
			set[perm] = true
		}
	}
	out := make([]string, 0, len(set))
	for perm := range set {
		out = append(out, perm)
	}
	sort.Strings(out)
	return out
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// CallerNote is filled by the interceptor once it has authenticated the
// caller, whether or not the call is then allowed: an interceptor outside
// it (the audit recorder) learns who called a refused call.
type CallerNote struct {
	mu sync.Mutex
	p  *Principal
}

type callerNoteKey struct{}

// WithCallerNote returns ctx carrying an empty note.
func WithCallerNote(ctx context.Context) (context.Context, *CallerNote) {
	n := &CallerNote{}
	return context.WithValue(ctx, callerNoteKey{}, n), n
}

// Caller is who the interceptor authenticated, if anyone.
func (n *CallerNote) Caller() (Principal, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.p == nil {
		return Principal{}, false
	}
	return *n.p, true
}

func noteCaller(ctx context.Context, p Principal) {
	if n, ok := ctx.Value(callerNoteKey{}).(*CallerNote); ok {
		n.mu.Lock()
		n.p = &p
		n.mu.Unlock()
	}
}

// PrincipalFrom returns the authenticated caller in ctx, if any.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// grantJSON is a Grant as stored: its scopes as selector text.
type grantJSON struct {
	Role        string   `json:"role"`
	Permissions []string `json:"permissions"`
	JobScope    string   `json:"job_scope,omitempty"`
	TargetScope string   `json:"target_scope,omitempty"`
}

// EncodeGrants stores what p may do, so work done later on its behalf (a
// schedule's fires) can be held to the same rights.
func EncodeGrants(p Principal) ([]byte, error) {
	out := make([]grantJSON, len(p.Grants))
	for i, g := range p.Grants {
		out[i] = grantJSON{Role: g.Role, Permissions: g.Permissions, JobScope: g.JobScope.String(), TargetScope: g.TargetScope.String()}
	}
	return json.Marshal(out)
}

// DecodeGrants reads what EncodeGrants stored.
func DecodeGrants(raw []byte) ([]Grant, error) {
	var in []grantJSON
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, fmt.Errorf("decode grants: %w", err)
	}
	out := make([]Grant, len(in))
	for i, g := range in {
		job, err := label.ParseSelector(g.JobScope)
		if err != nil {
			return nil, fmt.Errorf("decode grants: job scope: %w", err)
		}
		target, err := label.ParseSelector(g.TargetScope)
		if err != nil {
			return nil, fmt.Errorf("decode grants: target scope: %w", err)
		}
		out[i] = Grant{Role: g.Role, Permissions: g.Permissions, JobScope: job, TargetScope: target}
	}
	return out, nil
}
