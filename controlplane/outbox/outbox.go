// Package outbox implements the transactional outbox: a service writes each
// domain event into its own schema's outbox table in the same transaction as
// the change it describes, and a Relay reads the table in sequence order and
// hands the events to in-process subscribers. Nothing is published that did
// not commit, and nothing that committed is lost.
//
// Every service schema has the table (see each service's first migration):
//
//	outbox(seq, topic, aggregate_id, aggregate_seq, payload, created_at)
//
// seq orders all of a service's events; aggregate_seq numbers one
// aggregate's events (an execution's, say) without gaps. Writers of one
// aggregate serialise on the aggregate's row (they bump its counter in the
// same transaction), so aggregate_seq order is commit order and a watcher
// can resume from the last aggregate_seq it saw without missing anything.
package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/correlation"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Event is one committed domain event.
type Event struct {
	Seq          int64
	Topic        string // e.g. "job.created", "task.status"
	AggregateID  string // the entity the event is about, e.g. an execution id
	AggregateSeq int64  // the event's number within its aggregate
	Payload      []byte // JSON
	CreatedAt    time.Time
	// CorrelationID is the request's that wrote it ("" for background work).
	CorrelationID string
}

// Append writes an event in the caller's transaction and returns its
// sequence number. payload is marshalled to JSON.
func Append(ctx context.Context, q store.Querier, topic, aggregateID string, aggregateSeq int64, payload any) (int64, error) {
	body, err := json.Marshal(payload)
	if err != nil {
		return 0, fmt.Errorf("encode %s event: %w", topic, err)
	}
	var seq int64
	err = q.QueryRowContext(ctx,
		`INSERT INTO outbox (topic, aggregate_id, aggregate_seq, payload, created_at, correlation_id) VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq`,
		topic, aggregateID, aggregateSeq, string(body), time.Now().UTC(), correlation.ID(ctx)).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("append %s event: %w", topic, err)
	}
	return seq, nil
}

// Record is an event to append: AppendAll's input.
type Record struct {
	Topic        string
	AggregateSeq int64
	Payload      []byte // JSON
}

// AppendAll writes events of one aggregate in the caller's transaction,
// in one statement, in order.
func AppendAll(ctx context.Context, q store.Querier, aggregateID string, records []Record) error {
	if len(records) == 0 {
		return nil
	}
	at, corr := time.Now().UTC(), correlation.ID(ctx)
	var values strings.Builder
	args := make([]any, 0, 3+3*len(records))
	args = append(args, aggregateID, at, corr)
	for i, r := range records {
		if i > 0 {
			values.WriteString(", ")
		}
		n := len(args)
		fmt.Fprintf(&values, "($%d, $1, $%d, $%d, $2, $3)", n+1, n+2, n+3)
		args = append(args, r.Topic, r.AggregateSeq, string(r.Payload))
	}
	if _, err := q.ExecContext(ctx, `INSERT INTO outbox (topic, aggregate_id, aggregate_seq, payload, created_at, correlation_id) VALUES `+values.String(), args...); err != nil {
		return fmt.Errorf("append %d events of %s: %w", len(records), aggregateID, err)
	}
	return nil
}

// ListAfter returns up to limit events with seq > after, in order.
func ListAfter(ctx context.Context, q store.Querier, after int64, limit int) ([]Event, error) {
	return list(ctx, q, `SELECT seq, topic, aggregate_id, aggregate_seq, payload, created_at, correlation_id
		FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit)
}

// ListAggregateAfter returns up to limit events of one aggregate with
// aggregate_seq > after, in order.
func ListAggregateAfter(ctx context.Context, q store.Querier, aggregateID string, after int64, limit int) ([]Event, error) {
	return list(ctx, q, `SELECT seq, topic, aggregate_id, aggregate_seq, payload, created_at, correlation_id
		FROM outbox WHERE aggregate_id = $1 AND aggregate_seq > $2 ORDER BY aggregate_seq LIMIT $3`, aggregateID, after, limit)
}

func list(ctx context.Context, q store.Querier, query string, args ...any) ([]Event, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list outbox: %w", err)
	}
	defer rows.Close()
	var events []Event
	for rows.Next() {
		var e Event
		var payload string
		if err := rows.Scan(&e.Seq, &e.Topic, &e.AggregateID, &e.AggregateSeq, &payload, &e.CreatedAt, &e.CorrelationID); err != nil {
			return nil, fmt.Errorf("scan outbox: %w", err)
		}
		e.Payload = []byte(payload)
		events = append(events, e)
	}
	return events, rows.Err()
}

// MaxSeq returns the highest sequence written so far (0 when empty).
func MaxSeq(ctx context.Context, q store.Querier) (int64, error) {
	var seq int64
	if err := q.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM outbox`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read outbox position: %w", err)
	}
	return seq, nil
}

// Purge deletes up to batch outbox rows written before before and at or
// below upTo (what the publisher has sent: nothing unpublished goes), and
// says how many.
func Purge(ctx context.Context, q store.Querier, upTo int64, before time.Time, batch int) (int, error) {
	return PurgeTopics(ctx, q, "", upTo, before, batch)
}

// PurgeTopics is Purge limited to the topics that start with prefix (""
// for all): the executions outbox, whose execution events go with their
// executions, still sheds the audit records a split process writes there.
func PurgeTopics(ctx context.Context, q store.Querier, prefix string, upTo int64, before time.Time, batch int) (int, error) {
	res, err := q.ExecContext(ctx, `DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq <= $1 AND created_at < $2 AND topic LIKE $4
		ORDER BY seq LIMIT $3)`, upTo, before.UTC(), batch, prefix+"%")
	if err != nil {
		return 0, fmt.Errorf("purge outbox: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}
