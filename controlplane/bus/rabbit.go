package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
)

// Rabbit is the bus on RabbitMQ, for shops that run it rather than Redis.
// Events go to a durable topic exchange (PREFIX.events) routed by their
// type; each group is a durable quorum queue (PREFIX.group.GROUP) bound
// with FAMILY.# for each family it reads, so it gets what is published
// after it was declared. Publishing waits for the broker's confirms.
// A failed delivery is returned to the queue after RetryAfter; the
// queue counts deliveries (x-delivery-count), and the one that would
// exceed MaxDeliveries is published, with its last error, to the dead-
// letter exchange (PREFIX.dead, routed by group) and its queue
// (PREFIX.dead.GROUP), then acknowledged. A crash between the two makes a
// second dead letter of the same event, never none.
type Rabbit struct {
	url    string
	prefix string
	opts   Options
	logger *zap.Logger

	mu   sync.Mutex
	conn *amqp.Connection
	pub  *amqp.Channel // in confirm mode; nil until needed or after an error
	// dials counts connections made (a reconnect after the first); live
	// is the current connection, read without mu (a publish waiting on a
	// blocked broker holds mu; a metrics scrape must not wait for it).
	dials atomic.Int64
	live  atomic.Pointer[amqp.Connection]
}

// Connected reports whether the connection to the broker is open.
func (r *Rabbit) Connected() bool {
	c := r.live.Load()
	return c != nil && !c.IsClosed()
}

// Dials is how many connections were made to the broker (more than one:
// it went away and was dialled again).
func (r *Rabbit) Dials() int64 { return r.dials.Load() }

// NewRabbit returns a bus on the broker at url (amqp://user:pass@host:port/vhost);
// prefix names its exchanges and queues (default "opsconductor").
func NewRabbit(url, prefix string, opts Options, logger *zap.Logger) *Rabbit {
	if prefix == "" {
		prefix = "opsconductor"
	}
	return &Rabbit{url: url, prefix: prefix, opts: opts.withDefaults(), logger: logger.Named("bus")}
}

func (r *Rabbit) exchange() string              { return r.prefix + ".events" }
func (r *Rabbit) deadExchange() string          { return r.prefix + ".dead" }
func (r *Rabbit) queue(group string) string     { return r.prefix + ".group." + group }
func (r *Rabbit) deadQueue(group string) string { return r.prefix + ".dead." + group }

// Close closes the connection.
func (r *Rabbit) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		return nil
	}
	err := r.conn.Close()
	r.conn, r.pub = nil, nil
	return err
}

// channel opens a channel, dialling the broker again if the connection
// went away. Call with mu held.
func (r *Rabbit) channelLocked() (*amqp.Channel, error) {
	if r.conn == nil || r.conn.IsClosed() {
		conn, err := amqp.Dial(r.url)
		if err != nil {
			return nil, fmt.Errorf("connect to rabbitmq: %w", err)
		}
		r.conn, r.pub = conn, nil
		r.dials.Add(1)
		r.live.Store(conn)
	}
	ch, err := r.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open a rabbitmq channel: %w", err)
	}
	return ch, nil
}

func (r *Rabbit) channel() (*amqp.Channel, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.channelLocked()
}

// declare sets up the exchanges, the group's queue and bindings, and its
// dead-letter queue.
func (r *Rabbit) declare(ch *amqp.Channel, group string, families []string) error {
	if err := ch.ExchangeDeclare(r.exchange(), "topic", true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", r.exchange(), err)
	}
	if err := ch.ExchangeDeclare(r.deadExchange(), "direct", true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", r.deadExchange(), err)
	}
	if group == "" {
		return nil
	}
	// A quorum queue counts deliveries; the dead-letter exchange also
	// takes what the broker itself gives up on.
	args := amqp.Table{"x-queue-type": "quorum", "x-dead-letter-exchange": r.deadExchange(), "x-dead-letter-routing-key": group}
	if _, err := ch.QueueDeclare(r.queue(group), true, false, false, false, args); err != nil {
		return fmt.Errorf("declare queue %s: %w", r.queue(group), err)
	}
	for _, f := range families {
		if err := ch.QueueBind(r.queue(group), f+".#", r.exchange(), false, nil); err != nil {
			return fmt.Errorf("bind %s to %s: %w", r.queue(group), f, err)
		}
	}
	if _, err := ch.QueueDeclare(r.deadQueue(group), true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare queue %s: %w", r.deadQueue(group), err)
	}
	if err := ch.QueueBind(r.deadQueue(group), group, r.deadExchange(), false, nil); err != nil {
		return fmt.Errorf("bind %s: %w", r.deadQueue(group), err)
	}
	return nil
}

