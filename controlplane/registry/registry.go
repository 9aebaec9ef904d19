// Package registry is the agent registry of the executions service: join
// tokens, enrollment, agent identities and facts, online/offline status, and
// the resolution of job targets to agents. Its state lives in the "agents"
// schema.
//
// An agent's identity is a key pair it makes itself: it registers the
// public half at enrollment and then signs short-lived tokens (EdDSA JWTs)
// with the private half, so the control plane stores no agent secret and
// the credential survives TLS-terminating proxies. Keys rotate without
// downtime (the old key verifies for a grace period); revoked agents are
// refused from their next call.
package registry

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// Config tunes the registry.
type Config struct {
	// OnlineWindow: an agent seen within it is online (default 90s, three
	// times the default poll wait).
	OnlineWindow time.Duration
	// DefaultTokenTTL applies when a join token is created without a TTL
	// (default 24h).
	DefaultTokenTTL time.Duration
	// KeyGrace is how long an agent's old key still verifies after a
	// rotation (default 10m, twice the longest agent token).
	KeyGrace time.Duration
	// Inventory gives the hosts of the groups remote targets name (nil:
	// no inventory; a target naming a group is refused).
	Inventory HostSource
}

// TaskLoser ends the queued and running tasks of a revoked agent as lost
// and returns how many; the executions store implements it.
type TaskLoser func(ctx context.Context, agentID, reason string) (int, error)

// Registry implements opsconductorv1connect.AgentRegistryService and the
// identity calls the agent gateway needs.
type Registry struct {
	store     *Store
	loseTasks TaskLoser
	cfg       Config
	logger    *zap.Logger
	now       func() time.Time
	verified  *verifiedTokens
}

var _ opsconductorv1connect.AgentRegistryServiceHandler = (*Registry)(nil)

// New builds the registry. loseTasks may be nil (no tasks to end).
func New(st *Store, loseTasks TaskLoser, logger *zap.Logger, cfg Config) *Registry {
	if cfg.OnlineWindow <= 0 {
		cfg.OnlineWindow = 90 * time.Second
	}
	if cfg.DefaultTokenTTL <= 0 {
		cfg.DefaultTokenTTL = 24 * time.Hour
	}
	if cfg.KeyGrace <= 0 {
		cfg.KeyGrace = 10 * time.Minute
	}
	if loseTasks == nil {
		loseTasks = func(context.Context, string, string) (int, error) { return 0, nil }
	}
	return &Registry{store: st, loseTasks: loseTasks, cfg: cfg, logger: logger.Named("registry"), now: time.Now,
		verified: newVerifiedTokens(100_000)}
}

func (r *Registry) CreateJoinToken(ctx context.Context, req *connect.Request[opsconductorv1.CreateJoinTokenRequest]) (*connect.Response[opsconductorv1.CreateJoinTokenResponse], error) {
	ttl := r.cfg.DefaultTokenTTL
	if t := req.Msg.GetTtl(); t != nil {
		if !t.IsValid() || t.AsDuration() <= 0 {
			return nil, apperr.InvalidField("ttl", "must be a positive duration")
		}
		ttl = t.AsDuration()
	}
	if req.Msg.GetMaxUses() < 0 {
		return nil, apperr.InvalidField("max_uses", "must not be negative (0 means unlimited)")
	}
	if vs := validateLabels(req.Msg.GetLabels()); len(vs) > 0 {
		return nil, apperr.Invalid("join token", vs)
	}
	secret := randomSecret()
	now := r.now().UTC()
	rec := TokenRecord{
		ID:          uuid.Must(uuid.NewV7()).String(),
		TokenHash:   hashSecret(secret),
		Description: req.Msg.GetDescription(),
		MaxUses:     int(req.Msg.GetMaxUses()),
		CreatedAt:   now,
		ExpiresAt:   now.Add(ttl),
		Labels:      req.Msg.GetLabels(),
	}
	if err := r.store.TokenCreate(ctx, rec); err != nil {
		return nil, err
	}
	r.logger.Info("join token created", zap.String("token_id", rec.ID), zap.Time("expires_at", rec.ExpiresAt), zap.Int("max_uses", rec.MaxUses))
	return connect.NewResponse(&opsconductorv1.CreateJoinTokenResponse{
		TokenId:    rec.ID,
		Token:      "ocj_" + secret,
		ExpireTime: timestamppb.New(rec.ExpiresAt),
	}), nil
}

