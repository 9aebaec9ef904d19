// Package registry is the agent registry of the executions service: join
// tokens, enrollment, agent identities and facts, online/offline status, and
// the resolution of job targets to agents. Its state lives in the "agents"
// schema.
//
// An agent's identity is a credential "AGENT_ID.SECRET" issued at
// enrollment; the registry stores only a SHA-256 hash of the secret. The
// security issue replaces this with an agent-held key pair behind the same
// Enroll/Authenticate seam.
package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
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
}

// Registry implements opsconductorv1connect.AgentRegistryService and the
// identity calls the agent gateway needs.
type Registry struct {
	store  *Store
	cfg    Config
	logger *zap.Logger
	now    func() time.Time
}

var _ opsconductorv1connect.AgentRegistryServiceHandler = (*Registry)(nil)

// New builds the registry.
func New(st *Store, logger *zap.Logger, cfg Config) *Registry {
	if cfg.OnlineWindow <= 0 {
		cfg.OnlineWindow = 90 * time.Second
	}
	if cfg.DefaultTokenTTL <= 0 {
		cfg.DefaultTokenTTL = 24 * time.Hour
	}
	return &Registry{store: st, cfg: cfg, logger: logger.Named("registry"), now: time.Now}
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
	secret := randomSecret()
	now := r.now().UTC()
	rec := TokenRecord{
		ID:          uuid.Must(uuid.NewV7()).String(),
		TokenHash:   hashSecret(secret),
		Description: req.Msg.GetDescription(),
		MaxUses:     int(req.Msg.GetMaxUses()),
		CreatedAt:   now,
		ExpiresAt:   now.Add(ttl),
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

// Online reports whether the agent polled within the online window.
func (r *Registry) Online(a AgentRecord) bool { return r.now().Sub(a.LastSeenAt) <= r.cfg.OnlineWindow }

// Facts are what an agent reports about its host.
type Facts struct {
	Hostname, OS, Arch, AgentVersion string
}

// Enroll spends the join token and registers a new agent. It returns the
// agent id and the credential the agent must present from now on.
func (r *Registry) Enroll(ctx context.Context, joinToken, name string, labels map[string]string, f Facts) (id, credential string, err error) {
	var vs []apperr.Violation
	if name == "" {
		vs = append(vs, apperr.Violation{Field: "name", Description: "must not be empty"})
	}
	vs = append(vs, validateLabels(labels)...)
	if len(vs) > 0 {
		return "", "", apperr.Invalid("enrollment", vs)
	}
	secret := strings.TrimPrefix(joinToken, "ocj_")
	if secret == "" {
		return "", "", apperr.Unauthenticated("a join token is required: create one with `opsconductor agent token create`")
	}
	agentSecret := randomSecret()
	now := r.now().UTC()
	rec := AgentRecord{
		ID: uuid.Must(uuid.NewV7()).String(), Name: name, Labels: labels,
		Hostname: f.Hostname, OS: f.OS, Arch: f.Arch, AgentVersion: f.AgentVersion,
		CredentialHash: hashSecret(agentSecret), EnrolledAt: now, LastSeenAt: now,
	}
	if rec.Labels == nil {
		rec.Labels = map[string]string{}
	}
	err = r.store.AgentEnroll(ctx, hashSecret(secret), rec, now)
	if errors.Is(err, ErrTokenUnusable) {
		return "", "", apperr.Unauthenticated("join token refused: it is unknown, expired or used up")
	}
	if err != nil {
		return "", "", err
	}
	r.logger.Info("agent enrolled", zap.String("agent_id", rec.ID), zap.String("agent_name", name), zap.Any("labels", labels))
	return rec.ID, rec.ID + "." + agentSecret, nil
}

func validateLabels(labels map[string]string) []apperr.Violation {
	var vs []apperr.Violation
	for k, v := range labels {
		if err := label.ValidateKey(k); err != nil {
			vs = append(vs, apperr.Violation{Field: "labels[" + k + "]", Description: err.Error()})
		} else if err := label.ValidateValue(v); err != nil {
			vs = append(vs, apperr.Violation{Field: "labels[" + k + "]", Description: err.Error()})
		}
	}
	return vs
}

// Authenticate checks an agent credential and returns the agent.
func (r *Registry) Authenticate(ctx context.Context, credential string) (AgentRecord, error) {
	id, secret, ok := strings.Cut(credential, ".")
	if !ok || id == "" || secret == "" {
		return AgentRecord{}, apperr.Unauthenticated("agent credential missing or malformed")
	}
	a, err := r.store.AgentGet(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return AgentRecord{}, apperr.Unauthenticated("unknown agent %s: enroll it again", id)
	}
	if err != nil {
		return AgentRecord{}, err
	}
	if subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(a.CredentialHash)) != 1 {
		return AgentRecord{}, apperr.Unauthenticated("agent credential refused")
	}
	if a.Revoked {
		return AgentRecord{}, apperr.PermissionDenied("agent %s is revoked", id)
	}
	return a, nil
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
	a.Hostname, a.OS, a.Arch, a.AgentVersion = f.Hostname, f.OS, f.Arch, f.AgentVersion
	a.LastSeenAt = r.now()
	return r.store.AgentUpdateFacts(ctx, a)
}

// Touch records that an agent polled.
func (r *Registry) Touch(ctx context.Context, id string) error {
	return r.store.AgentTouch(ctx, id, r.now(), 5*time.Second)
}

// Resolve maps targets to enrolled, non-revoked agents (offline ones
// included), each agent once, in name order. unmatched lists the indexes of
// targets that matched no agent.
func (r *Registry) Resolve(ctx context.Context, targets []*opsconductorv1.Target) (agents []AgentRecord, unmatched []int, err error) {
	all, err := r.store.AgentList(ctx)
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{}
	for i, t := range targets {
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

// ResolveTargets implements job.TargetResolver.
func (r *Registry) ResolveTargets(ctx context.Context, targets []*opsconductorv1.Target) ([]*opsconductorv1.ResolvedAgent, []int, error) {
	agents, unmatched, err := r.Resolve(ctx, targets)
	if err != nil {
		return nil, nil, err
	}
	out := make([]*opsconductorv1.ResolvedAgent, len(agents))
	for i, a := range agents {
		out[i] = &opsconductorv1.ResolvedAgent{AgentId: a.ID, Name: a.Name, Online: r.Online(a)}
	}
	return out, unmatched, nil
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
