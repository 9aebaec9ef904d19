package notify

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func received(ch <-chan struct{}, within time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(within):
		return false
	}
}

func TestLocalHub(t *testing.T) {
	h := New(nil, zaptest.NewLogger(t))
	a, cancelA := h.Subscribe(AgentKey("a"))
	b, cancelB := h.Subscribe(AgentKey("b"))
	defer cancelB()
	h.Publish(context.Background(), AgentKey("a"))
	if !received(a, time.Second) {
		t.Fatal("subscriber of a not woken")
	}
	if received(b, 50*time.Millisecond) {
		t.Fatal("subscriber of b woken by a's key")
	}
	// Wake-ups coalesce and never block the publisher.
	for i := 0; i < 100; i++ {
		h.Publish(context.Background(), AgentKey("a"))
	}
	if !received(a, time.Second) {
		t.Fatal("coalesced wake-up lost")
	}
	cancelA()
	h.Publish(context.Background(), AgentKey("a")) // no subscribers: no panic, no block
}

// TestRedisHub: a wake-up published on one hub reaches a subscriber of
// another hub (another replica) through Redis.
func TestRedisHub(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	newHub := func() (*Hub, func()) {
		c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
		h := New(c, zaptest.NewLogger(t))
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = h.Run(ctx)
		}()
		select {
		case <-h.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("hub did not subscribe to redis")
		}
		return h, func() { cancel(); <-done; _ = c.Close() }
	}
	a, stopA := newHub()
	b, stopB := newHub()
	defer stopA()
	defer stopB()
	key := ExecutionKey("exec-" + t.Name())
	ch, unsub := b.Subscribe(key)
	defer unsub()
	a.Publish(context.Background(), key)
	if !received(ch, 5*time.Second) {
		t.Fatal("wake-up did not cross replicas through redis")
	}
}