func (r *Registry) ListAgents(ctx context.Context, req *connect.Request[opsconductorv1.ListAgentsRequest]) (*connect.Response[opsconductorv1.ListAgentsResponse], error) {
	sel, err := label.ParseSelector(req.Msg.GetLabelSelector())
	if err != nil {
		return nil, apperr.InvalidField("label_selector", "malformed label selector: %v", err)
	}
	agents, err := r.store.AgentList(ctx)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListAgentsResponse{}
	for _, a := range agents {
		if !sel.Matches(a.Labels) {
			continue
		}
		resp.Agents = append(resp.Agents, &opsconductorv1.Agent{
			Id:           a.ID,
			Name:         a.Name,
			Labels:       a.Labels,
			Hostname:     a.Hostname,
			Os:           a.OS,
			Arch:         a.Arch,
			AgentVersion: a.AgentVersion,
			Status:       r.status(a),
			LastSeenTime: timestamppb.New(a.LastSeenAt),
			EnrollTime:   timestamppb.New(a.EnrolledAt),
			State:        a.State,
		})
	}
	return connect.NewResponse(resp), nil
}

func (r *Registry) status(a AgentRecord) string {
	if r.Online(a) {
		return "online"
	}
	return "offline"
}

// AgentCounts counts the enrolled, not revoked agents by whether they
// are online (for the business metrics).
func (r *Registry) AgentCounts(ctx context.Context) (online, offline int64, err error) {
	agents, err := r.store.AgentList(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, a := range agents {
		switch {
		case a.Revoked:
		case r.Online(a):
			online++
		default:
			offline++
		}
	}
	return online, offline, nil
}

// Online reports whether the agent polled within the online window.
func (r *Registry) Online(a AgentRecord) bool { return r.now().Sub(a.LastSeenAt) <= r.cfg.OnlineWindow }

// Facts are what an agent reports about its host.
type Facts struct {
	Hostname, OS, Arch, AgentVersion string
	Plugins                          []string
}

// Enroll spends the join token and registers a new agent with its public
// key. It returns the stored agent (with the labels in force).
func (r *Registry) Enroll(ctx context.Context, joinToken, name string, labels map[string]string, f Facts, publicKey []byte) (AgentRecord, error) {
	var vs []apperr.Violation
	if name == "" {
		vs = append(vs, apperr.Violation{Field: "name", Description: "must not be empty"})
	}
	if len(publicKey) != ed25519.PublicKeySize {
		vs = append(vs, apperr.Violation{Field: "public_key", Description: fmt.Sprintf("must be an Ed25519 public key (%d bytes)", ed25519.PublicKeySize)})
	}
	vs = append(vs, validateLabels(labels)...)
	if len(vs) > 0 {
		return AgentRecord{}, apperr.Invalid("enrollment", vs)
	}
	secret := strings.TrimPrefix(joinToken, "ocj_")
	if secret == "" {
		return AgentRecord{}, apperr.Unauthenticated("a join token is required: create one with `opsconductor agent token create`")
	}
	now := r.now().UTC()
	rec := AgentRecord{
		ID: uuid.Must(uuid.NewV7()).String(), Name: name, Labels: labels,
		Hostname: f.Hostname, OS: f.OS, Arch: f.Arch, AgentVersion: f.AgentVersion,
		PublicKey: publicKey, EnrolledAt: now, LastSeenAt: now,
	}
	rec, err := r.store.AgentEnroll(ctx, hashSecret(secret), rec, now)
	if errors.Is(err, ErrTokenUnusable) {
		return AgentRecord{}, apperr.Unauthenticated("join token refused: it is unknown, expired or used up")
	}
	if err != nil {
		return AgentRecord{}, err
	}
	r.logger.Info("agent enrolled", zap.String("agent_id", rec.ID), zap.String("agent_name", name), zap.Any("labels", rec.Labels))
	return rec, nil
}

func validateLabels(labels map[string]string) []apperr.Violation {
	var vs []apperr.Violation
	for k, v := range labels {
		if err := label.ValidatePair(k, v); err != nil {
			vs = append(vs, apperr.Violation{Field: "labels[" + k + "]", Description: err.Error()})
		}
	}
	return vs
}

// AgentTokenAudience is the aud of every agent token.
const AgentTokenAudience = "opsconductor-agent"

// MaxAgentTokenLifetime bounds exp - iat of an agent token, so a stolen
// token is worth little.
const MaxAgentTokenLifetime = 10 * time.Minute

// agentTokenLeeway is the clock skew allowed between agent and server.
const agentTokenLeeway = 30 * time.Second

// Authenticate checks an agent token (an EdDSA JWT signed by the agent's
// key) and returns the agent.
func (r *Registry) Authenticate(ctx context.Context, token string) (AgentRecord, error) {
	if token == "" {
		return AgentRecord{}, apperr.Unauthenticated("agent token missing: send Authorization: Bearer TOKEN signed with the agent key")
	}
	if v, ok := r.verified.get(token); ok {
		return r.authenticateVerified(ctx, token, v)
	}
	var agent AgentRecord
	var lookupErr error
	claims := &jwt.RegisteredClaims{}
	_, err := jwt.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		id, _ := t.Claims.GetSubject()
		a, err := r.store.AgentGet(ctx, id)
		if err != nil {
			lookupErr = err
			return nil, err
		}
		agent = a
		keys := []jwt.VerificationKey{ed25519.PublicKey(a.PublicKey)}
		if a.PreviousKeyExpiresAt != nil && r.now().Before(*a.PreviousKeyExpiresAt) && len(a.PreviousPublicKey) == ed25519.PublicKeySize {
			keys = append(keys, ed25519.PublicKey(a.PreviousPublicKey))
		}
		return jwt.VerificationKeySet{Keys: keys}, nil
	}, jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}), jwt.WithAudience(AgentTokenAudience),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(agentTokenLeeway), jwt.WithTimeFunc(r.now))
	switch {
	case errors.Is(lookupErr, store.ErrNotFound):
		return AgentRecord{}, apperr.Unauthenticated("unknown agent: enroll it again")
	case lookupErr != nil:
		return AgentRecord{}, lookupErr
	case err != nil:
		return AgentRecord{}, apperr.Unauthenticated("agent token refused: %v", agentTokenReason(err))
	}
	if claims.ExpiresAt == nil || claims.IssuedAt == nil || claims.ExpiresAt.Sub(claims.IssuedAt.Time) > MaxAgentTokenLifetime {
		return AgentRecord{}, apperr.Unauthenticated("agent token refused: it must have iat and live at most %s", MaxAgentTokenLifetime)
	}
	if agent.Revoked {
		return AgentRecord{}, apperr.PermissionDenied("agent %s (%s) is revoked", agent.Name, agent.ID)
	}
	// Only during a rotation's grace period can the previous key have
	// signed; outside it, skip the second verification on this hot path.
	inGrace := agent.PreviousKeyExpiresAt != nil && r.now().Before(*agent.PreviousKeyExpiresAt)
	agent.SignedWithPreviousKey = inGrace && !signedWith(token, agent.PublicKey)
	key := agent.PublicKey
	if agent.SignedWithPreviousKey {
		key = agent.PreviousPublicKey
	}
	r.verified.put(token, verifiedToken{agentID: agent.ID, key: key, expires: claims.ExpiresAt.Time}, r.now())
	return agent, nil
}

