// Package ratelimit bounds how fast one principal may call the API. On a
// single node the buckets live in memory; with Redis they are shared by
// every replica, so a client cannot multiply its allowance by spreading
// calls over them.
package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

// Limiter decides whether a call by key may go ahead now. retryAfter says
// how long to wait when it may not.
type Limiter interface {
	Allow(ctx context.Context, key string) (ok bool, retryAfter time.Duration, err error)
}

// Local keeps a token bucket per key in memory: rate per second, up to
// burst at once. Idle buckets are forgotten.
type Local struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// NewLocal builds an in-memory limiter.
func NewLocal(perSecond float64, burst int) *Local {
	return &Local{rate: rate.Limit(perSecond), burst: burst, buckets: map[string]*bucket{}, swept: time.Now()}
}

// Allow implements Limiter.
func (l *Local) Allow(_ context.Context, key string) (bool, time.Duration, error) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		for k, b := range l.buckets {
			if now.Sub(b.seen) > 10*time.Minute {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.buckets[key] = b
	}
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d, nil
	}
	return true, 0, nil
}

// Redis counts calls per key in one-second windows shared by every
// replica: at most burst calls in any one second (and so, on average, at
// most burst per second). It is coarser than the local bucket by design:
// one round trip, no script.
type Redis struct {
	client *redis.Client
	limit  int64
}

// NewRedis builds a shared limiter allowing burst calls per second.
func NewRedis(client *redis.Client, burst int) *Redis {
	return &Redis{client: client, limit: int64(burst)}
}

// Allow implements Limiter. When Redis fails the call is allowed: losing
// Redis costs protection, never availability.
func (l *Redis) Allow(ctx context.Context, key string) (bool, time.Duration, error) {
	now := time.Now()
	window := now.Unix()
	k := "opsconductor:rl:" + key + ":" + strconv.FormatInt(window, 10)
	pipe := l.client.TxPipeline()
	incr := pipe.Incr(ctx, k)
	pipe.Expire(ctx, k, 2*time.Second)
	if _, err := pipe.Exec(ctx); err != nil {
		return true, 0, fmt.Errorf("rate limit in redis: %w", err)
	}
	if incr.Val() > l.limit {
		return false, time.Unix(window+1, 0).Sub(now), nil
	}
	return true, 0, nil
}
