// Package state keeps what an agent must remember across restarts: its
// identity, the agent id it got at enrollment and the private key it made
// for itself, in a file only the agent's user can read. The control plane
// holds only the public key.
package state

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Identity is who the agent is to one control plane.
type Identity struct {
	AgentID string `json:"agent_id"`
	// PrivateKey is the Ed25519 private key (seed and public half).
	PrivateKey   []byte    `json:"private_key"`
	KeyCreatedAt time.Time `json:"key_created_at"`
	ServerURL    string    `json:"server_url"`
	// PendingKey is a key being rotated to: saved before the control plane
	// is told, so a crash or a lost reply cannot leave the agent with a
	// key the control plane no longer takes.
	PendingKey []byte `json:"pending_key,omitempty"`
}

// ErrNoIdentity means the agent has not enrolled yet.
var ErrNoIdentity = errors.New("agent has not enrolled yet")

// Store loads and saves the identity. Implementations must save atomically.
type Store interface {
	Load() (Identity, error) // ErrNoIdentity before the first Save
	Save(Identity) error
}

// FileStore keeps the identity in DIR/identity.json, mode 0600.
type FileStore struct {
	Dir string
}

func (f FileStore) path() string { return filepath.Join(f.Dir, "identity.json") }

// Load reads the identity.
func (f FileStore) Load() (Identity, error) {
	b, err := os.ReadFile(f.path())
	if errors.Is(err, os.ErrNotExist) {
		return Identity{}, ErrNoIdentity
	}
	if err != nil {
		return Identity{}, fmt.Errorf("read agent identity: %w", err)
	}
	var id Identity
	if err := json.Unmarshal(b, &id); err != nil {
		return Identity{}, fmt.Errorf("decode agent identity %s: %w", f.path(), err)
	}
	if id.AgentID == "" || len(id.PrivateKey) != ed25519.PrivateKeySize {
		return Identity{}, fmt.Errorf("agent identity %s is incomplete; remove it to enroll again", f.path())
	}
	return id, nil
}

// Save writes the identity atomically (write to a temporary file, rename).
func (f FileStore) Save(id Identity) error {
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(f.Dir, ".identity-*.json")
	if err != nil {
		return fmt.Errorf("save agent identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("save agent identity: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), f.path())
}
