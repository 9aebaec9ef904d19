package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func sign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func isUnauthenticated(err error) bool {
	var ae *apperr.Error
	return errors.As(err, &ae) && ae.Kind == apperr.KindUnauthenticated
}

func TestJWT(t *testing.T) {
	st := NewStore(storetest.Open(t, store.SQLite, Schema, Migrations()))
	a := NewAuthenticator(st, JWTConfig{Secret: secret, Issuer: "https://idp.example", Audience: "opsconductor"}, zaptest.NewLogger(t))
	now := time.Now()
	good := func() jwt.MapClaims {
		return jwt.MapClaims{"sub": "alice", "iss": "https://idp.example", "aud": "opsconductor",
			"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "roles": []string{"operator", "no-such-role"}}
	}
	with := func(k string, v any) jwt.MapClaims {
		c := good()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	p, err := a.Authenticate(context.Background(), sign(t, jwt.SigningMethodHS256, secret, good()))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "alice" || p.Method != "jwt" || len(p.Roles) != 1 || p.Roles[0] != "operator" {
		t.Fatalf("principal = %+v (unknown roles must be dropped)", p)
	}
	noneToken, err := jwt.NewWithClaims(jwt.SigningMethodNone, good()).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{"expired", sign(t, jwt.SigningMethodHS256, secret, with("exp", now.Add(-time.Hour).Unix())), "expired"},
		{"not yet valid", sign(t, jwt.SigningMethodHS256, secret, with("nbf", now.Add(time.Hour).Unix())), "not valid yet"},
		{"wrongly signed", sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), good()), "signature"},
		{"alg none", noneToken, "signature or algorithm"},
		{"HS384", sign(t, jwt.SigningMethodHS384, secret, good()), "signature or algorithm"},
		{"wrong audience", sign(t, jwt.SigningMethodHS256, secret, with("aud", "someone-else")), "audience"},
		{"wrong issuer", sign(t, jwt.SigningMethodHS256, secret, with("iss", "https://evil.example")), "issuer"},
		{"no expiry", sign(t, jwt.SigningMethodHS256, secret, with("exp", nil)), "exp"},
		{"no subject", sign(t, jwt.SigningMethodHS256, secret, with("sub", nil)), "sub"},
		{"garbage", "not.a.jwt", "malformed"},
		{"empty", "", "authentication required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.Authenticate(context.Background(), tt.token)
			if !isUnauthenticated(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want Unauthenticated mentioning %q", err, tt.want)
			}
		})
	}
	// Within the leeway, a just-expired token still passes.
	if _, err := a.Authenticate(context.Background(), sign(t, jwt.SigningMethodHS256, secret, with("exp", now.Add(-5*time.Second).Unix()))); err != nil {
		t.Fatalf("token 5s past exp (inside the 30s leeway): %v", err)
	}
}

func TestJWTDisabled(t *testing.T) {
	st := NewStore(storetest.Open(t, store.SQLite, Schema, Migrations()))
	a := NewAuthenticator(st, JWTConfig{}, zaptest.NewLogger(t))
	_, err := a.Authenticate(context.Background(), sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "x", "exp": time.Now().Add(time.Hour).Unix()}))
	if !isUnauthenticated(err) {
		t.Fatalf("JWT accepted with JWTs disabled: %v", err)
	}
}

func TestAPITokens(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			st := NewStore(storetest.Open(t, d, Schema, Migrations()))
			a := NewAuthenticator(st, JWTConfig{}, zaptest.NewLogger(t))
			ctx := context.Background()
			mk := func(name string, expires *time.Time) string {
				secret, hash := NewSecret()
				if err := st.TokenCreate(ctx, TokenRecord{ID: "id-" + name, Name: name, Principal: name, Roles: []string{"viewer"},
					TokenHash: hash, CreatedAt: time.Now(), ExpiresAt: expires}); err != nil {
					t.Fatal(err)
				}
				return secret
			}
			live := mk("live", nil)
			past := time.Now().Add(-time.Minute)
			expired := mk("expired", &past)

			p, err := a.Authenticate(ctx, live)
			if err != nil || p.Name != "live" || !p.Can(PermJobsRead) || p.Can(PermJobsWrite) {
				t.Fatalf("live token: %+v, %v", p, err)
			}
			if _, err := a.Authenticate(ctx, expired); !isUnauthenticated(err) || !strings.Contains(err.Error(), "expired") {
				t.Fatalf("expired token: %v", err)
			}
			if _, err := a.Authenticate(ctx, TokenPrefix+"unknown"); !isUnauthenticated(err) {
				t.Fatalf("unknown token: %v", err)
			}
			if err := st.TokenRevoke(ctx, "id-live", time.Now()); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Authenticate(ctx, live); !isUnauthenticated(err) || !strings.Contains(err.Error(), "revoked") {
				t.Fatalf("revoked token on its next call: %v", err)
			}
			if err := st.TokenRevoke(ctx, "nope", time.Now()); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("revoke unknown: %v", err)
			}
			list, err := st.TokenList(ctx)
			if err != nil || len(list) != 2 || list[0].LastUsedAt == nil && list[1].LastUsedAt == nil {
				t.Fatalf("list = %+v, %v (a used token records its last use)", list, err)
			}
		})
	}
}

func TestBootstrapOnce(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			st := NewStore(storetest.Open(t, d, Schema, Migrations()))
			ctx := context.Background()
			first, err := Bootstrap(ctx, st, "", zaptest.NewLogger(t))
			if err != nil || !strings.HasPrefix(first, TokenPrefix) {
				t.Fatalf("first bootstrap = %q, %v", first, err)
			}
			again, err := Bootstrap(ctx, st, "", zaptest.NewLogger(t))
			if err != nil || again != "" {
				t.Fatalf("second bootstrap = %q, %v; want nothing", again, err)
			}
			p, err := NewAuthenticator(st, JWTConfig{}, zaptest.NewLogger(t)).Authenticate(ctx, first)
			if err != nil || !p.Can(PermTokensManage) {
				t.Fatalf("bootstrap token: %+v, %v", p, err)
			}
		})
	}
}

// TestJWTUser: a JWT whose sub names a user gets the user's roles; a
// disabled user is refused.
func TestJWTUser(t *testing.T) {
	st := NewStore(storetest.Open(t, store.SQLite, Schema, Migrations()))
	a := NewAuthenticator(st, JWTConfig{Secret: secret}, zaptest.NewLogger(t))
	ctx := context.Background()
	if err := st.UserPut(ctx, UserRecord{Name: "bob", Roles: []string{"operator"}, UpdatedAt: time.Now()}, true); err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "bob", "exp": time.Now().Add(time.Hour).Unix(), "roles": []string{"viewer"}})
	p, err := a.Authenticate(ctx, tok)
	if err != nil || !p.Can(PermExecutionsRun) || !p.Can(PermJobsRead) {
		t.Fatalf("bob = %+v, %v; want the user's operator role with the claim's viewer", p, err)
	}
	if err := st.UserPut(ctx, UserRecord{Name: "bob", Roles: []string{"operator"}, Disabled: true, UpdatedAt: time.Now()}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(ctx, tok); !isUnauthenticated(err) || !strings.Contains(err.Error(), "disabled") {
		t.Fatalf("disabled user: %v", err)
	}
}
