package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
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

// TestInstallScript runs installer/install.sh, as the control plane
// serves it, against a real control plane on loopback, with --root in a
// temporary directory and a stub systemctl that records what it is asked.
// It downloads and verifies the agent, writes the configuration (0600)
// and the unit; the installed binary, started with that configuration as
// the unit would, enrolls and runs a job; a second run upgrades keeping
// the configuration and identity; a tampered binary is refused; and
// --uninstall --purge leaves no file behind.
func TestInstallScript(t *testing.T) {
	t.Parallel()
	bins := cptest.Binaries(t)
	agentBin, err := os.ReadFile(filepath.Join(bins, "opsconductor-agent"))
	if err != nil {
		t.Fatal(err)
	}
	dist := t.TempDir()
	name := "opsconductor-agent-linux-" + runtime.GOARCH
	writeDist := func(body []byte) {
		t.Helper()
		sum := sha256.Sum256(agentBin) // SHA256SUMS always names the real build
		if err := os.WriteFile(filepath.Join(dist, name), body, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dist, "SHA256SUMS"), []byte(hex.EncodeToString(sum[:])+"  "+name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeDist(agentBin)
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite), "OPSCONDUCTOR_DIST_DIR": dist})

	// The script as the server serves it.
	script := filepath.Join(t.TempDir(), "install.sh")
	out, err := exec.Command("curl", "-fsS", "-o", script, s.URL+"/install.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("GET /install.sh: %v %s", err, out)
	}
	stub := t.TempDir()
	calls := filepath.Join(stub, "calls")
	if err := os.WriteFile(filepath.Join(stub, "systemctl"), []byte("#!/bin/sh\necho \"$*\" >> \""+calls+"\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	install := func(root string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command("sh", append([]string{script, "--root", root}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+stub+":"+os.Getenv("PATH"))
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return buf.String(), code
	}

	root := t.TempDir()
	token := s.JoinToken(t)
	out2, code := install(root, "--server", s.URL, "--token", token, "--labels", "role=installed", "--name", "installed")
	if code != 0 || !strings.Contains(out2, "checksum verified") {
		t.Fatalf("install: exit %d\n%s", code, out2)
	}
	installed, err := os.ReadFile(filepath.Join(root, "usr/local/bin/opsconductor-agent"))
	if err != nil || !bytes.Equal(installed, agentBin) {
		t.Fatalf("installed binary: %d bytes (%v), want the server's build", len(installed), err)
	}
	envFile := filepath.Join(root, "etc/opsconductor-agent/agent.env")
	st, err := os.Stat(envFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config: %v %v, want mode 0600", st, err)
	}
	conf, _ := os.ReadFile(envFile)
	unit, _ := os.ReadFile(filepath.Join(root, "etc/systemd/system/opsconductor-agent.service"))
	if !strings.Contains(string(conf), "OPSCONDUCTOR_JOIN_TOKEN="+token) || !strings.Contains(string(unit), "ExecStart=/usr/local/bin/opsconductor-agent") ||
		!strings.Contains(string(unit), "NoNewPrivileges=yes") {
		t.Fatalf("config:\n%s\nunit:\n%s", conf, unit)
	}
	// Under --root only the image's systemd is touched, offline.
	enable := "--root=" + root + " enable opsconductor-agent.service\n"
	if log, _ := os.ReadFile(calls); string(log) != enable {
		t.Fatalf("systemctl calls: %q, want %q", log, enable)
	}

	// What systemd would do: start the installed binary with that
	// configuration (its state directory under --root).
	stateDir := filepath.Join(root, "var/lib/opsconductor-agent")
	cptest.Start(t, "installed agent", filepath.Join(root, "usr/local/bin/opsconductor-agent"), []string{"--env-file", envFile},
		map[string]string{"OPSCONDUCTOR_STATE_DIR": stateDir})
	s.WaitAgents(t, 1)
	j := createJob(t, s, map[string]any{"name": "on-installed", "targets": []map[string]any{{"selector": "role=installed"}},
		"actions": []map[string]any{{"command": "echo from the installed agent"}}})
	if r := waitFinished(t, s, execute(t, s, j.ID).ID, 30*time.Second); r.Execution.Status != "succeeded" {
		t.Fatalf("job on the installed agent: %+v", r)
	}
	identity, err := os.ReadFile(filepath.Join(stateDir, "identity.json"))
	if err != nil {
		t.Fatal(err)
	}

	// Upgrade: run again; configuration and identity stay.
	out2, code = install(root, "--server", s.URL)
	if code != 0 || !strings.Contains(out2, "keeping the configuration") {
		t.Fatalf("upgrade: exit %d\n%s", code, out2)
	}
	if again, _ := os.ReadFile(envFile); !bytes.Equal(again, conf) {
		t.Fatal("the upgrade rewrote the configuration")
	}
	if again, _ := os.ReadFile(filepath.Join(stateDir, "identity.json")); !bytes.Equal(again, identity) {
		t.Fatal("the upgrade changed the agent's identity")
	}
	if log, _ := os.ReadFile(calls); string(log) != enable+enable {
		t.Fatalf("systemctl calls after the upgrade: %q", log)
	}

	// A tampered binary on the server is refused; nothing is installed.
	writeDist(append(append([]byte(nil), agentBin...), 0))
	other := t.TempDir()
	out2, code = install(other, "--server", s.URL, "--token", token)
	if code == 0 || !strings.Contains(out2, "checksum mismatch") {
		t.Fatalf("tampered binary: exit %d\n%s", code, out2)
	}
	if _, err := os.Stat(filepath.Join(other, "usr/local/bin/opsconductor-agent")); err == nil {
		t.Fatal("a tampered binary was installed")
	}

	// Uninstall with --purge: no file left under the root.
	out2, code = install(root, "--uninstall", "--purge")
	if code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out2)
	}
	var left []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Fatalf("uninstall left %v", left)
	}
}