// authenticateVerified is Authenticate for a token verified before: what
// may have changed since is checked again.
func (r *Registry) authenticateVerified(ctx context.Context, token string, v verifiedToken) (AgentRecord, error) {
	now := r.now()
	if now.After(v.expires.Add(agentTokenLeeway)) {
		r.verified.forget(token)
		return AgentRecord{}, apperr.Unauthenticated("agent token refused: expired")
	}
	agent, err := r.store.AgentGet(ctx, v.agentID)
	if errors.Is(err, store.ErrNotFound) {
		r.verified.forget(token)
		return AgentRecord{}, apperr.Unauthenticated("unknown agent: enroll it again")
	}
	if err != nil {
		return AgentRecord{}, err
	}
	inGrace := agent.PreviousKeyExpiresAt != nil && now.Before(*agent.PreviousKeyExpiresAt)
	switch {
	case bytes.Equal(v.key, agent.PublicKey):
	case inGrace && bytes.Equal(v.key, agent.PreviousPublicKey):
		agent.SignedWithPreviousKey = true
	default:
		// Signed with a key the agent no longer has.
		r.verified.forget(token)
		return AgentRecord{}, apperr.Unauthenticated("agent token refused: bad signature or algorithm")
	}
	if agent.Revoked {
		return AgentRecord{}, apperr.PermissionDenied("agent %s (%s) is revoked", agent.Name, agent.ID)
	}
	return agent, nil
}

