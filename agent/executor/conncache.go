package executor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
)

// ConnCache keeps SSH connections open across the actions of one task, so
// a ten-action job on a host logs in once. The runner makes one per task
// (WithConnCache) and closes it when the task ends; with idle set, it
// takes connections from there and gives them back on Close instead of
// closing them. A nil *ConnCache caches nothing.
type ConnCache struct {
	idle *IdleConns

	mu      sync.Mutex
	clients map[string]*ssh.Client
}

// NewConnCache returns an empty cache that takes from and gives back to
// idle (nil: connections are closed with the cache).
func NewConnCache(idle *IdleConns) *ConnCache {
	return &ConnCache{idle: idle, clients: map[string]*ssh.Client{}}
}

type connCacheCtxKey struct{}

// WithConnCache returns ctx carrying c for the executors to share
// connections through.
func WithConnCache(ctx context.Context, c *ConnCache) context.Context {
	return context.WithValue(ctx, connCacheCtxKey{}, c)
}

func connCacheFrom(ctx context.Context) *ConnCache {
	c, _ := ctx.Value(connCacheCtxKey{}).(*ConnCache)
	return c
}

// connKey identifies a login: same host, same user, same credentials and
// host-key settings. It is a digest: a short map key, whatever the size
// of the credentials.
func connKey(spec map[string]string) string {
	fields := []string{"host", "port", "user", "key_file", "private_key", "password", "agent_socket", "known_hosts",
		"host_key_policy", "host_key_fingerprint", "connect_timeout", "proxy_jump", "proxy_jump_fingerprint"}
	parts := make([]string, len(fields))
	for i, f := range fields {
		parts[i] = spec[f]
	}
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(sum[:])
}

func (c *ConnCache) get(key string) *ssh.Client {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	client := c.clients[key]
	if client == nil {
		if client = c.idle.take(key); client != nil {
			c.clients[key] = client
		}
	}
	return client
}

func (c *ConnCache) put(key string, client *ssh.Client) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.clients[key]; old != nil && old != client {
		old.Close()
	}
	c.clients[key] = client
}

// drop forgets client (it broke or was closed).
func (c *ConnCache) drop(key string, client *ssh.Client) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clients[key] == client {
		delete(c.clients, key)
	}
}

// Close closes every cached connection, or gives it to the idle pool.
func (c *ConnCache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, client := range c.clients {
		c.idle.put(key, client)
		delete(c.clients, key)
	}
}