// Declare creates the group's queue and bindings if need be.
func (r *Rabbit) Declare(_ context.Context, group string, families []string) error {
	ch, err := r.channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	return r.declare(ch, group, families)
}

// publish sends messages and waits for the broker's confirms. A failure
// drops the publishing channel (the next call opens another).
func (r *Rabbit) publish(ctx context.Context, exchange string, keys []string, msgs []amqp.Publishing) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pub == nil || r.pub.IsClosed() {
		ch, err := r.channelLocked()
		if err != nil {
			return err
		}
		if err := r.declare(ch, "", nil); err != nil {
			ch.Close()
			return err
		}
		if err := ch.Confirm(false); err != nil {
			ch.Close()
			return fmt.Errorf("confirm mode: %w", err)
		}
		r.pub = ch
	}
	fail := func(err error) error {
		r.pub.Close()
		r.pub = nil
		return err
	}
	confirms := make([]*amqp.DeferredConfirmation, len(msgs))
	for i, m := range msgs {
		dc, err := r.pub.PublishWithDeferredConfirmWithContext(ctx, exchange, keys[i], false, false, m)
		if err != nil {
			return fail(fmt.Errorf("publish to %s: %w", exchange, err))
		}
		confirms[i] = dc
	}
	for i, dc := range confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fail(fmt.Errorf("wait for the confirm of %s: %w", msgs[i].MessageId, err))
		}
		if !ok {
			return fail(fmt.Errorf("rabbitmq refused %s", msgs[i].MessageId))
		}
	}
	return nil
}

// Publish sends the events to the exchange, persistent, and returns once
// the broker confirmed every one.
func (r *Rabbit) Publish(ctx context.Context, events ...Event) error {
	keys := make([]string, len(events))
	msgs := make([]amqp.Publishing, len(events))
	for i, e := range events {
		if err := e.Validate(); err != nil {
			return err
		}
		body, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode event %s: %w", e.ID, err)
		}
		keys[i] = e.Type
		msgs[i] = amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: e.ID, Timestamp: e.Time, Body: body}
	}
	if err := r.publish(ctx, r.exchange(), keys, msgs); err != nil {
		return fmt.Errorf("publish %d events to rabbitmq: %w", len(events), err)
	}
	return nil
}

// Consume delivers the group's queue to h until ctx ends; a lost
// connection is dialled again (and logged), not returned.
func (r *Rabbit) Consume(ctx context.Context, group string, families []string, h Handler) error {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.consumeOnce(ctx, group, families, h)
		if ctx.Err() != nil {
			break
		}
		r.logger.Warn("consume events", zap.String("group", group), zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

func (r *Rabbit) consumeOnce(ctx context.Context, group string, families []string, h Handler) error {
	ch, err := r.channel()
	if err != nil {
		return err
	}
	defer ch.Close() // what is not acknowledged goes back to the queue
	if err := r.declare(ch, group, families); err != nil {
		return err
	}
	if err := ch.Qos(r.opts.Batch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	// Not ConsumeWithContext: its cancel on ctx's end races with Close
	// for the channel's replies; closing the channel ends the consumer.
	deliveries, err := ch.Consume(r.queue(group), "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", r.queue(group), err)
	}
	// Failed deliveries wait RetryAfter before they go back; the timers
	// end with the channel. Closing a channel blocks while the library
	// still holds deliveries for a consumer nobody reads: drain them
	// (unacknowledged, they go back to the queue).
	var timers sync.WaitGroup
	stop := make(chan struct{})
	defer func() {
		close(stop)
		timers.Wait()
		go func() {
			for range deliveries {
			}
		}()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("the broker closed the channel")
			}
			r.handle(ctx, group, d, h, &timers, stop)
		}
	}
}

func (r *Rabbit) handle(ctx context.Context, group string, d amqp.Delivery, h Handler, timers *sync.WaitGroup, stop <-chan struct{}) {
	var e Event
	if err := json.Unmarshal(d.Body, &e); err != nil {
		r.bury(ctx, group, d, fmt.Errorf("decode event: %w", err), 1)
		return
	}
	herr := h(ctx, e)
	if herr == nil {
		if err := d.Ack(false); err != nil {
			r.logger.Warn("acknowledge event", zap.String("event", e.ID), zap.Error(err))
		}
		return
	}
	if ctx.Err() != nil {
		return // stopping: back to the queue when the channel closes
	}
	deliveries := deliveryCount(d) + 1
	if deliveries >= r.opts.MaxDeliveries {
		r.bury(ctx, group, d, herr, deliveries)
		return
	}
	timers.Add(1)
	go func() {
		defer timers.Done()
		t := time.NewTimer(r.opts.RetryAfter)
		defer t.Stop()
		select {
		case <-t.C:
			_ = d.Nack(false, true)
		case <-stop: // the channel closes: the delivery goes back anyway
		}
	}()
}

