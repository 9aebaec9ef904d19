package bus_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/bus/bustest"
)

// The machine's Redis (127.0.0.1:6379), each test under its own key
// prefix, removed afterwards.
func TestRedisContract(t *testing.T) {
	bustest.Run(t, func(t *testing.T, opts bus.Options) bus.Bus {
		client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
		if err := client.Ping(context.Background()).Err(); err != nil {
			t.Fatalf("redis at 127.0.0.1:6379: %v", err)
		}
		prefix := "bustest-" + uuid.NewString()[:8]
		t.Cleanup(func() {
			ctx := context.Background()
			keys, _ := client.Keys(ctx, prefix+":*").Result()
			if len(keys) > 0 {
				client.Del(ctx, keys...)
			}
			_ = client.Close()
		})
		return bus.NewRedis(client, prefix, opts, zaptest.NewLogger(t))
	})
}
