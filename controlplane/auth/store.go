package auth

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

//go:embed migrations
var migrationsDir embed.FS

// Migrations returns the auth schema migrations for store.DB.Migrate.
func Migrations() fs.FS { return store.MustSub(migrationsDir, "migrations") }

// Schema is the name of the auth schema.
const Schema = "auth"

// TokenRecord is a stored API token; only the hash of its secret is kept.
type TokenRecord struct {
	ID        string
	Name      string
	Principal string
	// User, when set, is the user the token acts as: its roles are the
	// user's, whatever Roles says, and it dies with the user.
	User       string
	Roles      []string
	TokenHash  string
	CreatedAt  time.Time
	ExpiresAt  *time.Time
	RevokedAt  *time.Time
	LastUsedAt *time.Time
}

// Store keeps API tokens in the auth schema.
type Store struct {
	db *store.DB
}

// NewStore wraps a migrated auth database.
func NewStore(db *store.DB) *Store { return &Store{db: db} }

// TokenCreate stores a token.
func (s *Store) TokenCreate(ctx context.Context, t TokenRecord) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		return insertToken(ctx, tx, t)
	})
}

func insertToken(ctx context.Context, tx *store.Tx, t TokenRecord) error {
	roles, err := json.Marshal(t.Roles)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO api_tokens (id, name, principal, user_name, roles, token_hash, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, t.ID, t.Name, t.Principal, t.User, string(roles), t.TokenHash, t.CreatedAt.UTC(), nullTime(t.ExpiresAt)); err != nil {
		return fmt.Errorf("insert api token %s: %w", t.Name, store.Translate(err))
	}
	_, err = outbox.Append(ctx, tx, "token.created", t.ID, 1, map[string]any{"token_id": t.ID, "name": t.Name, "roles": t.Roles})
	return err
}

// TokenBootstrap stores t as the bootstrap admin token unless one was made
// before. It reports whether t was stored.
func (s *Store) TokenBootstrap(ctx context.Context, t TokenRecord) (bool, error) {
	created := false
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO bootstrap (id, token_id, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING`,
			t.ID, t.CreatedAt.UTC())
		if err != nil {
			return fmt.Errorf("record bootstrap: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return nil
		}
		created = true
		return insertToken(ctx, tx, t)
	})
	return created, err
}

const tokenColumns = `SELECT id, name, principal, user_name, roles, token_hash, created_at, expires_at, revoked_at, last_used_at FROM api_tokens`

func scanToken(row interface{ Scan(...any) error }) (TokenRecord, error) {
	var t TokenRecord
	var roles string
	var expires, revoked, used sql.NullTime
	if err := row.Scan(&t.ID, &t.Name, &t.Principal, &t.User, &roles, &t.TokenHash, &t.CreatedAt, &expires, &revoked, &used); err != nil {
		return TokenRecord{}, store.Translate(err)
	}
	if err := json.Unmarshal([]byte(roles), &t.Roles); err != nil {
		return TokenRecord{}, fmt.Errorf("decode roles of token %s: %w", t.ID, err)
	}
	t.CreatedAt = t.CreatedAt.UTC()
	t.ExpiresAt, t.RevokedAt, t.LastUsedAt = timePtr(expires), timePtr(revoked), timePtr(used)
	return t, nil
}

// TokenGetByHash finds a token by the hash of its secret.
func (s *Store) TokenGetByHash(ctx context.Context, hash string) (TokenRecord, error) {
	t, err := scanToken(s.db.QueryRowContext(ctx, tokenColumns+` WHERE token_hash = $1`, hash))
	if err != nil {
		return TokenRecord{}, fmt.Errorf("find api token: %w", err)
	}
	return t, nil
}

// TokenList returns every token, newest first.
func (s *Store) TokenList(ctx context.Context) ([]TokenRecord, error) {
	rows, err := s.db.QueryContext(ctx, tokenColumns+` ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("list api tokens: %w", err)
	}
	defer rows.Close()
	var out []TokenRecord
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// TokenRevoke marks a token revoked at now. Revoking twice is not an error.
func (s *Store) TokenRevoke(ctx context.Context, id string, now time.Time) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		var name string
		if err := tx.QueryRowContext(ctx, `SELECT name FROM api_tokens WHERE id = $1`, id).Scan(&name); err != nil {
			return fmt.Errorf("revoke api token %s: %w", id, store.Translate(err))
		}
		if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL`, now.UTC(), id); err != nil {
			return fmt.Errorf("revoke api token %s: %w", id, err)
		}
		_, err := outbox.Append(ctx, tx, "token.revoked", id, 2, map[string]any{"token_id": id, "name": name})
		return err
	})
}

// TokenTouch records a use, at most once a minute per token.
func (s *Store) TokenTouch(ctx context.Context, id string, now time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)`,
		now.UTC(), id, now.Add(-time.Minute).UTC())
	return err
}

// Denied records a refused call in the outbox, for the audit trail.
func (s *Store) Denied(ctx context.Context, rec DeniedCall) error {
	return OutboxDenials{DB: s.db}.Denied(ctx, rec)
}

// OutboxDenials records refused calls in the outbox of any service's
// database: a process without the auth store (split mode) records its
// refusals in its own.
type OutboxDenials struct{ DB *store.DB }

// Denied appends rec as an audit.denied event.
func (d OutboxDenials) Denied(ctx context.Context, rec DeniedCall) error {
	return d.DB.InTx(ctx, func(tx *store.Tx) error {
		_, err := outbox.Append(ctx, tx, "audit.denied", rec.Procedure, 0, rec)
		return err
	})
}

// DeniedCall is the audit record of a refused call.
type DeniedCall struct {
	Procedure     string    `json:"procedure"`
	Principal     string    `json:"principal,omitempty"`
	Reason        string    `json:"reason"`
	Code          string    `json:"code"`
	CorrelationID string    `json:"correlation_id"`
	Peer          string    `json:"peer"`
	Time          time.Time `json:"time"`
}

// ErrRevoked, ErrExpired: the token exists but cannot be used.
var (
	ErrRevoked = errors.New("token revoked")
	ErrExpired = errors.New("token expired")
)

func timePtr(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	u := t.Time.UTC()
	return &u
}

func nullTime(t *time.Time) sql.NullTime {
	if t == nil {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: t.UTC(), Valid: true}
}