// deliveryCount is how many times the quorum queue delivered the
// message before this delivery.
func deliveryCount(d amqp.Delivery) int {
	switch n := d.Headers["x-delivery-count"].(type) {
	case int64:
		return int(n)
	case int32:
		return int(n)
	case int:
		return n
	}
	return 0
}

// bury publishes a delivery to the group's dead letters and then
// acknowledges it.
func (r *Rabbit) bury(ctx context.Context, group string, d amqp.Delivery, cause error, deliveries int) {
	msg := amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: d.MessageId, Body: d.Body,
		Headers: amqp.Table{"ref": uuid.NewString(), "error": cause.Error(), "deliveries": int64(deliveries),
			"dead_at": time.Now().UTC().Format(time.RFC3339Nano)}}
	if err := r.publish(ctx, r.deadExchange(), []string{group}, []amqp.Publishing{msg}); err != nil {
		r.logger.Warn("move an event to the dead letters", zap.String("group", group), zap.Error(err))
		_ = d.Nack(false, true)
		return
	}
	if err := d.Ack(false); err != nil {
		r.logger.Warn("acknowledge a dead letter", zap.String("group", group), zap.Error(err))
	}
	r.logger.Warn("event moved to the dead letters", zap.String("group", group), zap.String("message", d.MessageId),
		zap.Int("deliveries", deliveries), zap.String("error", cause.Error()))
}

// deadLetters reads the group's dead queue without consuming it: every
// message is fetched unacknowledged and goes back, in order, when the
// channel closes. keep, if set, picks one to acknowledge instead.
func (r *Rabbit) deadLetters(group string, keep func(DeadLetter, amqp.Delivery) bool) ([]DeadLetter, error) {
	ch, err := r.channel()
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	if err := r.declare(ch, group, nil); err != nil {
		return nil, err
	}
	var out []DeadLetter
	for {
		d, ok, err := ch.Get(r.deadQueue(group), false)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", r.deadQueue(group), err)
		}
		if !ok {
			return out, nil
		}
		dl := DeadLetter{Ref: fmt.Sprint(d.Headers["ref"]), LastError: fmt.Sprint(d.Headers["error"]), Deliveries: deliveryHeader(d)}
		dl.DeadAt, _ = time.Parse(time.RFC3339Nano, fmt.Sprint(d.Headers["dead_at"]))
		_ = json.Unmarshal(d.Body, &dl.Event)
		if keep != nil && keep(dl, d) {
			if err := d.Ack(false); err != nil {
				return nil, fmt.Errorf("remove dead letter %s: %w", dl.Ref, err)
			}
			return []DeadLetter{dl}, nil
		}
		out = append(out, dl)
	}
}

func deliveryHeader(d amqp.Delivery) int {
	if n, ok := d.Headers["deliveries"].(int64); ok {
		return int(n)
	}
	return 0
}

// DeadLetters lists the group's dead letters, oldest first.
func (r *Rabbit) DeadLetters(_ context.Context, group string) ([]DeadLetter, error) {
	return r.deadLetters(group, nil)
}

// Replay publishes a dead letter to its group's queue again (a fresh
// count of deliveries) and then removes it from the dead letters.
func (r *Rabbit) Replay(ctx context.Context, group, ref string) error {
	var perr error
	found, err := r.deadLetters(group, func(dl DeadLetter, d amqp.Delivery) bool {
		if dl.Ref != ref {
			return false
		}
		// Through the default exchange, straight to the group's queue.
		perr = r.publish(ctx, "", []string{r.queue(group)}, []amqp.Publishing{{ContentType: "application/json",
			DeliveryMode: amqp.Persistent, MessageId: d.MessageId, Body: d.Body}})
		return perr == nil
	})
	switch {
	case perr != nil:
		return fmt.Errorf("replay dead letter %s of %s: %w", ref, group, perr)
	case err != nil:
		return err
	case len(found) == 0 || !strings.EqualFold(found[0].Ref, ref):
		return fmt.Errorf("group %s, dead letter %s: %w", group, ref, ErrNoDeadLetter)
	}
	return nil
}
