package auth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
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
	return connect.NewResponse(&opsconductorv1.WhoAmIResponse{Principal: p.Name, Method: p.Method, Roles: p.Roles, Permissions: p.AllPermissions()}), nil
}

func (s *Service) CreateApiToken(ctx context.Context, req *connect.Request[opsconductorv1.CreateApiTokenRequest]) (*connect.Response[opsconductorv1.CreateApiTokenResponse], error) {
	var vs []apperr.Violation
	if !tokenName.MatchString(req.Msg.GetName()) {
		vs = append(vs, apperr.Violation{Field: "name", Description: "must be 1-64 letters, digits, '.', '_' or '-'"})
	}
	switch {
	case req.Msg.GetUser() != "" && len(req.Msg.GetRoles()) > 0:
		vs = append(vs, apperr.Violation{Field: "roles", Description: "must be empty when user is set: the token gets the user's roles"})
	case req.Msg.GetUser() != "":
		if _, err := s.store.UserGet(ctx, req.Msg.GetUser()); errors.Is(err, store.ErrNotFound) {
			vs = append(vs, apperr.Violation{Field: "user", Description: fmt.Sprintf("user %q does not exist", req.Msg.GetUser())})
		} else if err != nil {
			return nil, err
		}
	default:
		if err := s.validateRoles(ctx, req.Msg.GetRoles()); err != nil {
			vs = append(vs, apperr.Violation{Field: "roles", Description: err.Error()})
		}
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
	if u := req.Msg.GetUser(); u != "" {
		rec.Principal, rec.User = u, u
	}
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
	t := &opsconductorv1.ApiToken{Id: r.ID, Name: r.Name, Principal: r.Principal, User: r.User, Roles: r.Roles, CreateTime: timestamppb.New(r.CreatedAt)}
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

// validateRoles checks that every role exists, built in or custom.
func (s *Service) validateRoles(ctx context.Context, roles []string) error {
	if len(roles) == 0 {
		return fmt.Errorf("at least one role is needed (built in: %v, or a custom role)", BuiltinRoleNames())
	}
	for _, r := range roles {
		if IsBuiltinRole(r) {
			continue
		}
		if _, err := s.store.RoleGet(ctx, r); errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("unknown role %q (built in: %v; custom roles: `opsconductor role list`)", r, BuiltinRoleNames())
		} else if err != nil {
			return err
		}
	}
	return nil
}

// validateRole checks a custom role definition.
func validateRole(r *opsconductorv1.Role) []apperr.Violation {
	var vs []apperr.Violation
	add := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: "role." + field, Description: fmt.Sprintf(format, args...)})
	}
	if r == nil {
		return []apperr.Violation{{Field: "role", Description: "is required"}}
	}
	switch {
	case !tokenName.MatchString(r.GetName()):
		add("name", "must be 1-64 letters, digits, '.', '_' or '-'")
	case IsBuiltinRole(r.GetName()):
		add("name", "%q is a built-in role and cannot be changed", r.GetName())
	}
	if len(r.GetPermissions()) == 0 {
		add("permissions", "must name at least one permission (%v)", Permissions)
	}
	for i, p := range r.GetPermissions() {
		if p != "*" && !slices.Contains(Permissions, p) {
			add(fmt.Sprintf("permissions[%d]", i), "unknown permission %q (known: %v)", p, Permissions)
		}
	}
	if _, err := label.ParseSelector(r.GetJobSelector()); err != nil {
		add("job_selector", "malformed label selector: %v", err)
	}
	if _, err := label.ParseSelector(r.GetTargetSelector()); err != nil {
		add("target_selector", "malformed label selector: %v", err)
	}
	return vs
}

func roleToProto(r RoleRecord) *opsconductorv1.Role {
	return &opsconductorv1.Role{Name: r.Name, Description: r.Description, Permissions: r.Permissions, JobSelector: r.JobSelector, TargetSelector: r.TargetSelector}
}

func (s *Service) putRole(ctx context.Context, r *opsconductorv1.Role, create bool) (*opsconductorv1.Role, error) {
	if vs := validateRole(r); len(vs) > 0 {
		return nil, apperr.Invalid("role", vs)
	}
	rec := RoleRecord{Name: r.GetName(), Description: r.GetDescription(), Permissions: r.GetPermissions(),
		JobSelector: r.GetJobSelector(), TargetSelector: r.GetTargetSelector(), UpdatedAt: s.now().UTC().Truncate(time.Microsecond)}
	err := s.store.RolePut(ctx, rec, create)
	switch {
	case errors.Is(err, store.ErrConflict):
		return nil, apperr.AlreadyExists("role %s already exists", r.GetName())
	case errors.Is(err, store.ErrNotFound):
		return nil, apperr.NotFound("role %s not found", r.GetName())
	case err != nil:
		return nil, err
	}
	by, _ := PrincipalFrom(ctx)
	s.logger.Info("role stored", zap.String("role", rec.Name), zap.Strings("permissions", rec.Permissions), zap.String("by", by.Name))
	return roleToProto(rec), nil
}

