// Package auth authenticates callers and authorises every RPC. Users call
// with a JWT from the organisation's identity provider or with a long-lived
// API token (random, stored hashed, revocable); each RPC declares in its
// protobuf options the permission it needs, and one Connect interceptor
// enforces that for Connect, gRPC and REST alike. Agents are not users:
// they authenticate with their own credential in the agent gateway.
//
// API tokens live in the "auth" schema, as does the outbox that records
// denied calls for the audit trail.
package auth

import (
	"context"
	"fmt"
	"sort"
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
	PermAuditRead              = "audit:read"
)

// builtinRoles maps each built-in role to its permissions; "*" is all.
var builtinRoles = map[string][]string{
	"admin":     {"*"},
	"operator":  {PermSelfRead, PermJobsRead, PermExecutionsRead, PermExecutionsRun, PermExecutionsRunProtected, PermAgentsRead},
	"developer": {PermSelfRead, PermJobsRead, PermJobsWrite, PermExecutionsRead, PermExecutionsRun, PermAgentsRead},
	"viewer":    {PermSelfRead, PermJobsRead, PermExecutionsRead, PermAgentsRead},
	"auditor":   {PermSelfRead, PermAuditRead},
}

// RoleNames lists the built-in roles.
func RoleNames() []string {
	names := make([]string, 0, len(builtinRoles))
	for n := range builtinRoles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ValidateRoles checks that every role exists.
func ValidateRoles(roles []string) error {
	if len(roles) == 0 {
		return fmt.Errorf("at least one role is needed (one of %v)", RoleNames())
	}
	for _, r := range roles {
		if _, ok := builtinRoles[r]; !ok {
			return fmt.Errorf("unknown role %q (known: %v)", r, RoleNames())
		}
	}
	return nil
}

// Principal is an authenticated caller.
type Principal struct {
	Name    string   // user or token name
	Method  string   // "api_token" or "jwt"
	TokenID string   // for API tokens
	Roles   []string // as granted
}

// Can reports whether the principal holds perm through any of its roles.
func (p Principal) Can(perm string) bool {
	for _, r := range p.Roles {
		for _, granted := range builtinRoles[r] {
			if granted == "*" || granted == perm {
				return true
			}
		}
	}
	return false
}

// Permissions lists what the principal may do.
func (p Principal) Permissions() []string {
	set := map[string]bool{}
	for _, r := range p.Roles {
		for _, perm := range builtinRoles[r] {
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

// PrincipalFrom returns the authenticated caller in ctx, if any.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}
