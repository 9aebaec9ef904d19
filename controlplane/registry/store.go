package registry

import (
	"context"
	"database/sql"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

//go:embed migrations
var migrationsDir embed.FS

// Migrations returns the agents schema migrations for store.DB.Migrate.
func Migrations() fs.FS { return store.MustSub(migrationsDir, "migrations") }

// Schema is the name of the agent registry's schema.
const Schema = "agents"

// ErrTokenUnusable means a join token is unknown, expired or used up.
var ErrTokenUnusable = errors.New("join token is unknown, expired or used up")

// AgentRecord is an enrolled agent.
type AgentRecord struct {
	ID           string
	Name         string
	Labels       map[string]string // in force: the token's over the agent's own
	TokenLabels  map[string]string // from the join token; they win on every update
	Hostname     string
	OS           string
	Arch         string
	AgentVersion string
	// PublicKey verifies the agent's tokens (Ed25519). PreviousPublicKey
	// still does until PreviousKeyExpiresAt, after a rotation.
	PublicKey            []byte
	PreviousPublicKey    []byte
	PreviousKeyExpiresAt *time.Time
	EnrolledAt           time.Time
	LastSeenAt           time.Time
	Revoked              bool
	RevokedAt            *time.Time
	// State is active, draining or paused.
	State string
	// Plugins are the executors the agent reported; empty: not reported.
	Plugins []string
	// SignedWithPreviousKey is set on the record Authenticate returns when
	// the call was signed with the previous key (never stored).
	SignedWithPreviousKey bool
}

// TokenRecord is a join token; only the hash of its secret is stored.
type TokenRecord struct {
	ID          string
	TokenHash   string
	Description string
	MaxUses     int // 0: unlimited until expiry
	Uses        int
	CreatedAt   time.Time
	ExpiresAt   time.Time
	Labels      map[string]string
}

// Store keeps agents and join tokens in the agents schema.
type Store struct {
	db *store.DB
}

// NewStore wraps a migrated agents database.
func NewStore(db *store.DB) *Store { return &Store{db: db} }

// TokenCreate stores a join token.
func (s *Store) TokenCreate(ctx context.Context, t TokenRecord) error {
	labels, err := json.Marshal(nonNil(t.Labels))
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO join_tokens (id, token_hash, description, max_uses, uses, created_at, expires_at, labels)
		VALUES ($1, $2, $3, $4, 0, $5, $6, $7)`, t.ID, t.TokenHash, t.Description, t.MaxUses, t.CreatedAt.UTC(), t.ExpiresAt.UTC(), string(labels))
	if err != nil {
		return fmt.Errorf("insert join token: %w", store.Translate(err))
	}
	return nil
}

// AgentEnroll spends one use of the join token whose hash is tokenHash and
// stores the agent with the token's labels over its own, in one
// transaction. ErrTokenUnusable when the token cannot be used at now.
func (s *Store) AgentEnroll(ctx context.Context, tokenHash string, a AgentRecord, now time.Time) (AgentRecord, error) {
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		var tokenLabels string
		err := tx.QueryRowContext(ctx, `UPDATE join_tokens SET uses = uses + 1
			WHERE token_hash = $1 AND expires_at > $2 AND (max_uses = 0 OR uses < max_uses) RETURNING labels`, tokenHash, now.UTC()).Scan(&tokenLabels)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrTokenUnusable
		}
		if err != nil {
			return fmt.Errorf("spend join token: %w", err)
		}
		if err := json.Unmarshal([]byte(tokenLabels), &a.TokenLabels); err != nil {
			return fmt.Errorf("decode join token labels: %w", err)
		}
		a.Labels = MergeLabels(a.Labels, a.TokenLabels)
		labels, _ := json.Marshal(nonNil(a.Labels))
		tokLabels, _ := json.Marshal(nonNil(a.TokenLabels))
		if _, err := tx.ExecContext(ctx, `INSERT INTO agents (id, name, labels, token_labels, hostname, os, arch, agent_version, credential_hash, public_key,
			enrolled_at, last_seen_at, revoked)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', $9, $10, $11, FALSE)`,
			a.ID, a.Name, string(labels), string(tokLabels), a.Hostname, a.OS, a.Arch, a.AgentVersion, encodeKey(a.PublicKey),
			a.EnrolledAt.UTC(), a.LastSeenAt.UTC()); err != nil {
			return fmt.Errorf("insert agent %s: %w", a.Name, store.Translate(err))
		}
		_, err = outbox.Append(ctx, tx, "agent.enrolled", a.ID, 1, map[string]any{"agent_id": a.ID, "name": a.Name, "labels": a.Labels})
		return err
	})
	return a, err
}

// MergeLabels returns own with over laid on top (over wins).
func MergeLabels(own, over map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range own {
		out[k] = v
	}
	for k, v := range over {
		out[k] = v
	}
	return out
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func encodeKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

func decodeKey(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

// AgentRotateKey makes key the agent's public key; the current one keeps
// verifying until graceUntil.
func (s *Store) AgentRotateKey(ctx context.Context, id string, key []byte, graceUntil time.Time) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE agents SET previous_public_key = public_key, previous_key_expires_at = $1, public_key = $2
			WHERE id = $3 AND revoked = FALSE`, graceUntil.UTC(), encodeKey(key), id)
		if err != nil {
			return fmt.Errorf("rotate key of agent %s: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("rotate key of agent %s: %w", id, store.ErrNotFound)
		}
		_, err = outbox.Append(ctx, tx, "agent.key_rotated", id, 0, map[string]any{"agent_id": id})
		return err
	})
}

// AgentSetState sets an agent's state (active, draining, paused).
func (s *Store) AgentSetState(ctx context.Context, id, state string) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE agents SET state = $1 WHERE id = $2 AND revoked = FALSE`, state, id)
		if err != nil {
			return fmt.Errorf("set state of agent %s: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("set state of agent %s: %w", id, store.ErrNotFound)
		}
		_, err = outbox.Append(ctx, tx, "agent.state", id, 0, map[string]any{"agent_id": id, "state": state})
		return err
	})
}