// signedWith reports whether the (already verified) token's signature is
// by key.
func signedWith(token string, key []byte) bool {
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(token[i+1:])
	if err != nil {
		return false
	}
	return jwt.SigningMethodEdDSA.Verify(token[:i], sig, ed25519.PublicKey(key)) == nil
}

func agentTokenReason(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "not valid yet (check the agent's clock)"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "bad signature or algorithm"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "a required claim is missing"
	}
	return "malformed"
}

// RotateKey replaces the agent's public key; the old one verifies for the
// grace period.
func (r *Registry) RotateKey(ctx context.Context, a AgentRecord, key []byte) error {
	if len(key) != ed25519.PublicKeySize {
		return apperr.InvalidField("public_key", "must be an Ed25519 public key (%d bytes)", ed25519.PublicKeySize)
	}
	if a.SignedWithPreviousKey {
		// Else whoever holds a stolen old key could rotate the agent's
		// identity to their own during the grace period.
		return apperr.PermissionDenied("agent %s: a key rotation must be signed with the current key, not the previous one", a.Name)
	}
	if err := r.store.AgentRotateKey(ctx, a.ID, key, r.now().Add(r.cfg.KeyGrace)); err != nil {
		return err
	}
	r.logger.Info("agent key rotated", zap.String("agent_id", a.ID), zap.String("agent_name", a.Name))
	return nil
}

// Agent states.
const (
	StateActive   = "active"
	StateDraining = "draining"
	StatePaused   = "paused"
)

// AgentState returns the agent's state (active, draining or paused).
func (r *Registry) AgentState(ctx context.Context, id string) (string, error) {
	a, err := r.store.AgentGet(ctx, id)
	if err != nil {
		return "", err
	}
	return a.State, nil
}

func (r *Registry) setState(ctx context.Context, id, state string) error {
	err := r.store.AgentSetState(ctx, id, state)
	if errors.Is(err, store.ErrNotFound) {
		return apperr.NotFound("agent %s not found", id)
	}
	if err != nil {
		return err
	}
	r.logger.Info("agent state changed", zap.String("agent_id", id), zap.String("state", state))
	return nil
}

func (r *Registry) DrainAgent(ctx context.Context, req *connect.Request[opsconductorv1.DrainAgentRequest]) (*connect.Response[opsconductorv1.DrainAgentResponse], error) {
	if err := r.setState(ctx, req.Msg.GetId(), StateDraining); err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.DrainAgentResponse{}), nil
}

func (r *Registry) PauseAgent(ctx context.Context, req *connect.Request[opsconductorv1.PauseAgentRequest]) (*connect.Response[opsconductorv1.PauseAgentResponse], error) {
	if err := r.setState(ctx, req.Msg.GetId(), StatePaused); err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.PauseAgentResponse{}), nil
}

func (r *Registry) ResumeAgent(ctx context.Context, req *connect.Request[opsconductorv1.ResumeAgentRequest]) (*connect.Response[opsconductorv1.ResumeAgentResponse], error) {
	if err := r.setState(ctx, req.Msg.GetId(), StateActive); err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.ResumeAgentResponse{}), nil
}

func (r *Registry) RevokeAgent(ctx context.Context, req *connect.Request[opsconductorv1.RevokeAgentRequest]) (*connect.Response[opsconductorv1.RevokeAgentResponse], error) {
	id := req.Msg.GetId()
	err := r.store.AgentRevoke(ctx, id, req.Msg.GetReason(), r.now())
	if errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("agent %s not found", id)
	}
	if err != nil {
		return nil, err
	}
	reason := "agent revoked"
	if req.Msg.GetReason() != "" {
		reason += ": " + req.Msg.GetReason()
	}
	n, err := r.loseTasks(ctx, id, reason)
	if err != nil {
		return nil, fmt.Errorf("end the tasks of revoked agent %s: %w", id, err)
	}
	r.logger.Warn("agent revoked", zap.String("agent_id", id), zap.String("reason", req.Msg.GetReason()), zap.Int("tasks_lost", n))
	return connect.NewResponse(&opsconductorv1.RevokeAgentResponse{TasksLost: int32(n)}), nil
}

