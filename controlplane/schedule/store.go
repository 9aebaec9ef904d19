package schedule

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

//go:embed migrations
var migrationsDir embed.FS

// Migrations returns the scheduling schema migrations for store.DB.Migrate.
func Migrations() fs.FS { return store.MustSub(migrationsDir, "migrations") }

// Schema is the name of the scheduling service's schema.
const Schema = "scheduling"

// Schedule states.
const (
	StateActive    = "active"
	StatePaused    = "paused"
	StateCompleted = "completed"
)

// Record is a stored schedule.
type Record struct {
	ID         string
	Version    int64
	JobID      string
	Definition []byte // protobuf JSON of opsconductor.v1.Schedule
	State      string
	NextFireAt *time.Time
	LastFireAt *time.Time
	// RunAs is what its fires may do: the grants (JSON) of whoever last
	// saved or resumed it.
	RunAs     []byte
	CreatedBy string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Store keeps schedules and their fires in the scheduling schema.
type Store struct {
	db *store.DB
}

// NewStore wraps a migrated scheduling database.
func NewStore(db *store.DB) *Store { return &Store{db: db} }

type change struct {
	ID      string `json:"schedule_id"`
	JobID   string `json:"job_id"`
	Version int64  `json:"version"`
	State   string `json:"state"`
}

// Create stores a new schedule (version 1).
func (s *Store) Create(ctx context.Context, r Record) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO schedules (id, version, job_id, definition, state, next_fire_at, created_by, created_at, updated_at, run_as)
			VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9)`, r.ID, r.JobID, string(r.Definition), r.State, nullTime(r.NextFireAt), r.CreatedBy,
			r.CreatedAt.UTC(), r.UpdatedAt.UTC(), runAs(r.RunAs)); err != nil {
			return fmt.Errorf("insert schedule: %w", store.Translate(err))
		}
		_, err := outbox.Append(ctx, tx, "schedule.created", r.ID, 1, change{ID: r.ID, JobID: r.JobID, Version: 1, State: r.State})
		return err
	})
}

// Update replaces a schedule's definition, state and next fire time if it
// is still at version r.Version; store.ErrConflict when it moved on,
// store.ErrNotFound when it is gone. It returns the new version.
func (s *Store) Update(ctx context.Context, r Record, topic string) (int64, error) {
	var version int64
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		err := tx.QueryRowContext(ctx, `UPDATE schedules SET version = version + 1, job_id = $1, definition = $2, state = $3, next_fire_at = $4, updated_at = $5,
			run_as = $8 WHERE id = $6 AND version = $7 RETURNING version`, r.JobID, string(r.Definition), r.State, nullTime(r.NextFireAt), r.UpdatedAt.UTC(),
			r.ID, r.Version, runAs(r.RunAs)).Scan(&version)
		if err == sql.ErrNoRows {
			if _, gerr := getRecord(ctx, tx, r.ID); gerr != nil {
				return gerr
			}
			return fmt.Errorf("schedule %s is no longer at version %d: %w", r.ID, r.Version, store.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("update schedule %s: %w", r.ID, err)
		}
		_, err = outbox.Append(ctx, tx, topic, r.ID, version, change{ID: r.ID, JobID: r.JobID, Version: version, State: r.State})
		return err
	})
	return version, err
}

// Delete removes a schedule (its fire history stays).
func (s *Store) Delete(ctx context.Context, id string) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		r, err := getRecord(ctx, tx, id)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM schedules WHERE id = $1`, id); err != nil {
			return fmt.Errorf("delete schedule %s: %w", id, err)
		}
		_, err = outbox.Append(ctx, tx, "schedule.deleted", id, r.Version+1, change{ID: id, JobID: r.JobID, Version: r.Version})
		return err
	})
}

const columns = `SELECT id, version, job_id, definition, state, next_fire_at, last_fire_at, created_by, created_at, updated_at, run_as FROM schedules`

func scan(row interface{ Scan(...any) error }) (Record, error) {
	var r Record
	var def, as string
	var next, last sql.NullTime
	if err := row.Scan(&r.ID, &r.Version, &r.JobID, &def, &r.State, &next, &last, &r.CreatedBy, &r.CreatedAt, &r.UpdatedAt, &as); err != nil {
		return Record{}, store.Translate(err)
	}
	r.RunAs = []byte(as)
	r.Definition = []byte(def)
	r.NextFireAt, r.LastFireAt = timePtr(next), timePtr(last)
	r.CreatedAt, r.UpdatedAt = r.CreatedAt.UTC(), r.UpdatedAt.UTC()
	return r, nil
}

func getRecord(ctx context.Context, q store.Querier, id string) (Record, error) {
	r, err := scan(q.QueryRowContext(ctx, columns+` WHERE id = $1`, id))
	if err != nil {
		return Record{}, fmt.Errorf("schedule %s: %w", id, err)
	}
	return r, nil
}

// Get returns one schedule; store.ErrNotFound when there is none.
func (s *Store) Get(ctx context.Context, id string) (Record, error) {
	return getRecord(ctx, s.db, id)
}

// List returns schedules, of one job and in one state when those are set,
// by creation.
func (s *Store) List(ctx context.Context, jobID, state string) ([]Record, error) {
	rows, err := s.db.QueryContext(ctx, columns+` WHERE ($1 = '' OR job_id = $1) AND ($2 = '' OR state = $2) ORDER BY created_at, id`, jobID, state)
	if err != nil {
		return nil, fmt.Errorf("list schedules: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		r, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func runAs(raw []byte) string {
	if len(raw) == 0 {
		return "[]"
	}
	return string(raw)
}

func timePtr(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	v := t.Time.UTC()
	return &v
}

func nullTime(t *time.Time) sql.NullTime {
	if t == nil {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: t.UTC(), Valid: true}
}
