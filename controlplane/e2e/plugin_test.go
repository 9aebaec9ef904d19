package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestExternalPlugin: the example plugin is built, pinned by checksum,
// loaded and used by a job; the same binary under a different pin is
// refused; a plugin that panics fails only its action.
func TestExternalPlugin(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "upper"), "./plugins/examples/upper")
	build.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the example plugin: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "upper"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	pin := hex.EncodeToString(sum[:])
	wrong := strings.Repeat("0", 64)

	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite), "OPSCONDUCTOR_PLUGINS": "upper"})
	s.StartAgent(t, "pinned", "role=pinned", "--plugin-dir", dir, "--plugin", "upper="+pin)
	s.StartAgent(t, "mispinned", "role=mispinned", "--plugin-dir", dir, "--plugin", "upper="+wrong)
	s.StartAgent(t, "plain", "role=plain") // no external plugins
	s.WaitAgents(t, 3)

	j := createJob(t, s, map[string]any{"name": "shout", "targets": []map[string]any{{"selector": "role=pinned"}},
		"actions": []map[string]any{
			{"name": "crash", "plugin": "upper", "command": "boom", "spec": map[string]string{"panic": "true"}, "continueOnError": true},
			{"name": "shout", "plugin": "upper", "command": "hello plugins"},
			{"name": "shell still works", "command": "echo fine"},
		}})
	r := waitFinished(t, s, execute(t, s, j.ID).ID, 60*time.Second)
	acts := r.Results[0].Actions
	if acts[0].Status != "failed" || !strings.Contains(acts[0].Error, "plugin") {
		t.Fatalf("panicking plugin action: %+v", acts[0])
	}
	if acts[1].Status != "succeeded" || acts[1].Stdout != "HELLO PLUGINS\n" {
		t.Fatalf("plugin action after the crash: %+v", acts[1])
	}
	if acts[2].Stdout != "fine\n" || r.Execution.Status != "succeeded" {
		t.Fatalf("the agent did not live on: %+v", r)
	}

	bad := createJob(t, s, map[string]any{"name": "mispinned", "targets": []map[string]any{{"selector": "role=mispinned"}},
		"actions": []map[string]any{{"plugin": "upper", "command": "hello"}}})
	r = waitFinished(t, s, execute(t, s, bad.ID).ID, 60*time.Second)
	if a := r.Results[0].Actions[0]; a.Status != "failed" || !strings.Contains(a.Error, "does not match its pinned SHA-256") {
		t.Fatalf("mispinned plugin: %+v", a)
	}

	var refusal struct {
		Message string `json:"message"`
	}
	// Agents report their executors: a job needing a plugin an agent lacks
	// is refused up front instead of failing on it.
	plain := createJob(t, s, map[string]any{"name": "needs-upper", "targets": []map[string]any{{"selector": "role=plain"}},
		"actions": []map[string]any{{"plugin": "upper", "command": "hello"}}})
	if code := s.Do(t, "POST", "/api/v1/jobs/"+plain.ID+"/execute", map[string]any{}, &refusal); code != 400 ||
		!strings.Contains(refusal.Message, "plain") || !strings.Contains(refusal.Message, `no plugin "upper"`) {
		t.Fatalf("job needing a missing plugin: HTTP %d %q, want 400 naming the agent and the plugin", code, refusal.Message)
	}
	if code := s.Do(t, "POST", "/api/v1/jobs", map[string]any{"name": "unknown-plugin", "targets": []map[string]any{{"selector": "role=pinned"}},
		"actions": []map[string]any{{"plugin": "telnet", "command": "x"}}}, &refusal); code != 400 || !strings.Contains(refusal.Message, "upper") {
		t.Fatalf("unknown plugin: HTTP %d %q (the known list should include upper)", code, refusal.Message)
	}
}
