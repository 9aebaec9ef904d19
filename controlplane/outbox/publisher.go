package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Publisher sends one service's committed outbox events to the bus, in
// sequence order and at least once: its position is kept in the schema
// (table outbox_position) and moves only after the bus has stored the
// events, so a publisher that dies is followed by one that starts where
// it stopped (a few events may go twice; consumers drop them by id).
// Every replica runs one per schema; an advisory lock makes one of them
// publish, the others stand by. A first start publishes the whole outbox.
type Publisher struct {
	db     *store.DB
	bus    bus.Bus
	source string
	cfg    RelayConfig
	logger *zap.Logger
	nudge  chan struct{}
	errors atomic.Int64
}

// NewPublisher builds a publisher of db's outbox; source names the
// service in the events (jobs, executions, ...).
func NewPublisher(db *store.DB, b bus.Bus, source string, logger *zap.Logger, cfg RelayConfig) *Publisher {
	cfg = cfg.withDefaults()
	return &Publisher{db: db, bus: b, source: source, cfg: cfg, logger: logger.Named("publisher").With(zap.String("schema", db.Schema())),
		nudge: make(chan struct{}, 1)}
}

// Nudge makes the publisher read the outbox now. It never blocks.
func (p *Publisher) Nudge() {
	select {
	case p.nudge <- struct{}{}:
	default:
	}
}

// EventID is the bus id of an outbox event: stable, so a republished
// event is recognised.
func EventID(source string, seq int64) string { return fmt.Sprintf("%s-%d", source, seq) }

// ExternalPrefix marks external systems' events (POST /api/v1/events):
// their outbox row holds the whole bus event, sent as it is (with its own
// id, source and correlation id).
const ExternalPrefix = "external."

// ToBus is the bus form of an outbox event.
func ToBus(source string, e Event) bus.Event {
	if strings.HasPrefix(e.Topic, ExternalPrefix) {
		var ev bus.Event
		if err := json.Unmarshal(e.Payload, &ev); err == nil && ev.ID != "" {
			return ev
		}
	}
	return bus.Event{ID: EventID(source, e.Seq), Type: e.Topic, Source: source, Subject: e.AggregateID, Time: e.CreatedAt.UTC(),
		CorrelationID: e.CorrelationID, Version: 1, Payload: e.Payload}
}

// ensurePosition creates the position table.
func (p *Publisher) ensurePosition(ctx context.Context) error { return EnsureTables(ctx, p.db) }

// EnsureTables creates the tables this package keeps in a service's
// schema beside the service's own outbox (the publisher's position): they
// belong to this package, not to a service, so they are made here rather
// than in every service's migrations. Servers call it right after
// migrating a schema, as does opsconductor store import.
func EnsureTables(ctx context.Context, db *store.DB) error {
	_, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS outbox_position (name TEXT PRIMARY KEY, seq BIGINT NOT NULL)`)
	if err != nil {
		return fmt.Errorf("create outbox_position: %w", err)
	}
	return nil
}

// Position is how far the publisher has published (0: nothing yet).
func (p *Publisher) Position(ctx context.Context) (int64, error) {
	var seq int64
	err := p.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM outbox_position WHERE name = $1`, "bus").Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("read the publisher's position: %w", err)
	}
	return seq, nil
}

func (p *Publisher) setPosition(ctx context.Context, seq int64) error {
	// What the bus has is recorded even when the publisher is being
	// stopped: a graceful stop publishes nothing twice.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, err := p.db.ExecContext(ctx, `INSERT INTO outbox_position (name, seq) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET seq = excluded.seq`, "bus", seq)
	if err != nil {
		return fmt.Errorf("store the publisher's position: %w", err)
	}
	return nil
}

// Errors counts failed attempts to publish (the broker down, say).
func (p *Publisher) Errors() int64 { return p.errors.Load() }

// DB is the store whose outbox it publishes.
func (p *Publisher) DB() *store.DB { return p.db }

// Schema is the schema whose outbox it publishes.
func (p *Publisher) Schema() string { return p.db.Schema() }

// Lag is how many committed events are not published yet (an estimate:
// the highest sequence number written less the published position).
func (p *Publisher) Lag(ctx context.Context) (int64, error) {
	if err := p.ensurePosition(ctx); err != nil {
		return 0, err
	}
	top, err := MaxSeq(ctx, p.db)
	if err != nil {
		return 0, err
	}
	at, err := p.Position(ctx)
	if err != nil {
		return 0, err
	}
	return max(top-at, 0), nil
}

// Run publishes until ctx ends, taking part in the election of the
// schema's publisher.
func (p *Publisher) Run(ctx context.Context) error {
	lockKey := "opsconductor.publisher." + p.db.Schema()
	for ctx.Err() == nil {
		if err := p.ensurePosition(ctx); err != nil {
			p.logger.Warn("outbox publisher", zap.Error(err))
		} else if lock, ok, err := p.db.TryLock(ctx, lockKey); err != nil {
			p.logger.Warn("outbox publisher election", zap.Error(err))
		} else if ok {
			p.active(ctx, lock)
			lock.Release()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

func (p *Publisher) active(ctx context.Context, lock *store.SessionLock) {
	cursor, err := p.Position(ctx)
	if err != nil {
		p.logger.Warn("outbox publisher", zap.Error(err))
		return
	}
	var gapSince time.Time
	tick := time.NewTicker(p.cfg.PollInterval)
	defer tick.Stop()
	for lock.Held(ctx) {
		var err error
		if cursor, gapSince, err = p.publish(ctx, cursor, gapSince); err != nil && ctx.Err() == nil {
			p.errors.Add(1)
			p.logger.Warn("publish outbox events; retrying", zap.Int64("after", cursor), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-p.nudge:
		case <-tick.C:
		}
	}
}

// publish sends what it can after cursor, a batch at a time, and returns
// the new cursor. A missing sequence number holds back the events after
// it for GapTimeout (a transaction that took it may still commit), then
// is taken for a rollback and skipped.
func (p *Publisher) publish(ctx context.Context, cursor int64, gapSince time.Time) (int64, time.Time, error) {
	for {
		events, err := ListAfter(ctx, p.db, cursor, p.cfg.Batch)
		if err != nil || len(events) == 0 {
			return cursor, time.Time{}, err
		}
		var batch []bus.Event
		last := cursor
		for _, e := range events {
			if e.Seq != last+1 {
				if gapSince.IsZero() {
					gapSince = time.Now()
				}
				if time.Since(gapSince) < p.cfg.GapTimeout {
					break
				}
				// A transaction that took these numbers and commits later
				// still would be missed: say so.
				p.logger.Warn("outbox gap skipped (taken for a rolled-back transaction)", zap.Int64("after", last), zap.Int64("next", e.Seq),
					zap.Duration("waited", p.cfg.GapTimeout))
			}
			gapSince = time.Time{}
			batch = append(batch, ToBus(p.source, e))
			last = e.Seq
		}
		if len(batch) == 0 {
			return cursor, gapSince, nil
		}
		if err := p.bus.Publish(ctx, batch...); err != nil {
			return cursor, gapSince, err
		}
		if err := p.setPosition(ctx, last); err != nil {
			return cursor, gapSince, err
		}
		cursor = last
		if len(batch) < len(events) || len(events) < p.cfg.Batch {
			return cursor, gapSince, nil
		}
	}
}
