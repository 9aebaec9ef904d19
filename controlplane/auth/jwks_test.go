package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

func TestJWKS(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &rsaKey.PublicKey, KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"},
		{Key: &ecKey.PublicKey, KeyID: "ec-1", Algorithm: "ES256", Use: "sig"},
	}}
	raw, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits++
		_, _ = w.Write(raw)
	}))
	defer srv.Close()

	claims := func() jwt.MapClaims {
		return jwt.MapClaims{"sub": "carol", "exp": time.Now().Add(time.Hour).Unix(), "roles": []string{"viewer"}}
	}
	signed := func(m jwt.SigningMethod, kid string, key any) string {
		tok := jwt.NewWithClaims(m, claims())
		tok.Header["kid"] = kid
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)

	for name, source := range map[string]string{"file": file, "url": srv.URL} {
		t.Run(name, func(t *testing.T) {
			keys, err := NewJWKS(context.Background(), source, srv.Client(), zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			st := NewStore(storetest.Open(t, store.SQLite, Schema, Migrations()))
			a := NewAuthenticator(st, JWTConfig{JWKS: keys}, zaptest.NewLogger(t))
			for _, tok := range []string{signed(jwt.SigningMethodRS256, "rsa-1", rsaKey), signed(jwt.SigningMethodES256, "ec-1", ecKey)} {
				p, err := a.Authenticate(context.Background(), tok)
				if err != nil || p.Name != "carol" || p.Roles[0] != "viewer" {
					t.Fatalf("valid token: %+v, %v", p, err)
				}
			}
			bad := map[string]string{
				"unknown kid":                         signed(jwt.SigningMethodRS256, "rsa-9", rsaKey),
				"wrong key for kid":                   signed(jwt.SigningMethodRS256, "rsa-1", otherRSA),
				"HS256 with the public key as secret": signed(jwt.SigningMethodHS256, "rsa-1", pubDER),
				"RS512 not configured":                signed(jwt.SigningMethodRS512, "rsa-1", rsaKey),
			}
			for what, tok := range bad {
				if _, err := a.Authenticate(context.Background(), tok); !isUnauthenticated(err) {
					t.Errorf("%s: %v, want Unauthenticated", what, err)
				}
			}
			_, err = a.Authenticate(context.Background(), signed(jwt.SigningMethodRS256, "rsa-9", rsaKey))
			if err == nil || !strings.Contains(err.Error(), "unknown key") {
				t.Errorf("unknown kid error = %v", err)
			}
		})
	}
	if hits == 0 {
		t.Fatal("the JWKS URL was never fetched")
	}
	if _, err := NewJWKS(context.Background(), filepath.Join(t.TempDir(), "missing.json"), nil, zaptest.NewLogger(t)); err == nil {
		t.Fatal("a missing JWKS file was accepted")
	}
}