// AgentRevoke marks the agent revoked. Revoking twice is not an error.
func (s *Store) AgentRevoke(ctx context.Context, id, reason string, now time.Time) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		var name string
		if err := tx.QueryRowContext(ctx, `SELECT name FROM agents WHERE id = $1`, id).Scan(&name); err != nil {
			return fmt.Errorf("revoke agent %s: %w", id, store.Translate(err))
		}
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET revoked = TRUE, revoked_at = $1 WHERE id = $2 AND revoked = FALSE`, now.UTC(), id); err != nil {
			return fmt.Errorf("revoke agent %s: %w", id, err)
		}
		_, err := outbox.Append(ctx, tx, "agent.revoked", id, 0, map[string]any{"agent_id": id, "name": name, "reason": reason})
		return err
	})
}

// AgentUpdateFacts replaces an agent's labels and host facts. The join
// token's labels stay over whatever the agent now asks for.
func (s *Store) AgentUpdateFacts(ctx context.Context, a AgentRecord) error {
	labels, err := json.Marshal(MergeLabels(a.Labels, a.TokenLabels))
	if err != nil {
		return fmt.Errorf("encode labels: %w", err)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE agents SET name = $1, labels = $2, hostname = $3, os = $4, arch = $5, agent_version = $6, last_seen_at = $7,
		plugins = $9 WHERE id = $8`, a.Name, string(labels), a.Hostname, a.OS, a.Arch, a.AgentVersion, a.LastSeenAt.UTC(), a.ID, strings.Join(a.Plugins, ","))
	if err != nil {
		return fmt.Errorf("update agent %s: %w", a.ID, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("update agent %s: %w", a.ID, store.ErrNotFound)
	}
	return nil
}

// AgentTouch records that the agent was seen at now. To spare the database
// it writes only when the stored time is older than now-granularity.
func (s *Store) AgentTouch(ctx context.Context, id string, now time.Time, granularity time.Duration) error {
	_, err := s.db.ExecContext(ctx, `UPDATE agents SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $3`,
		now.UTC(), id, now.Add(-granularity).UTC())
	if err != nil {
		return fmt.Errorf("touch agent %s: %w", id, err)
	}
	return nil
}

// AgentGet returns one agent.
func (s *Store) AgentGet(ctx context.Context, id string) (AgentRecord, error) {
	a, err := scanAgent(s.db.QueryRowContext(ctx, agentColumns+` WHERE id = $1`, id))
	if err != nil {
		return AgentRecord{}, fmt.Errorf("get agent %s: %w", id, err)
	}
	return a, nil
}

// AgentList returns every agent that is not revoked, by name.
func (s *Store) AgentList(ctx context.Context) ([]AgentRecord, error) {
	rows, err := s.db.QueryContext(ctx, agentColumns+` WHERE revoked = FALSE ORDER BY name, id`)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	defer rows.Close()
	var out []AgentRecord
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

const agentColumns = `SELECT id, name, labels, token_labels, hostname, os, arch, agent_version, public_key, previous_public_key,
	previous_key_expires_at, enrolled_at, last_seen_at, revoked, revoked_at, state, plugins FROM agents`

type scanner interface{ Scan(dest ...any) error }

func scanAgent(row scanner) (AgentRecord, error) {
	var a AgentRecord
	var labels, tokenLabels, key, prevKey, plugins string
	var prevExpires, revokedAt sql.NullTime
	if err := row.Scan(&a.ID, &a.Name, &labels, &tokenLabels, &a.Hostname, &a.OS, &a.Arch, &a.AgentVersion, &key, &prevKey,
		&prevExpires, &a.EnrolledAt, &a.LastSeenAt, &a.Revoked, &revokedAt, &a.State, &plugins); err != nil {
		return AgentRecord{}, store.Translate(err)
	}
	if plugins != "" {
		a.Plugins = strings.Split(plugins, ",")
	}
	if err := json.Unmarshal([]byte(labels), &a.Labels); err != nil {
		return AgentRecord{}, fmt.Errorf("decode labels of agent %s: %w", a.ID, err)
	}
	if err := json.Unmarshal([]byte(tokenLabels), &a.TokenLabels); err != nil {
		return AgentRecord{}, fmt.Errorf("decode token labels of agent %s: %w", a.ID, err)
	}
	var err error
	if a.PublicKey, err = decodeKey(key); err != nil {
		return AgentRecord{}, fmt.Errorf("decode key of agent %s: %w", a.ID, err)
	}
	if a.PreviousPublicKey, err = decodeKey(prevKey); err != nil {
		return AgentRecord{}, fmt.Errorf("decode previous key of agent %s: %w", a.ID, err)
	}
	if prevExpires.Valid {
		t := prevExpires.Time.UTC()
		a.PreviousKeyExpiresAt = &t
	}
	if revokedAt.Valid {
		t := revokedAt.Time.UTC()
		a.RevokedAt = &t
	}
	a.EnrolledAt, a.LastSeenAt = a.EnrolledAt.UTC(), a.LastSeenAt.UTC()
	return a, nil
}