func (s *Service) CreateRole(ctx context.Context, req *connect.Request[opsconductorv1.CreateRoleRequest]) (*connect.Response[opsconductorv1.CreateRoleResponse], error) {
	r, err := s.putRole(ctx, req.Msg.GetRole(), true)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.CreateRoleResponse{Role: r}), nil
}

func (s *Service) UpdateRole(ctx context.Context, req *connect.Request[opsconductorv1.UpdateRoleRequest]) (*connect.Response[opsconductorv1.UpdateRoleResponse], error) {
	r, err := s.putRole(ctx, req.Msg.GetRole(), false)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.UpdateRoleResponse{Role: r}), nil
}

func (s *Service) ListRoles(ctx context.Context, _ *connect.Request[opsconductorv1.ListRolesRequest]) (*connect.Response[opsconductorv1.ListRolesResponse], error) {
	resp := &opsconductorv1.ListRolesResponse{}
	for _, name := range BuiltinRoleNames() {
		resp.Roles = append(resp.Roles, &opsconductorv1.Role{Name: name, Permissions: builtinRoles[name], Builtin: true})
	}
	custom, err := s.store.RoleList(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range custom {
		resp.Roles = append(resp.Roles, roleToProto(r))
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) DeleteRole(ctx context.Context, req *connect.Request[opsconductorv1.DeleteRoleRequest]) (*connect.Response[opsconductorv1.DeleteRoleResponse], error) {
	name := req.Msg.GetName()
	if IsBuiltinRole(name) {
		return nil, apperr.FailedPrecondition("%s is a built-in role and cannot be deleted", name)
	}
	users, err := s.store.RoleInUse(ctx, name)
	if err != nil {
		return nil, err
	}
	if len(users) > 0 {
		return nil, apperr.FailedPrecondition("role %s is still given to %s; take it away first", name, strings.Join(users, ", "))
	}
	if err := s.store.RoleDelete(ctx, name); errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("role %s not found", name)
	} else if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.DeleteRoleResponse{}), nil
}

func userToProto(u UserRecord) *opsconductorv1.User {
	return &opsconductorv1.User{Name: u.Name, Roles: u.Roles, Disabled: u.Disabled,
		CreateTime: timestamppb.New(u.CreatedAt), UpdateTime: timestamppb.New(u.UpdatedAt)}
}

func (s *Service) putUser(ctx context.Context, u *opsconductorv1.User, create bool) (*opsconductorv1.User, error) {
	var vs []apperr.Violation
	if u == nil {
		return nil, apperr.InvalidField("user", "is required")
	}
	if !tokenName.MatchString(u.GetName()) {
		vs = append(vs, apperr.Violation{Field: "user.name", Description: "must be 1-64 letters, digits, '.', '_' or '-'"})
	}
	if err := s.validateRoles(ctx, u.GetRoles()); err != nil {
		vs = append(vs, apperr.Violation{Field: "user.roles", Description: err.Error()})
	}
	if len(vs) > 0 {
		return nil, apperr.Invalid("user", vs)
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	rec := UserRecord{Name: u.GetName(), Roles: u.GetRoles(), Disabled: u.GetDisabled(), CreatedAt: now, UpdatedAt: now}
	err := s.store.UserPut(ctx, rec, create)
	switch {
	case errors.Is(err, store.ErrConflict):
		return nil, apperr.AlreadyExists("user %s already exists", u.GetName())
	case errors.Is(err, store.ErrNotFound):
		return nil, apperr.NotFound("user %s not found", u.GetName())
	case err != nil:
		return nil, err
	}
	stored, err := s.store.UserGet(ctx, rec.Name)
	if err != nil {
		return nil, err
	}
	by, _ := PrincipalFrom(ctx)
	s.logger.Info("user stored", zap.String("user", rec.Name), zap.Strings("roles", rec.Roles), zap.Bool("disabled", rec.Disabled), zap.String("by", by.Name))
	return userToProto(stored), nil
}

func (s *Service) CreateUser(ctx context.Context, req *connect.Request[opsconductorv1.CreateUserRequest]) (*connect.Response[opsconductorv1.CreateUserResponse], error) {
	u, err := s.putUser(ctx, req.Msg.GetUser(), true)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.CreateUserResponse{User: u}), nil
}

func (s *Service) UpdateUser(ctx context.Context, req *connect.Request[opsconductorv1.UpdateUserRequest]) (*connect.Response[opsconductorv1.UpdateUserResponse], error) {
	u, err := s.putUser(ctx, req.Msg.GetUser(), false)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.UpdateUserResponse{User: u}), nil
}

func (s *Service) ListUsers(ctx context.Context, _ *connect.Request[opsconductorv1.ListUsersRequest]) (*connect.Response[opsconductorv1.ListUsersResponse], error) {
	users, err := s.store.UserList(ctx)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListUsersResponse{}
	for _, u := range users {
		resp.Users = append(resp.Users, userToProto(u))
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) DeleteUser(ctx context.Context, req *connect.Request[opsconductorv1.DeleteUserRequest]) (*connect.Response[opsconductorv1.DeleteUserResponse], error) {
	if err := s.store.UserDelete(ctx, req.Msg.GetName(), s.now()); errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("user %s not found", req.Msg.GetName())
	} else if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.DeleteUserResponse{}), nil
}
