package state

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFileStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	fs := FileStore{Dir: dir}
	if _, err := fs.Load(); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("load before save: %v, want ErrNoIdentity", err)
	}
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Identity{AgentID: "a1", PrivateKey: key, KeyCreatedAt: time.Now().UTC().Truncate(time.Second), ServerURL: "http://cp"}
	if err := fs.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := fs.Load()
	if err != nil || got.AgentID != want.AgentID || !bytes.Equal(got.PrivateKey, want.PrivateKey) || !got.KeyCreatedAt.Equal(want.KeyCreatedAt) {
		t.Fatalf("load = %+v, %v", got, err)
	}
	info, err := os.Stat(filepath.Join(dir, "identity.json"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %v, want 0600", info.Mode().Perm())
	}
	if err := os.WriteFile(filepath.Join(dir, "identity.json"), []byte(`{"agent_id":""}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Load(); err == nil {
		t.Fatal("incomplete identity accepted")
	}
}

// TestJournalKeepsGenerationsApart: a task leased again to the same agent
// has its own entry; forgetting the old attempt keeps the new one.
func TestJournalKeepsGenerationsApart(t *testing.T) {
	j := Journal{Dir: t.TempDir()}
	for _, gen := range []int64{1, 2} {
		if err := j.Save(JournalEntry{TaskID: "t1", LeaseGeneration: gen, Running: 0}); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Remove("t1", 1); err != nil {
		t.Fatal(err)
	}
	left, err := j.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].LeaseGeneration != 2 {
		t.Fatalf("journal after forgetting generation 1 = %+v, want only generation 2", left)
	}
}
