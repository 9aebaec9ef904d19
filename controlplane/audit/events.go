// Package audit is the audit and events service: it keeps every domain
// event the other services publish (received from the bus, idempotent by
// event id) in its own schema, queryable by time, type, subject, source
// and correlation id.
package audit

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

//go:embed migrations
var migrationsDir embed.FS

// Migrations returns the audit schema migrations for store.DB.Migrate.
func Migrations() fs.FS { return store.MustSub(migrationsDir, "migrations") }

// Schema is the name of the audit service's schema.
const Schema = "audit"

// Group is the audit service's consumer group on the bus.
const Group = "audit"

// Families are the event families the services emit: what the audit
// service consumes (the end-to-end test checks that every event written
// to an outbox reaches the audit store).
var Families = []string{"agent", "audit", "credential", "execution", "inventory", "job", "role", "schedule", "task", "token", "user"}

// skipped types are not kept: a task's output chunks are the executions
// service's (with their own retention), not history of who did what.
var skipped = map[string]bool{"task.output": true}

// Store keeps the events in the audit schema.
type Store struct {
	db *store.DB
}

// NewStore wraps a migrated audit database.
func NewStore(db *store.DB) *Store { return &Store{db: db} }

// Record stores events not seen before (by id) and says how many were new.
func (s *Store) Record(ctx context.Context, events ...bus.Event) (int, error) {
	added := 0
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		now := time.Now().UTC()
		for _, e := range events {
			res, err := tx.ExecContext(ctx, `INSERT INTO events (id, type, source, subject, occurred_at, correlation_id, version, payload, received_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING`,
				e.ID, e.Type, e.Source, e.Subject, e.Time.UTC(), e.CorrelationID, e.Version, string(e.Payload), now)
			if err != nil {
				return fmt.Errorf("record event %s: %w", e.ID, err)
			}
			n, _ := res.RowsAffected()
			added += int(n)
		}
		return nil
	})
	return added, err
}

