package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
)

// JWKS holds the public keys of an identity provider, by key id, loaded
// from a file or an HTTPS URL. A URL is fetched again every refresh
// interval, and at most once a minute when a token names an unknown key
// (the provider rotated its keys).
type JWKS struct {
	source  string
	client  *http.Client
	refresh time.Duration
	logger  *zap.Logger

	mu      sync.Mutex
	keys    map[string]any
	fetched time.Time
}

// NewJWKS loads the key set at source (a file path, or an http(s) URL).
func NewJWKS(ctx context.Context, source string, client *http.Client, logger *zap.Logger) (*JWKS, error) {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	j := &JWKS{source: source, client: client, refresh: time.Hour, logger: logger.Named("jwks")}
	if err := j.load(ctx); err != nil {
		return nil, err
	}
	return j, nil
}

func (j *JWKS) isURL() bool {
	return strings.HasPrefix(j.source, "https://") || strings.HasPrefix(j.source, "http://")
}

func (j *JWKS) load(ctx context.Context) error {
	var raw []byte
	var err error
	if j.isURL() {
		raw, err = j.fetch(ctx)
	} else {
		raw, err = os.ReadFile(j.source)
	}
	if err != nil {
		return fmt.Errorf("load JWKS %s: %w", j.source, err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		return fmt.Errorf("decode JWKS %s: %w", j.source, err)
	}
	keys := map[string]any{}
	for _, k := range set.Keys {
		switch k.Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey:
			keys[k.KeyID] = k.Key
		default:
			// Private or symmetric keys have no place in a published set.
			j.logger.Warn("JWKS key ignored: not an RSA or EC public key", zap.String("kid", k.KeyID))
		}
	}
	if len(keys) == 0 {
		return fmt.Errorf("JWKS %s holds no RSA or EC public key", j.source)
	}
	j.mu.Lock()
	j.keys, j.fetched = keys, time.Now()
	j.mu.Unlock()
	return nil
}

func (j *JWKS) fetch(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.source, nil)
	if err != nil {
		return nil, err
	}
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

// ErrUnknownKey means a token names a key the set does not hold.
var ErrUnknownKey = errors.New("unknown signing key")

// Key returns the public key with id kid, refreshing a URL-backed set when
// it is stale or the key is unknown (at most once a minute).
func (j *JWKS) Key(ctx context.Context, kid string) (any, error) {
	j.mu.Lock()
	key, ok := j.keys[kid]
	age := time.Since(j.fetched)
	j.mu.Unlock()
	if j.isURL() && ((!ok && age > time.Minute) || age > j.refresh) {
		if err := j.load(ctx); err != nil {
			j.logger.Warn("refresh JWKS failed; keeping the keys we have", zap.Error(err))
		} else {
			j.mu.Lock()
			key, ok = j.keys[kid]
			j.mu.Unlock()
		}
	}
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownKey, kid)
	}
	return key, nil
}
