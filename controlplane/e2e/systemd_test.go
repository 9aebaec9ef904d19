package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
)

// TestSystemdUnits runs `systemd-analyze verify` on the units we ship:
// the agent's, as `opsconductor-agent install` writes it (the same code
// install.sh runs), and the control plane's in deploy/systemd, each with
// the built binary at the path its ExecStart names. It must also refuse
// a unit whose binary is missing, or the check proves nothing.
//
// systemd-analyze verify --root=DIR needs systemd's own units under DIR
// (sysinit.target and the rest): they are copied from this machine.
func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze is needed (apt-get install systemd): ", err)
	}
	bins := cptest.Binaries(t)
	root := t.TempDir()
	copyTree(t, "/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/system"))

	// The agent: installed under root by the agent itself (no systemctl on
	// PATH for it to call, so it only writes the files).
	cmd := exec.Command(filepath.Join(bins, "opsconductor-agent"), "install", "--root", root,
		"--server", "https://cp.example.internal", "--token", "ocj_example")
	cmd.Env = append(os.Environ(), "PATH=/nonexistent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("opsconductor-agent install: %v\n%s", err, out)
	}

	// The control plane: its units copied in, its binary at /usr/local/bin.
	units, err := filepath.Glob(filepath.Join(cptest.ModuleRoot(), "deploy/systemd/*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no units in deploy/systemd: %v", err)
	}
	names := []string{"opsconductor-agent.service"}
	for _, u := range units {
		raw, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(root, "etc/systemd/system", filepath.Base(u)), raw, 0o644)
		name := filepath.Base(u)
		if strings.HasSuffix(name, "@.service") {
			name = strings.TrimSuffix(name, "@.service") + "@jobs.service" // verify an instance of a template
		}
		names = append(names, name)
	}
	raw, err := os.ReadFile(filepath.Join(bins, "opsconductor"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "usr/local/bin/opsconductor"), raw, 0o755)

	verify := func(names ...string) (string, error) {
		out, err := exec.Command("systemd-analyze", append([]string{"verify", "--root=" + root}, names...)...).CombinedOutput()
		return string(out), err
	}
	for _, name := range names {
		if out, err := verify(name); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}

	// Without the agent binary the same check fails, naming it.
	if err := os.Remove(filepath.Join(root, "usr/local/bin/opsconductor-agent")); err != nil {
		t.Fatal(err)
	}
	if out, err := verify("opsconductor-agent.service"); err == nil || !strings.Contains(out, "/usr/local/bin/opsconductor-agent") {
		t.Fatalf("verify accepted a unit whose binary is missing: %v\n%s", err, out)
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("mkdir", "-p", filepath.Dir(to)).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v %s", from, err, bytes.TrimSpace(out))
	}
}

func writeFile(t *testing.T, path string, body []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, body, mode); err != nil {
		t.Fatal(err)
	}
}
