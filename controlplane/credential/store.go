package credential

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

//go:embed migrations
var migrationsDir embed.FS

// Migrations returns the credentials schema migrations for store.DB.Migrate.
func Migrations() fs.FS { return store.MustSub(migrationsDir, "migrations") }

// Schema is the name of the credential store's schema.
const Schema = "credentials"

// Record is a stored credential: its value only sealed.
type Record struct {
	Name        string
	Kind        string
	Description string
	Hosts       []string
	KeyID       string
	Sealed      string
	CreatedBy   string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// Store keeps credentials in the credentials schema.
type Store struct {
	db *store.DB
}

// NewStore wraps a migrated credentials database.
func NewStore(db *store.DB) *Store { return &Store{db: db} }

// event is what the outbox says of a change: never the value.
type event struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	KeyID string `json:"key_id"`
	By    string `json:"by,omitempty"`
}

// Create stores a new credential; store.ErrConflict when the name is taken.
func (s *Store) Create(ctx context.Context, r Record) error {
	hosts, err := json.Marshal(nonNil(r.Hosts))
	if err != nil {
		return err
	}
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO credentials (name, kind, description, hosts, key_id, sealed, created_by, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			r.Name, r.Kind, r.Description, string(hosts), r.KeyID, r.Sealed, r.CreatedBy, r.CreatedAt.UTC(), r.UpdatedAt.UTC()); err != nil {
			return fmt.Errorf("insert credential %s: %w", r.Name, store.Translate(err))
		}
		_, err := outbox.Append(ctx, tx, "credential.created", r.Name, 0, event{Name: r.Name, Kind: r.Kind, KeyID: r.KeyID, By: r.CreatedBy})
		return err
	})
}

// Update replaces a credential's fields (and value when sealed is set);
// store.ErrNotFound when there is none by that name.
func (s *Store) Update(ctx context.Context, r Record, by string) error {
	hosts, err := json.Marshal(nonNil(r.Hosts))
	if err != nil {
		return err
	}
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE credentials SET kind = $1, description = $2, hosts = $3, key_id = $4, sealed = $5, updated_at = $6
			WHERE name = $7`, r.Kind, r.Description, string(hosts), r.KeyID, r.Sealed, r.UpdatedAt.UTC(), r.Name)
		if err != nil {
			return fmt.Errorf("update credential %s: %w", r.Name, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("credential %s: %w", r.Name, store.ErrNotFound)
		}
		_, err = outbox.Append(ctx, tx, "credential.updated", r.Name, 0, event{Name: r.Name, Kind: r.Kind, KeyID: r.KeyID, By: by})
		return err
	})
}

// Delete removes a credential; store.ErrNotFound when there is none.
func (s *Store) Delete(ctx context.Context, name, by string) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM credentials WHERE name = $1`, name)
		if err != nil {
			return fmt.Errorf("delete credential %s: %w", name, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("credential %s: %w", name, store.ErrNotFound)
		}
		_, err = outbox.Append(ctx, tx, "credential.deleted", name, 0, event{Name: name, By: by})
		return err
	})
}

const columns = `SELECT name, kind, description, hosts, key_id, sealed, created_by, created_at, updated_at FROM credentials`

func scan(row interface{ Scan(...any) error }) (Record, error) {
	var r Record
	var hosts string
	if err := row.Scan(&r.Name, &r.Kind, &r.Description, &hosts, &r.KeyID, &r.Sealed, &r.CreatedBy, &r.CreatedAt, &r.UpdatedAt); err != nil {
		return Record{}, store.Translate(err)
	}
	if err := json.Unmarshal([]byte(hosts), &r.Hosts); err != nil {
		return Record{}, fmt.Errorf("decode hosts of credential %s: %w", r.Name, err)
	}
	r.CreatedAt, r.UpdatedAt = r.CreatedAt.UTC(), r.UpdatedAt.UTC()
	return r, nil
}

// Get returns one credential; store.ErrNotFound when there is none.
func (s *Store) Get(ctx context.Context, name string) (Record, error) {
	r, err := scan(s.db.QueryRowContext(ctx, columns+` WHERE name = $1`, name))
	if err != nil {
		return Record{}, fmt.Errorf("get credential %s: %w", name, err)
	}
	return r, nil
}

// List returns every credential by name.
func (s *Store) List(ctx context.Context) ([]Record, error) {
	rows, err := s.db.QueryContext(ctx, columns+` ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list credentials: %w", err)
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

// Reseal replaces the sealed value of a credential if it is still sealed
// as old (a concurrent update wins).
func (s *Store) Reseal(ctx context.Context, name, oldSealed, keyID, sealed string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE credentials SET key_id = $1, sealed = $2 WHERE name = $3 AND sealed = $4`, keyID, sealed, name, oldSealed)
	if err != nil {
		return false, fmt.Errorf("reseal credential %s: %w", name, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
