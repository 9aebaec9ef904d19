package job

import (
	"context"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Migrations holds the jobs schema, one directory per dialect.
//
//go:embed migrations
var migrationsDir embed.FS

// Migrations returns the jobs schema migrations for store.DB.Migrate.
func Migrations() fs.FS { return store.MustSub(migrationsDir, "migrations") }

// Schema is the name of the jobs service's schema.
const Schema = "jobs"

// ErrStale means an update named a version that is no longer current.
var ErrStale = errors.New("stale job version")

// Record is a stored job version. Spec is the job definition encoded by the
// service (protobuf JSON); Name and Labels are copied out for indexing.
type Record struct {
	ID        string
	Name      string
	Version   int64
	Labels    map[string]string
	Spec      []byte
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Store keeps jobs and every version of them in the jobs schema.
type Store struct {
	db *store.DB
}

// NewStore wraps a migrated jobs database.
func NewStore(db *store.DB) *Store { return &Store{db: db} }

// Ping checks the database.
func (s *Store) Ping(ctx context.Context) error { return s.db.Ping(ctx) }

// JobCreate stores rec as version 1. A taken name is store.ErrConflict.
func (s *Store) JobCreate(ctx context.Context, rec Record) (Record, error) {
	rec.Version = 1
	now := time.Now().UTC().Truncate(time.Microsecond)
	rec.CreatedAt, rec.UpdatedAt = now, now
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO jobs (id, name, version, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)`,
			rec.ID, rec.Name, rec.Version, string(rec.Spec), rec.CreatedAt, rec.UpdatedAt); err != nil {
			return fmt.Errorf("insert job %s: %w", rec.Name, store.Translate(err))
		}
		if err := writeVersionAndLabels(ctx, tx, rec); err != nil {
			return err
		}
		_, err := outbox.Append(ctx, tx, "job.created", rec.ID, rec.Version, jobEvent{JobID: rec.ID, Name: rec.Name, Version: rec.Version})
		return err
	})
	return rec, err
}

type jobEvent struct {
	JobID   string `json:"job_id"`
	Name    string `json:"name"`
	Version int64  `json:"version"`
}

func writeVersionAndLabels(ctx context.Context, tx *store.Tx, rec Record) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO job_versions (job_id, version, spec, created_at) VALUES ($1, $2, $3, $4)`,
		rec.ID, rec.Version, string(rec.Spec), rec.UpdatedAt); err != nil {
		return fmt.Errorf("insert job %s version %d: %w", rec.ID, rec.Version, store.Translate(err))
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM job_labels WHERE job_id = $1`, rec.ID); err != nil {
		return fmt.Errorf("clear labels of job %s: %w", rec.ID, err)
	}
	for k, v := range rec.Labels {
		if _, err := tx.ExecContext(ctx, `INSERT INTO job_labels (job_id, key, value) VALUES ($1, $2, $3)`, rec.ID, k, v); err != nil {
			return fmt.Errorf("insert label of job %s: %w", rec.ID, err)
		}
	}
	return nil
}

// JobUpdate stores rec as the version after expectedVersion. It returns
// store.ErrNotFound for an unknown job, ErrStale when expectedVersion is
// not current, store.ErrConflict when the new name is taken.
func (s *Store) JobUpdate(ctx context.Context, rec Record, expectedVersion int64) (Record, error) {
	rec.Version = expectedVersion + 1
	rec.UpdatedAt = time.Now().UTC().Truncate(time.Microsecond)
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		err := tx.QueryRowContext(ctx, `UPDATE jobs SET name = $1, version = $2, spec = $3, updated_at = $4
			WHERE id = $5 AND version = $6 RETURNING created_at`,
			rec.Name, rec.Version, string(rec.Spec), rec.UpdatedAt, rec.ID, expectedVersion).Scan(&rec.CreatedAt)
		if err != nil {
			err = store.Translate(err)
			if !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("update job %s: %w", rec.ID, err)
			}
			var current int64
			if err := tx.QueryRowContext(ctx, `SELECT version FROM jobs WHERE id = $1`, rec.ID).Scan(&current); err != nil {
				return fmt.Errorf("job %s: %w", rec.ID, store.Translate(err))
			}
			return fmt.Errorf("job %s is at version %d, not %d: %w", rec.ID, current, expectedVersion, ErrStale)
		}
		if err := writeVersionAndLabels(ctx, tx, rec); err != nil {
			return err
		}
		_, err = outbox.Append(ctx, tx, "job.updated", rec.ID, rec.Version, jobEvent{JobID: rec.ID, Name: rec.Name, Version: rec.Version})
		return err
	})
	return rec, err
}

// JobGetByID returns the current version of a job.
func (s *Store) JobGetByID(ctx context.Context, id string) (Record, error) {
	rec, err := scanJob(s.db.QueryRowContext(ctx, `SELECT id, name, version, spec, created_at, updated_at FROM jobs WHERE id = $1`, id))
	if err != nil {
		return Record{}, fmt.Errorf("get job %s: %w", id, err)
	}
	return rec, s.loadLabels(ctx, []*Record{&rec})
}

// JobGetVersion returns one stored version of a job.
func (s *Store) JobGetVersion(ctx context.Context, id string, version int64) (Record, error) {
	rec, err := scanJob(s.db.QueryRowContext(ctx, `SELECT j.id, j.name, v.version, v.spec, j.created_at, v.created_at
		FROM job_versions v JOIN jobs j ON j.id = v.job_id WHERE v.job_id = $1 AND v.version = $2`, id, version))
	if err != nil {
		return Record{}, fmt.Errorf("get job %s version %d: %w", id, version, err)
	}
	return rec, nil
}

// JobListVersions returns every version of a job, newest first.
func (s *Store) JobListVersions(ctx context.Context, id string) ([]Record, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT j.id, j.name, v.version, v.spec, j.created_at, v.created_at
		FROM job_versions v JOIN jobs j ON j.id = v.job_id WHERE v.job_id = $1 ORDER BY v.version DESC`, id)
	if err != nil {
		return nil, fmt.Errorf("list versions of job %s: %w", id, err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		rec, err := scanJob(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("job %s: %w", id, store.ErrNotFound)
	}
	return out, nil
}

// JobDelete removes a job and its versions.
func (s *Store) JobDelete(ctx context.Context, id string) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		var name string
		var version int64
		if err := tx.QueryRowContext(ctx, `DELETE FROM jobs WHERE id = $1 RETURNING name, version`, id).Scan(&name, &version); err != nil {
			return fmt.Errorf("delete job %s: %w", id, store.Translate(err))
		}
		// SQLite enforces the cascade only with foreign keys on; delete
		// explicitly so both engines behave the same.
		if _, err := tx.ExecContext(ctx, `DELETE FROM job_versions WHERE job_id = $1`, id); err != nil {
			return fmt.Errorf("delete versions of job %s: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM job_labels WHERE job_id = $1`, id); err != nil {
			return fmt.Errorf("delete labels of job %s: %w", id, err)
		}
		_, err := outbox.Append(ctx, tx, "job.deleted", id, version+1, jobEvent{JobID: id, Name: name, Version: version})
		return err
	})
}

// ListParams filter and page JobList.
type ListParams struct {
	Selector   label.Selector
	NamePrefix string
	Limit      int    // page size; required
	PageToken  string // from the previous page's NextPageToken
}

// JobList returns a page of jobs in creation order and the token of the
// next page ("" on the last page).
func (s *Store) JobList(ctx context.Context, p ListParams) ([]Record, string, error) {
	after := ""
	if p.PageToken != "" {
		raw, err := base64.RawURLEncoding.DecodeString(p.PageToken)
		if err != nil {
			return nil, "", ErrBadPageToken
		}
		after = string(raw)
	}
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	where = append(where, "id > "+arg(after))
	if p.NamePrefix != "" {
		where = append(where, fmt.Sprintf("substr(name, 1, %s) = %s", arg(len(p.NamePrefix)), arg(p.NamePrefix)))
	}
	for _, r := range p.Selector {
		where = append(where, fmt.Sprintf("EXISTS (SELECT 1 FROM job_labels l WHERE l.job_id = jobs.id AND l.key = %s AND l.value = %s)", arg(r.Key), arg(r.Value)))
	}
	q := `SELECT id, name, version, spec, created_at, updated_at FROM jobs WHERE ` + strings.Join(where, " AND ") +
		` ORDER BY id LIMIT ` + arg(p.Limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list jobs: %w", err)
	}
	var out []*Record
	for rows.Next() {
		rec, err := scanJob(rows)
		if err != nil {
			rows.Close()
			return nil, "", err
		}
		out = append(out, &rec)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list jobs: %w", err)
	}
	next := ""
	if len(out) > p.Limit {
		out = out[:p.Limit]
		next = base64.RawURLEncoding.EncodeToString([]byte(out[len(out)-1].ID))
	}
	if err := s.loadLabels(ctx, out); err != nil {
		return nil, "", err
	}
	recs := make([]Record, len(out))
	for i, r := range out {
		recs[i] = *r
	}
	return recs, next, nil
}

// ErrBadPageToken means a page token was not one JobList produced.
var ErrBadPageToken = errors.New("malformed page token")

func (s *Store) loadLabels(ctx context.Context, recs []*Record) error {
	for _, rec := range recs {
		rows, err := s.db.QueryContext(ctx, `SELECT key, value FROM job_labels WHERE job_id = $1`, rec.ID)
		if err != nil {
			return fmt.Errorf("read labels of job %s: %w", rec.ID, err)
		}
		rec.Labels = map[string]string{}
		for rows.Next() {
			var k, v string
			if err := rows.Scan(&k, &v); err != nil {
				rows.Close()
				return err
			}
			rec.Labels[k] = v
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func scanJob(row scanner) (Record, error) {
	var rec Record
	var spec string
	if err := row.Scan(&rec.ID, &rec.Name, &rec.Version, &spec, &rec.CreatedAt, &rec.UpdatedAt); err != nil {
		return Record{}, store.Translate(err)
	}
	rec.Spec = []byte(spec)
	rec.CreatedAt, rec.UpdatedAt = rec.CreatedAt.UTC(), rec.UpdatedAt.UTC()
	return rec, nil
}
