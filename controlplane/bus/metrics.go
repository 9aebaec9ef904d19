package bus

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// instrumented counts what passes through a bus.
type instrumented struct {
	Bus
	published, publishErrors prometheus.Counter
	delivered, failed        *prometheus.CounterVec
}

// Instrument wraps b so that its traffic shows in Prometheus: events
// published and publish errors, deliveries and handler failures by
// consumer group. name labels the broker (memory, redis, rabbitmq).
func Instrument(b Bus, name string, reg prometheus.Registerer) Bus {
	labels := prometheus.Labels{"bus": name}
	i := &instrumented{Bus: b,
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "opsconductor_bus_published_total",
			Help: "Events handed to the event bus (stored by the broker).", ConstLabels: labels}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "opsconductor_bus_publish_errors_total",
			Help: "Failed publishes to the event bus (the events stay in the outbox and are sent again).", ConstLabels: labels}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsconductor_bus_delivered_total",
			Help: "Events delivered to this replica's consumers and acknowledged, by group.", ConstLabels: labels}, []string{"group"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsconductor_bus_handler_errors_total",
			Help: "Deliveries a consumer failed (delivered again later, or dead-lettered), by group.", ConstLabels: labels}, []string{"group"}),
	}
	reg.MustRegister(i.published, i.publishErrors, i.delivered, i.failed)
	return i
}

func (i *instrumented) Publish(ctx context.Context, events ...Event) error {
	if err := i.Bus.Publish(ctx, events...); err != nil {
		i.publishErrors.Inc()
		return err
	}
	i.published.Add(float64(len(events)))
	return nil
}

func (i *instrumented) Consume(ctx context.Context, group string, families []string, h Handler) error {
	ok, bad := i.delivered.WithLabelValues(group), i.failed.WithLabelValues(group)
	return i.Bus.Consume(ctx, group, families, func(ctx context.Context, e Event) error {
		if err := h(ctx, e); err != nil {
			bad.Inc()
			return err
		}
		ok.Inc()
		return nil
	})
}
