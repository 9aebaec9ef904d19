package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

// TokenPrefix starts every API token secret, so a leaked one is easy to
// recognise (and to scan for).
const TokenPrefix = "oct_"

// JWTConfig configures JWT verification. With neither Secret nor JWKS,
// JWTs are not accepted (API tokens still are).
type JWTConfig struct {
	// Secret verifies HS256 signatures.
	Secret []byte
	// JWKS verifies RS256 and ES256 signatures by the token's kid.
	JWKS *JWKS
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer   string
	Audience string
	// Leeway absorbs clock skew on exp, nbf and iat (default 30s).
	Leeway time.Duration
	// RolesClaim names the claim holding the caller's roles (default "roles").
	RolesClaim string
}

// Authenticator turns a bearer credential into a Principal.
type Authenticator struct {
	store  *Store
	jwt    JWTConfig
	logger *zap.Logger
	now    func() time.Time
}

// NewAuthenticator builds an authenticator over the token store.
func NewAuthenticator(st *Store, cfg JWTConfig, logger *zap.Logger) *Authenticator {
	if cfg.Leeway <= 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.RolesClaim == "" {
		cfg.RolesClaim = "roles"
	}
	return &Authenticator{store: st, jwt: cfg, logger: logger.Named("auth"), now: time.Now}
}

// Authenticate checks a bearer credential: an API token (oct_...) or a JWT.
// Failures are apperr Unauthenticated errors that say what was wrong,
// never which part of a secret was.
func (a *Authenticator) Authenticate(ctx context.Context, bearer string) (Principal, error) {
	if bearer == "" {
		return Principal{}, apperr.Unauthenticated("authentication required: send Authorization: Bearer TOKEN (an API token or a JWT)")
	}
	if strings.HasPrefix(bearer, TokenPrefix) {
		return a.apiToken(ctx, bearer)
	}
	return a.jwtToken(ctx, bearer)
}

func (a *Authenticator) apiToken(ctx context.Context, secret string) (Principal, error) {
	t, err := a.store.TokenGetByHash(ctx, hashSecret(secret))
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, apperr.Unauthenticated("API token not recognised")
	}
	if err != nil {
		return Principal{}, err
	}
	now := a.now()
	if t.RevokedAt != nil {
		return Principal{}, apperr.Unauthenticated("API token %s was revoked", t.Name)
	}
	if t.ExpiresAt != nil && now.After(*t.ExpiresAt) {
		return Principal{}, apperr.Unauthenticated("API token %s expired at %s", t.Name, t.ExpiresAt.Format(time.RFC3339))
	}
	roles := t.Roles
	if t.User != "" {
		u, err := a.store.UserGet(ctx, t.User)
		if errors.Is(err, store.ErrNotFound) {
			return Principal{}, apperr.Unauthenticated("API token %s belongs to user %s, who no longer exists", t.Name, t.User)
		}
		if err != nil {
			return Principal{}, err
		}
		if u.Disabled {
			return Principal{}, apperr.Unauthenticated("user %s is disabled", u.Name)
		}
		roles = u.Roles
	}
	if err := a.store.TokenTouch(ctx, t.ID, now); err != nil {
		a.logger.Warn("record api token use", zap.String("token_id", t.ID), zap.Error(err))
	}
	return a.principal(ctx, Principal{Name: t.Principal, Method: "api_token", TokenID: t.ID}, roles)
}

// principal fills in p's roles and grants: built-in roles from code,
// custom ones from the store. A role that no longer exists grants nothing.
func (a *Authenticator) principal(ctx context.Context, p Principal, roles []string) (Principal, error) {
	for _, name := range roles {
		if perms, ok := builtinRoles[name]; ok {
			p.Roles = append(p.Roles, name)
			p.Grants = append(p.Grants, Grant{Role: name, Permissions: perms})
			continue
		}
		r, err := a.store.RoleGet(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			a.logger.Debug("unknown role ignored", zap.String("role", name), zap.String("principal", p.Name))
			continue
		}
		if err != nil {
			return Principal{}, err
		}
		g := Grant{Role: r.Name, Permissions: r.Permissions}
		// Stored selectors were validated on write.
		g.JobScope, _ = label.ParseSelector(r.JobSelector)
		g.TargetScope, _ = label.ParseSelector(r.TargetSelector)
		p.Roles = append(p.Roles, name)
		p.Grants = append(p.Grants, g)
	}
	return p, nil
}

func (a *Authenticator) jwtToken(ctx context.Context, raw string) (Principal, error) {
	if len(a.jwt.Secret) == 0 && a.jwt.JWKS == nil {
		return Principal{}, apperr.Unauthenticated("not an API token, and JWTs are not enabled on this server")
	}
	var methods []string
	if len(a.jwt.Secret) > 0 {
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if a.jwt.JWKS != nil {
		methods = append(methods, jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg())
	}
	// The key is chosen by the algorithm's family, so a token cannot make
	// us verify an HMAC with a public key (the classic algorithm swap).
	keyFunc := func(t *jwt.Token) (any, error) {
		switch t.Method.(type) {
		case *jwt.SigningMethodHMAC:
			return a.jwt.Secret, nil
		case *jwt.SigningMethodRSA, *jwt.SigningMethodECDSA:
			kid, _ := t.Header["kid"].(string)
			return a.jwt.JWKS.Key(ctx, kid)
		}
		return nil, fmt.Errorf("unexpected signing method %v", t.Header["alg"])
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods), // refuses alg "none" and anything unconfigured
		jwt.WithLeeway(a.jwt.Leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(a.now),
	}
	if a.jwt.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(a.jwt.Issuer))
	}
	if a.jwt.Audience != "" {
		opts = append(opts, jwt.WithAudience(a.jwt.Audience))
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims, keyFunc, opts...)
	if err != nil {
		return Principal{}, apperr.Unauthenticated("JWT refused: %v", jwtReason(err))
	}
	sub, _ := claims.GetSubject()
	if sub == "" {
		return Principal{}, apperr.Unauthenticated("JWT refused: no sub claim")
	}
	var roles []string
	if list, ok := claims[a.jwt.RolesClaim].([]any); ok {
		for _, r := range list {
			if s, ok := r.(string); ok {
				roles = append(roles, s)
			}
		}
	}
	// A user of that name adds its roles, and a disabled one is refused.
	u, err := a.store.UserGet(ctx, sub)
	switch {
	case err == nil && u.Disabled:
		return Principal{}, apperr.Unauthenticated("user %s is disabled", sub)
	case err == nil:
		for _, r := range u.Roles {
			if !slices.Contains(roles, r) {
				roles = append(roles, r)
			}
		}
	case !errors.Is(err, store.ErrNotFound):
		return Principal{}, err
	}
	return a.principal(ctx, Principal{Name: sub, Method: "jwt"}, roles)
}

// jwtReason names the failed check without echoing token contents.
func jwtReason(err error) string {
	switch {
	case errors.Is(err, ErrUnknownKey):
		return "signed with an unknown key (kid)"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "not valid yet"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "issued in the future"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "bad signature or algorithm"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "a required claim (exp) is missing"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed"
	}
	return "invalid"
}

// NewSecret returns a fresh API token secret and its hash.
func NewSecret() (secret, hash string) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	secret = TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, hashSecret(secret)
}

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}
