package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func count(t *testing.T, l Limiter, key string, n int) (allowed int, retry time.Duration) {
	t.Helper()
	for i := 0; i < n; i++ {
		ok, after, err := l.Allow(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			allowed++
		} else if after > retry {
			retry = after
		}
	}
	return allowed, retry
}

func TestLocal(t *testing.T) {
	l := NewLocal(1, 5)
	allowed, retry := count(t, l, "alice", 20)
	if allowed != 5 {
		t.Fatalf("allowed %d of a burst of 20, want the burst size 5", allowed)
	}
	if retry <= 0 || retry > 2*time.Second {
		t.Fatalf("retry hint %s, want about a second", retry)
	}
	if got, _ := count(t, l, "bob", 5); got != 5 {
		t.Fatalf("bob allowed %d: keys must not share buckets", got)
	}
}

func TestRedis(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer c.Close()
	l := NewRedis(c, 5)
	var b [6]byte
	_, _ = rand.Read(b[:])
	key := "test-" + hex.EncodeToString(b[:])
	// Two replicas share the count: take the calls through two limiters.
	other := NewRedis(c, 5)
	a1, _ := count(t, l, key, 6)
	a2, retry := count(t, other, key, 6)
	// A window boundary may fall inside the burst; then up to twice the
	// limit pass, never more.
	if a1+a2 < 5 || a1+a2 > 10 {
		t.Fatalf("allowed %d of 12 over two replicas, want 5 (10 across a window boundary)", a1+a2)
	}
	if a1+a2 == 5 && (retry <= 0 || retry > time.Second) {
		t.Fatalf("retry hint %s", retry)
	}
}
