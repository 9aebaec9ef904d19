package bus_test

import (
	"testing"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/bus/bustest"
)

// rabbitURL is the machine's RabbitMQ (.ci/run starts it); the guest
// user may connect from loopback only.
const rabbitURL = "amqp://guest:guest@127.0.0.1:5672/"

func TestRabbitContract(t *testing.T) {
	conn, err := amqp.Dial(rabbitURL)
	if err != nil {
		t.Fatalf("rabbitmq at %s: %v", rabbitURL, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	bustest.Run(t, func(t *testing.T, opts bus.Options) bus.Bus {
		prefix := "bustest-" + uuid.NewString()[:8]
		b := bus.NewRabbit(rabbitURL, prefix, opts, zaptest.NewLogger(t))
		t.Cleanup(func() {
			_ = b.Close()
			ch, err := conn.Channel()
			if err != nil {
				t.Errorf("clean up: %v", err)
				return
			}
			defer ch.Close()
			for _, g := range bustest.Groups {
				_, _ = ch.QueueDelete(prefix+".group."+g, false, false, false)
				_, _ = ch.QueueDelete(prefix+".dead."+g, false, false, false)
			}
			_ = ch.ExchangeDelete(prefix+".events", false, false)
			_ = ch.ExchangeDelete(prefix+".dead", false, false)
		})
		return b
	})
}
