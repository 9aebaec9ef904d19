package registry

import (
	"context"
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

// Migrations returns the agents schema migrations for store.DB.Migrate.
func Migrations() fs.FS { return store.MustSub(migrationsDir, "migrations") }

// Schema is the name of the agent registry's schema.
const Schema = "agents"

// ErrTokenUnusable means a join token is unknown, expired or used up.
var ErrTokenUnusable = errors.New("join token is unknown, expired or used up")

// AgentRecord is an enrolled agent.
type AgentRecord struct {
	ID             string
	Name           string
	Labels         map[string]string
	Hostname       string
	OS             string
	Arch           string
	AgentVersion   string
	CredentialHash string
	EnrolledAt     time.Time
	LastSeenAt     time.Time
	Revoked        bool
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
}

// Store keeps agents and join tokens in the agents schema.
type Store struct {
	db *store.DB
}

// NewStore wraps a migrated agents database.
func NewStore(db *store.DB) *Store { return &Store{db: db} }

// TokenCreate stores a join token.
func (s *Store) TokenCreate(ctx context.Context, t TokenRecord) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO join_tokens (id, token_hash, description, max_uses, uses, created_at, expires_at)
		VALUES ($1, $2, $3, $4, 0, $5, $6)`, t.ID, t.TokenHash, t.Description, t.MaxUses, t.CreatedAt.UTC(), t.ExpiresAt.UTC())
	if err != nil {
		return fmt.Errorf("insert join token: %w", store.Translate(err))
	}
	return nil
}

// AgentEnroll spends one use of the join token whose hash is tokenHash and
// stores the agent, in one transaction. ErrTokenUnusable when the token
// cannot be used at now.
func (s *Store) AgentEnroll(ctx context.Context, tokenHash string, a AgentRecord, now time.Time) error {
	labels, err := json.Marshal(a.Labels)
	if err != nil {
		return fmt.Errorf("encode labels: %w", err)
	}
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE join_tokens SET uses = uses + 1
			WHERE token_hash = $1 AND expires_at > $2 AND (max_uses = 0 OR uses < max_uses)`, tokenHash, now.UTC())
		if err != nil {
			return fmt.Errorf("spend join token: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return ErrTokenUnusable
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO agents (id, name, labels, hostname, os, arch, agent_version, credential_hash, enrolled_at, last_seen_at, revoked)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, FALSE)`,
			a.ID, a.Name, string(labels), a.Hostname, a.OS, a.Arch, a.AgentVersion, a.CredentialHash, a.EnrolledAt.UTC(), a.LastSeenAt.UTC()); err != nil {
			return fmt.Errorf("insert agent %s: %w", a.Name, store.Translate(err))
		}
		_, err = outbox.Append(ctx, tx, "agent.enrolled", a.ID, 1, map[string]any{"agent_id": a.ID, "name": a.Name, "labels": a.Labels})
		return err
	})
}

// AgentUpdateFacts replaces an agent's labels and host facts.
func (s *Store) AgentUpdateFacts(ctx context.Context, a AgentRecord) error {
	labels, err := json.Marshal(a.Labels)
	if err != nil {
		return fmt.Errorf("encode labels: %w", err)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE agents SET name = $1, labels = $2, hostname = $3, os = $4, arch = $5, agent_version = $6, last_seen_at = $7
		WHERE id = $8`, a.Name, string(labels), a.Hostname, a.OS, a.Arch, a.AgentVersion, a.LastSeenAt.UTC(), a.ID)
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

const agentColumns = `SELECT id, name, labels, hostname, os, arch, agent_version, credential_hash, enrolled_at, last_seen_at, revoked FROM agents`

type scanner interface{ Scan(dest ...any) error }

func scanAgent(row scanner) (AgentRecord, error) {
	var a AgentRecord
	var labels string
	if err := row.Scan(&a.ID, &a.Name, &labels, &a.Hostname, &a.OS, &a.Arch, &a.AgentVersion, &a.CredentialHash, &a.EnrolledAt, &a.LastSeenAt, &a.Revoked); err != nil {
		return AgentRecord{}, store.Translate(err)
	}
	if err := json.Unmarshal([]byte(labels), &a.Labels); err != nil {
		return AgentRecord{}, fmt.Errorf("decode labels of agent %s: %w", a.ID, err)
	}
	a.EnrolledAt, a.LastSeenAt = a.EnrolledAt.UTC(), a.LastSeenAt.UTC()
	return a, nil
}
