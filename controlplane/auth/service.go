package auth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// Service implements opsconductorv1connect.AuthServiceHandler.
type Service struct {
	store  *Store
	logger *zap.Logger
	now    func() time.Time
}

var _ opsconductorv1connect.AuthServiceHandler = (*Service)(nil)

// NewService builds the auth service.
func NewService(st *Store, logger *zap.Logger) *Service {
	return &Service{store: st, logger: logger.Named("auth"), now: time.Now}
}

var tokenName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func (s *Service) WhoAmI(ctx context.Context, _ *connect.Request[opsconductorv1.WhoAmIRequest]) (*connect.Response[opsconductorv1.WhoAmIResponse], error) {
	p, ok := PrincipalFrom(ctx)
	if !ok {
		return nil, apperr.Unauthenticated("no principal")
	}
	return connect.NewResponse(&opsconductorv1.WhoAmIResponse{Principal: p.Name, Method: p.Method, Roles: p.Roles, Permissions: p.Permissions()}), nil
}

func (s *Service) CreateApiToken(ctx context.Context, req *connect.Request[opsconductorv1.CreateApiTokenRequest]) (*connect.Response[opsconductorv1.CreateApiTokenResponse], error) {
	var vs []apperr.Violation
	if !tokenName.MatchString(req.Msg.GetName()) {
		vs = append(vs, apperr.Violation{Field: "name", Description: "must be 1-64 letters, digits, '.', '_' or '-'"})
	}
	if err := ValidateRoles(req.Msg.GetRoles()); err != nil {
		vs = append(vs, apperr.Violation{Field: "roles", Description: err.Error()})
	}
	if t := req.Msg.GetTtl(); t != nil && (!t.IsValid() || t.AsDuration() < 0) {
		vs = append(vs, apperr.Violation{Field: "ttl", Description: "must be a positive duration (zero: never expires)"})
	}
	if len(vs) > 0 {
		return nil, apperr.Invalid("token", vs)
	}
	secret, hash := NewSecret()
	now := s.now().UTC().Truncate(time.Microsecond)
	rec := TokenRecord{ID: uuid.Must(uuid.NewV7()).String(), Name: req.Msg.GetName(), Principal: req.Msg.GetName(),
		Roles: req.Msg.GetRoles(), TokenHash: hash, CreatedAt: now}
	if t := req.Msg.GetTtl(); t != nil && t.AsDuration() > 0 {
		exp := now.Add(t.AsDuration())
		rec.ExpiresAt = &exp
	}
	if err := s.store.TokenCreate(ctx, rec); err != nil {
		return nil, err
	}
	by, _ := PrincipalFrom(ctx)
	s.logger.Info("api token created", zap.String("token_id", rec.ID), zap.String("name", rec.Name), zap.Strings("roles", rec.Roles), zap.String("by", by.Name))
	return connect.NewResponse(&opsconductorv1.CreateApiTokenResponse{Token: toProto(rec), Secret: secret}), nil
}

func (s *Service) ListApiTokens(ctx context.Context, _ *connect.Request[opsconductorv1.ListApiTokensRequest]) (*connect.Response[opsconductorv1.ListApiTokensResponse], error) {
	recs, err := s.store.TokenList(ctx)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListApiTokensResponse{}
	for _, r := range recs {
		resp.Tokens = append(resp.Tokens, toProto(r))
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) RevokeApiToken(ctx context.Context, req *connect.Request[opsconductorv1.RevokeApiTokenRequest]) (*connect.Response[opsconductorv1.RevokeApiTokenResponse], error) {
	err := s.store.TokenRevoke(ctx, req.Msg.GetId(), s.now())
	if errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("api token %s not found", req.Msg.GetId())
	}
	if err != nil {
		return nil, err
	}
	by, _ := PrincipalFrom(ctx)
	s.logger.Info("api token revoked", zap.String("token_id", req.Msg.GetId()), zap.String("by", by.Name))
	return connect.NewResponse(&opsconductorv1.RevokeApiTokenResponse{}), nil
}

func toProto(r TokenRecord) *opsconductorv1.ApiToken {
	t := &opsconductorv1.ApiToken{Id: r.ID, Name: r.Name, Principal: r.Principal, Roles: r.Roles, CreateTime: timestamppb.New(r.CreatedAt)}
	if r.ExpiresAt != nil {
		t.ExpireTime = timestamppb.New(*r.ExpiresAt)
	}
	if r.RevokedAt != nil {
		t.RevokeTime = timestamppb.New(*r.RevokedAt)
	}
	if r.LastUsedAt != nil {
		t.LastUsedTime = timestamppb.New(*r.LastUsedAt)
	}
	return t
}

// Bootstrap makes the first admin token when none was ever made, and
// returns its secret ("" when one existed already). When file is set the
// secret is also written there (mode 0600), for scripts and `opsconductor
// dev`. Replicas starting together make one token between them.
func Bootstrap(ctx context.Context, st *Store, file string, logger *zap.Logger) (string, error) {
	secret, hash := NewSecret()
	rec := TokenRecord{ID: uuid.Must(uuid.NewV7()).String(), Name: "bootstrap-admin", Principal: "bootstrap-admin",
		Roles: []string{"admin"}, TokenHash: hash, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
	created, err := st.TokenBootstrap(ctx, rec)
	if err != nil || !created {
		return "", err
	}
	if file != "" {
		if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("write bootstrap token file: %w", err)
		}
	}
	logger.Warn("bootstrap admin token created; it is shown only now: store it, then create named tokens and revoke this one",
		zap.String("token", secret), zap.String("token_id", rec.ID))
	return secret, nil
}