// UpdateFacts stores the labels and facts an agent reports at start.
func (r *Registry) UpdateFacts(ctx context.Context, a AgentRecord, labels map[string]string, f Facts) error {
	if vs := validateLabels(labels); len(vs) > 0 {
		return apperr.Invalid("agent labels", vs)
	}
	if labels == nil {
		labels = map[string]string{}
	}
	a.Labels = labels
	a.Hostname, a.OS, a.Arch, a.AgentVersion, a.Plugins = f.Hostname, f.OS, f.Arch, f.AgentVersion, f.Plugins
	a.LastSeenAt = r.now()
	return r.store.AgentUpdateFacts(ctx, a)
}

// touchGranularity is how stale an agent's last-seen time may get: it is
// written at most this often.
const touchGranularity = 5 * time.Second

// Touch records that agent a (as just read) polled. Nothing is written
// when its record was seen within touchGranularity: the common case,
// decided without a statement.
func (r *Registry) Touch(ctx context.Context, a AgentRecord) error {
	now := r.now()
	if now.Sub(a.LastSeenAt) < touchGranularity {
		return nil
	}
	return r.store.AgentTouch(ctx, a.ID, now, touchGranularity)
}

// Resolve maps targets to enrolled, non-revoked agents (offline ones
// included), each agent once, in name order. unmatched lists the indexes of
// targets that matched no agent.
func (r *Registry) Resolve(ctx context.Context, targets []*opsconductorv1.Target) ([]AgentRecord, []int, error) {
	all, err := r.store.AgentList(ctx)
	if err != nil {
		return nil, nil, err
	}
	return resolveAgents(all, targets)
}

// resolveAgents is Resolve on a list of agents already read.
func resolveAgents(all []AgentRecord, targets []*opsconductorv1.Target) (agents []AgentRecord, unmatched []int, err error) {
	seen := map[string]bool{}
	for i, t := range targets {
		if t.GetRemote() != nil {
			continue // hosts, not agents: ResolveTargets resolves them
		}
		matched := false
		var sel label.Selector
		if t.GetSelector() != "" {
			if sel, err = label.ParseSelector(t.GetSelector()); err != nil {
				return nil, nil, apperr.InvalidField(fmt.Sprintf("job.targets[%d].selector", i), "malformed label selector: %v", err)
			}
		}
		for _, a := range all {
			ok := (t.GetAgentId() != "" && t.GetAgentId() == a.ID) || (t.GetSelector() != "" && sel.Matches(a.Labels))
			if !ok {
				continue
			}
			matched = true
			if !seen[a.ID] {
				seen[a.ID] = true
				agents = append(agents, a)
			}
		}
		if !matched {
			unmatched = append(unmatched, i)
		}
	}
	sort.Slice(agents, func(i, j int) bool {
		return agents[i].Name < agents[j].Name || (agents[i].Name == agents[j].Name && agents[i].ID < agents[j].ID)
	})
	return agents, unmatched, nil
}

// ResolveTargets implements job.TargetResolver: the agents the targets
// match, by name, then the remote hosts in the order the targets list them,
// each with the jump agents that may reach it.
func (r *Registry) ResolveTargets(ctx context.Context, targets []*opsconductorv1.Target) ([]*opsconductorv1.ResolvedAgent, []int, error) {
	all, err := r.store.AgentList(ctx)
	if err != nil {
		return nil, nil, err
	}
	agents, unmatched, err := resolveAgents(all, targets)
	if err != nil {
		return nil, nil, err
	}
	out := make([]*opsconductorv1.ResolvedAgent, len(agents))
	for i, a := range agents {
		out[i] = r.resolved(a)
	}
	hosts, noJump, err := r.resolveRemote(ctx, targets, all)
	if err != nil {
		return nil, nil, err
	}
	unmatched = append(unmatched, noJump...)
	sort.Ints(unmatched)
	return append(out, hosts...), unmatched, nil
}

func (r *Registry) resolved(a AgentRecord) *opsconductorv1.ResolvedAgent {
	return &opsconductorv1.ResolvedAgent{AgentId: a.ID, Name: a.Name, Online: r.Online(a), Labels: a.Labels, Plugins: a.Plugins}
}

func randomSecret() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}
