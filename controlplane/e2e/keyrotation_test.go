package e2e

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/opsconductor/opsconductor/agent/identity"
	"github.com/opsconductor/opsconductor/agent/state"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1/agentv1connect"
)

// TestAgentKeyRotation: an agent rotates an old key at start and keeps
// working; and an agent whose rotation reply was lost (the control plane
// holds the new key, the agent only its pending copy) adopts the pending
// key instead of being locked out, since only the current key may rotate.
func TestAgentKeyRotation(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)})
	dir := t.TempDir()
	files := state.FileStore{Dir: dir}
	agent := s.StartAgent(t, "rot-1", "role=rot", "--state-dir", dir)
	s.WaitAgents(t, 1)
	agent.Stop(t)
	first, err := files.Load()
	if err != nil {
		t.Fatal(err)
	}
	j := createJob(t, s, map[string]any{"name": "rot", "targets": []map[string]any{{"selector": "role=rot"}},
		"actions": []map[string]any{{"command": "echo ok"}}})
	runs := func(why string) {
		t.Helper()
		res := waitFinished(t, s, execute(t, s, j.ID).ID, 30*time.Second)
		if res.Execution.Status != "succeeded" {
			t.Fatalf("%s: execution = %+v", why, res)
		}
	}

	// 1. Rotation at start (every key is older than 1ns).
	agent = s.StartAgent(t, "rot-1", "role=rot", "--state-dir", dir, "--key-max-age", "1ns")
	runs("after a rotation")
	agent.Stop(t)
	second, err := files.Load()
	if err != nil {
		t.Fatal(err)
	}
	if string(second.PrivateKey) == string(first.PrivateKey) || len(second.PendingKey) != 0 {
		t.Fatal("the agent did not rotate its key (or left it pending)")
	}

	// 2. A rotation whose reply was lost: register a key as the agent
	// would, but leave it pending on disk.
	pending, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	client := agentv1connect.NewAgentServiceClient(s.Client, s.URL,
		connect.WithInterceptors(identity.NewSigner(second.AgentID, second.PrivateKey).Interceptor()))
	if _, err := client.RotateKey(context.Background(), connect.NewRequest(&agentv1.RotateKeyRequest{PublicKey: pending.Public().(ed25519.PublicKey)})); err != nil {
		t.Fatal(err)
	}
	second.PendingKey = pending
	if err := files.Save(second); err != nil {
		t.Fatal(err)
	}
	agent = s.StartAgent(t, "rot-1", "role=rot", "--state-dir", dir, "--key-max-age", "0")
	runs("after adopting the pending key")
	agent.Stop(t)
	raw, err := os.ReadFile(filepath.Join(dir, "identity.json"))
	if err != nil {
		t.Fatal(err)
	}
	var third state.Identity
	if err := json.Unmarshal(raw, &third); err != nil {
		t.Fatal(err)
	}
	if string(third.PrivateKey) != string(pending) || len(third.PendingKey) != 0 {
		t.Fatal("the agent did not adopt the key the control plane holds")
	}
}