// RecordExternal stores an external system's event and, in the same
// transaction, writes it to the audit schema's outbox, whose publisher
// puts it on the bus as it is: other consumers get it even if the bus is
// down now.
func (s *Store) RecordExternal(ctx context.Context, e bus.Event) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO events (id, type, source, subject, occurred_at, correlation_id, version, payload, received_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING`,
			e.ID, e.Type, e.Source, e.Subject, e.Time.UTC(), e.CorrelationID, e.Version, string(e.Payload), time.Now().UTC()); err != nil {
			return fmt.Errorf("record event %s: %w", e.ID, err)
		}
		_, err := outbox.Append(ctx, tx, e.Type, e.Subject, 0, e)
		return err
	})
}

// Filter selects events; zero fields select everything.
type Filter struct {
	Type          string // exact, or a family with ".*" (e.g. "execution.*")
	Source        string
	Subject       string
	CorrelationID string
	From, To      time.Time // occurred_at in [From, To)
	// Before continues a listing: events older than this one.
	Before *Cursor
	Limit  int // default 100, at most 1000
}

// Cursor is where a page ended: the last event's time and id.
type Cursor struct {
	Time time.Time
	ID   string
}

// List returns events newest first and, when there may be more, the
// cursor of the next page.
func (s *Store) List(ctx context.Context, f Filter) ([]bus.Event, *Cursor, error) {
	limit := pageLimit(f.Limit)
	var where []string
	var args []any
	arg := argAdder(&args)
	if family, ok := strings.CutSuffix(f.Type, ".*"); ok {
		where = append(where, "type LIKE "+arg(family+".%"))
	} else if f.Type != "" {
		where = append(where, "type = "+arg(f.Type))
	}
	if f.Source != "" {
		where = append(where, "source = "+arg(f.Source))
	}
	if f.Subject != "" {
		where = append(where, "subject = "+arg(f.Subject))
	}
	if f.CorrelationID != "" {
		where = append(where, "correlation_id = "+arg(f.CorrelationID))
	}
	if !f.From.IsZero() {
		where = append(where, "occurred_at >= "+arg(f.From.UTC()))
	}
	if !f.To.IsZero() {
		where = append(where, "occurred_at < "+arg(f.To.UTC()))
	}
	if f.Before != nil {
		t, id := arg(f.Before.Time.UTC()), arg(f.Before.ID)
		where = append(where, fmt.Sprintf("(occurred_at < %s OR (occurred_at = %s AND id < %s))", t, t, id))
	}
	q := `SELECT id, type, source, subject, occurred_at, correlation_id, version, payload FROM events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY occurred_at DESC, id DESC LIMIT " + arg(limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	var out []bus.Event
	for rows.Next() {
		var e bus.Event
		var payload string
		if err := rows.Scan(&e.ID, &e.Type, &e.Source, &e.Subject, &e.Time, &e.CorrelationID, &e.Version, &payload); err != nil {
			return nil, nil, fmt.Errorf("scan event: %w", err)
		}
		e.Time, e.Payload = e.Time.UTC(), []byte(payload)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	if len(out) <= limit {
		return out, nil, nil
	}
	out = out[:limit]
	last := out[limit-1]
	return out, &Cursor{Time: last.Time, ID: last.ID}, nil
}

// Count returns how many events are kept.
func (s *Store) Count(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM events`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count events: %w", err)
	}
	return n, nil
}

// Consumer takes the services' events off the bus into the store.
type Consumer struct {
	store  *Store
	log    *Log
	bus    bus.Bus
	logger *zap.Logger
}

// NewConsumer builds the audit service's consumer. Call records other
// processes forward (split mode) are appended to log.
func NewConsumer(st *Store, log *Log, b bus.Bus, logger *zap.Logger) *Consumer {
	return &Consumer{store: st, log: log, bus: b, logger: logger.Named("audit")}
}

// Declare makes sure the audit group exists before anything is
// published (on RabbitMQ a queue only gets what comes after it).
func (c *Consumer) Declare(ctx context.Context) error {
	return c.bus.Declare(ctx, Group, Families)
}

// DeclareGroups makes sure the audit and notification groups exist on b
// before anything is published: every process does it, whichever runs
// the audit service (split mode), since on RabbitMQ a queue only gets
// what is published after it exists.
func DeclareGroups(ctx context.Context, b bus.Bus) error {
	if err := b.Declare(ctx, Group, Families); err != nil {
		return err
	}
	return b.Declare(ctx, NotifyGroup, notifyFamilies())
}

// Run consumes until ctx ends. Every replica runs one: they share the
// group, so each event is stored by one of them (and again, harmlessly,
// after a redelivery).
func (c *Consumer) Run(ctx context.Context) error {
	return c.bus.Consume(ctx, Group, Families, func(ctx context.Context, e bus.Event) error {
		if skipped[e.Type] {
			return nil
		}
		if e.Type == ForwardedTopic {
			var r Record
			if err := json.Unmarshal(e.Payload, &r); err != nil {
				return fmt.Errorf("decode forwarded call record %s: %w", e.ID, err)
			}
			_, err := c.log.AppendForwarded(ctx, e.ID, r)
			return err
		}
		_, err := c.store.Record(ctx, e)
		return err
	})
}

// PurgeEvents deletes up to batch events that happened before before and
// says how many.
func (s *Store) PurgeEvents(ctx context.Context, before time.Time, batch int) (int, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE occurred_at < $1 ORDER BY occurred_at LIMIT $2)`,
		before.UTC(), batch)
	if err != nil {
		return 0, fmt.Errorf("purge events: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// pageLimit is a listing's page size: default 100, at most 1000.
func pageLimit(n int) int {
	if n <= 0 {
		return 100
	}
	return min(n, 1000)
}

// argAdder returns a function that appends a query argument and gives its
// placeholder ($1, $2, ...).
func argAdder(args *[]any) func(any) string {
	return func(v any) string {
		*args = append(*args, v)
		return fmt.Sprintf("$%d", len(*args))
	}
}
