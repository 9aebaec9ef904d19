// Package bus carries domain events between the control plane's
// services: at-least-once delivery to named consumer groups,
// acknowledgement, redelivery of what a consumer did not acknowledge, and
// a dead-letter list after repeated failures, from which an operator
// replays an event once its consumer is fixed.
//
// One contract, several brokers: Redis Streams (NewRedis) for a
// deployment with Redis, RabbitMQ (NewRabbit) for shops that run it, and
// an in-process bus (NewMemory) for the embedded single node. Every group gets every event of the families it
// consumes; within a group each event goes to one consumer at a time.
// Delivery is at least once: a consumer that dies before acknowledging
// gets the event again (or another consumer of its group does), so
// consumers must be idempotent by event id.
package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Event is a domain event as it travels on the bus.
type Event struct {
	// ID is unique and stable: a republished event keeps it, so consumers
	// drop what they have seen.
	ID string `json:"id"`
	// Type is "family.what", e.g. "execution.completed"; the family picks
	// the stream (or routing key) it travels on.
	Type string `json:"type"`
	// Source is the service that emitted it (jobs, executions, ...).
	Source string `json:"source"`
	// Subject is the entity it is about (an execution id, a job id).
	Subject       string    `json:"subject"`
	Time          time.Time `json:"time"`
	CorrelationID string    `json:"correlation_id,omitempty"`
	// Version is the version of the payload's schema for this type.
	Version int             `json:"version"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Family is the part of the type before the first dot.
func (e Event) Family() string {
	family, _, _ := strings.Cut(e.Type, ".")
	return family
}

// Validate says what is wrong with an event, naming the field.
func (e Event) Validate() error {
	switch {
	case e.ID == "":
		return errors.New("event id is required")
	case e.Type == "" || !strings.Contains(e.Type, ".") || strings.HasPrefix(e.Type, "."):
		return fmt.Errorf("event %s: type %q must be family.what, e.g. execution.completed", e.ID, e.Type)
	case e.Source == "":
		return fmt.Errorf("event %s: source is required", e.ID)
	case e.Time.IsZero():
		return fmt.Errorf("event %s: time is required", e.ID)
	}
	return nil
}

// Handler handles one delivery. Returning nil acknowledges it; an error
// leaves it unacknowledged, to be delivered again after the retry delay
// (or moved to the dead letters after the last allowed delivery).
type Handler func(ctx context.Context, e Event) error

// DeadLetter is an event a group gave up on.
type DeadLetter struct {
	// Ref names the dead letter for Replay.
	Ref        string
	Event      Event
	Deliveries int
	LastError  string
	DeadAt     time.Time
}

// Bus is what every broker provides.
type Bus interface {
	// Publish hands events to the broker; when it returns nil they are
	// stored there (they survive the publisher).
	Publish(ctx context.Context, events ...Event) error
	// Declare makes sure group exists and gets the families' events
	// published from now on, whether or not a consumer is running (a
	// service declares its groups before anything is published). On
	// Redis and in-process, a new group also gets what the streams still
	// hold; on RabbitMQ, only what is published after.
	Declare(ctx context.Context, group string, families []string) error
	// Consume declares the group and delivers the events of the families
	// to h as a member of it, until ctx ends.
	Consume(ctx context.Context, group string, families []string, h Handler) error
	// DeadLetters lists a group's dead letters, oldest first.
	DeadLetters(ctx context.Context, group string) ([]DeadLetter, error)
	// Replay delivers a dead letter to its group again (once more, with a
	// fresh count of deliveries) and removes it from the dead letters.
	Replay(ctx context.Context, group, ref string) error
}

// Options tune delivery. Zero values take the defaults.
type Options struct {
	// MaxDeliveries: after this many failed deliveries an event moves to
	// the group's dead letters (default 5).
	MaxDeliveries int
	// RetryAfter is how long an unacknowledged delivery waits before it
	// is delivered again (default 30s).
	RetryAfter time.Duration
	// Batch is how many events a consumer reads at once (default 100).
	Batch int
}

func (o Options) withDefaults() Options {
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = 5
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = 30 * time.Second
	}
	if o.Batch <= 0 {
		o.Batch = 100
	}
	return o
}

// ErrNoDeadLetter: Replay was given a ref the group's dead letters do not
// hold.
var ErrNoDeadLetter = errors.New("no such dead letter")
