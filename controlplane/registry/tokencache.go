package registry

import (
	"sync"
	"time"
)

// verifiedTokens remembers agent tokens whose signature and claims were
// checked, so the next call with the same token skips the ed25519
// verification (an agent reuses its token until shortly before it
// expires; verifying it on every call was an eighth of the control
// plane's CPU under load). What can change after the check is checked on
// every use: the expiry, the key that signed it (a rotation's grace
// ends), and the agent itself (revoked, deleted), which is read anew.
type verifiedTokens struct {
	mu      sync.Mutex
	max     int
	entries map[string]verifiedToken
}

// verifiedToken is what a token was found to be.
type verifiedToken struct {
	agentID string
	key     []byte    // the public key that verified its signature
	expires time.Time // its exp claim
}

func newVerifiedTokens(max int) *verifiedTokens {
	return &verifiedTokens{max: max, entries: map[string]verifiedToken{}}
}

func (c *verifiedTokens) get(token string) (verifiedToken, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.entries[token]
	return v, ok
}

// put remembers a verified token. When full it first drops the tokens
// expired at now, then, if that freed nothing, all of them: a full cache
// costs verifications, never correctness.
func (c *verifiedTokens) put(token string, v verifiedToken, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		for t, e := range c.entries {
			if now.After(e.expires) {
				delete(c.entries, t)
			}
		}
		if len(c.entries) >= c.max {
			clear(c.entries)
		}
	}
	c.entries[token] = v
}

func (c *verifiedTokens) forget(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, token)
}
