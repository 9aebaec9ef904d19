// Package identity proves who the agent is to the control plane: it makes
// the agent's Ed25519 key pair and signs the short-lived tokens (EdDSA
// JWTs) the agent sends with every call. Tokens are cached and renewed a
// minute before they expire.
package identity

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
)

// Audience is the aud of agent tokens; the control plane checks it.
const Audience = "opsconductor-agent"

// TokenLifetime is how long one token is valid. The control plane refuses
// tokens that live longer than 10 minutes.
const TokenLifetime = 5 * time.Minute

// NewKey makes a key pair.
func NewKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make agent key: %w", err)
	}
	return priv, nil
}

// Signer signs agent tokens. It is safe for concurrent use; SetKey swaps
// the key after a rotation.
type Signer struct {
	mu      sync.Mutex
	agentID string
	key     ed25519.PrivateKey
	token   string
	expires time.Time
	now     func() time.Time
}

// NewSigner signs tokens for agentID with key.
func NewSigner(agentID string, key ed25519.PrivateKey) *Signer {
	return &Signer{agentID: agentID, key: key, now: time.Now}
}

// SetKey makes key the signing key from the next token on.
func (s *Signer) SetKey(key ed25519.PrivateKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key, s.token = key, ""
}

// Token returns a valid token, signing a new one when the cached one is
// within a minute of expiring.
func (s *Signer) Token() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.token != "" && now.Add(time.Minute).Before(s.expires) {
		return s.token, nil
	}
	exp := now.Add(TokenLifetime)
	tok, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.RegisteredClaims{
		Subject:   s.agentID,
		Audience:  jwt.ClaimStrings{Audience},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(exp),
	}).SignedString(s.key)
	if err != nil {
		return "", fmt.Errorf("sign agent token: %w", err)
	}
	s.token, s.expires = tok, exp
	return tok, nil
}

// Interceptor adds "Authorization: Bearer TOKEN" to every call.
func (s *Signer) Interceptor() connect.Interceptor { return signing{s} }

type signing struct{ s *Signer }

func (i signing) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		tok, err := i.s.Token()
		if err != nil {
			return nil, err
		}
		req.Header().Set("Authorization", "Bearer "+tok)
		return next(ctx, req)
	}
}

func (i signing) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i signing) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
