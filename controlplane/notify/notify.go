// Package notify wakes waiters anywhere in the control plane: the poll of an
// agent when work is queued for it, the watchers of an execution when it
// changes. A wake-up carries no data, only "look again": losing one costs
// latency, never state, because the waiters have a safety net (the
// dispatch gateway's recheck round for polls, a timer for watchers).
//
// With a Redis client the wake-ups reach every replica through Redis
// pub/sub; without one they stay in the process (a single node).
package notify

import (
	"context"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Channel is the Redis pub/sub channel replicas share.
const Channel = "opsconductor:wake"

// Hub delivers wake-ups to subscribers by key.
type Hub struct {
	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
	redis   *redis.Client
	logger  *zap.Logger
	ready   chan struct{}
}

// New builds a hub. redisClient may be nil for a single node.
func New(redisClient *redis.Client, logger *zap.Logger) *Hub {
	h := &Hub{waiters: map[string]map[chan struct{}]struct{}{}, redis: redisClient, logger: logger.Named("notify"), ready: make(chan struct{})}
	if redisClient == nil {
		close(h.ready)
	}
	return h
}

// AgentKey is the key an agent's poll waits on.
func AgentKey(agentID string) string { return "agent:" + agentID }

// ExecutionKey is the key an execution's watchers wait on.
func ExecutionKey(executionID string) string { return "execution:" + executionID }

// Subscribe returns a channel that receives (at most one pending) wake-up
// for key, and a function that ends the subscription.
func (h *Hub) Subscribe(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.waiters[key] == nil {
		h.waiters[key] = map[chan struct{}]struct{}{}
	}
	h.waiters[key][ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.waiters[key], ch)
		if len(h.waiters[key]) == 0 {
			delete(h.waiters, key)
		}
		h.mu.Unlock()
	}
}

// Publish wakes the subscribers of keys in this process and, with Redis,
// in every other replica. It never blocks on a slow subscriber.
func (h *Hub) Publish(ctx context.Context, keys ...string) {
	if len(keys) == 0 {
		return
	}
	h.deliver(keys)
	if h.redis == nil {
		return
	}
	if err := h.redis.Publish(ctx, Channel, strings.Join(keys, "\n")).Err(); err != nil {
		// Other replicas' waiters find the work on their next re-check.
		h.logger.Warn("publish wake-up to redis failed", zap.Error(err))
	}
}

// PublishLocal wakes the subscribers of keys in this process only; for
// wake-ups every replica derives by itself (from the shared outbox).
func (h *Hub) PublishLocal(keys ...string) { h.deliver(keys) }

func (h *Hub) deliver(keys []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range keys {
		for ch := range h.waiters[k] {
			select {
			case ch <- struct{}{}:
			default: // a wake-up is already pending
			}
		}
	}
}

// Ready is closed once the hub receives other replicas' wake-ups.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// Run relays other replicas' wake-ups until ctx ends. Without Redis it just
// waits for ctx.
func (h *Hub) Run(ctx context.Context) error {
	if h.redis == nil {
		<-ctx.Done()
		return nil
	}
	sub := h.redis.Subscribe(ctx, Channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		h.logger.Warn("subscribe to redis wake-ups failed; retrying in the background", zap.Error(err))
	}
	close(h.ready)
	msgs := sub.Channel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case msg, ok := <-msgs:
			if !ok {
				return nil
			}
			h.deliver(strings.Split(msg.Payload, "\n"))
		}
	}
}
