package hostinstall

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// stubSystemctl puts a systemctl on PATH that records its arguments.
func stubSystemctl(t *testing.T) (calls func() string) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte("#!/bin/sh\necho \"$*\" >> \""+log+"\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	return func() string {
		b, _ := os.ReadFile(log)
		return string(b)
	}
}

func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, strings.TrimPrefix(p, root))
		}
		return nil
	})
	return out
}

// TestInstallUpgradeUninstall: a first install writes binary, 0600
// configuration and unit and enables the service; a re-run keeps the
// configuration (or rewrites it with Reconfigure) and restarts; a dry
// run changes nothing; uninstall --purge leaves no file.
func TestInstallUpgradeUninstall(t *testing.T) {
	calls := stubSystemctl(t)
	ctx := context.Background()
	root := t.TempDir()
	bin := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho opsconductor-agent test\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	opts := Options{Root: root, Binary: bin, Out: &out, Config: Config{Server: "https://cp.example/", JoinToken: "ocj_1", Labels: "role=web"}}

	// A dry run prints the steps and writes nothing.
	dry := opts
	dry.DryRun = true
	mustInstall(t, ctx, dry)
	if left := files(t, root); len(left) > 0 || calls() != "" {
		t.Fatalf("dry run wrote %v, called systemctl %q", left, calls())
	}
	if !strings.Contains(out.String(), "would write "+filepath.Join(root, DefaultPaths.EnvFile)) {
		t.Fatalf("dry run output:\n%s", out.String())
	}

	mustInstall(t, ctx, opts)
	env := filepath.Join(root, DefaultPaths.EnvFile)
	st, err := os.Stat(env)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("configuration: %v %v, want mode 0600", st, err)
	}
	conf, _ := os.ReadFile(env)
	for _, want := range []string{"OPSCONDUCTOR_SERVER=https://cp.example\n", "OPSCONDUCTOR_JOIN_TOKEN=ocj_1\n", "OPSCONDUCTOR_LABELS=role=web\n"} {
		if !strings.Contains(string(conf), want) {
			t.Fatalf("configuration lacks %q:\n%s", want, conf)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(root, DefaultPaths.Unit))
	if !bytes.Equal(unit, Unit(false)) || !strings.Contains(string(unit), "User="+UserName) {
		t.Fatalf("unit:\n%s", unit)
	}
	// Under --root only the image's systemd is touched, offline.
	enable := "--root=" + root + " enable " + ServiceName + "\n"
	if got := calls(); got != enable {
		t.Fatalf("systemctl calls: %q, want %q", got, enable)
	}
	if err := os.WriteFile(filepath.Join(root, DefaultPaths.StateDir, "identity.json"), []byte(`{"agent_id":"agt_1"}`), 0o600); err != nil {
		t.Fatal(err)
	}

	// Upgrade without a token: configuration and identity kept.
	up := opts
	up.Config = Config{}
	mustInstall(t, ctx, up)
	if again, _ := os.ReadFile(env); !bytes.Equal(again, conf) {
		t.Fatalf("the upgrade rewrote the configuration:\n%s", again)
	}
	if calls() != enable+enable {
		t.Fatalf("systemctl calls after the upgrade: %q", calls())
	}
	// Reconfigure rewrites it.
	re := opts
	re.Reconfigure, re.Config.Labels = true, "role=db"
	mustInstall(t, ctx, re)
	if again, _ := os.ReadFile(env); !strings.Contains(string(again), "OPSCONDUCTOR_LABELS=role=db\n") {
		t.Fatalf("--reconfigure kept the old configuration:\n%s", again)
	}

	in, err := New(Options{Root: root, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	s := in.Status(ctx)
	if !s.Installed || !s.Unit || s.Server != "https://cp.example" || s.AgentID != "agt_1" || s.Version != "opsconductor-agent test" {
		t.Fatalf("status: %+v", s)
	}

	// Uninstall keeps the identity unless purged.
	un := Options{Root: root, Out: &out}
	in, _ = New(un)
	if err := in.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if left := files(t, root); len(left) != 1 || left[0] != filepath.Join(DefaultPaths.StateDir, "identity.json") {
		t.Fatalf("uninstall without --purge left %v, want only the identity", left)
	}
	un.Purge = true
	in, _ = New(un)
	if err := in.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if left := files(t, root); len(left) > 0 {
		t.Fatalf("uninstall --purge left %v", left)
	}
}

func mustInstall(t *testing.T, ctx context.Context, opts Options) {
	t.Helper()
	in, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Install(ctx); err != nil {
		t.Fatalf("install: %v\n%s", err, opts.Out)
	}
}

// TestRerunKeepsRootAndFixesAFailedEnrollment: an upgrade that does not
// say --run-as-root keeps an agent installed to run as root so; a re-run
// with a new token before the agent ever enrolled rewrites the
// configuration (the first token may have been wrong).
func TestRerunKeepsRootAndFixesAFailedEnrollment(t *testing.T) {
	stubSystemctl(t)
	ctx := context.Background()
	root := t.TempDir()
	var out bytes.Buffer
	opts := Options{Root: root, Binary: "/bin/true", Out: &out, RunAsRoot: true, Config: Config{Server: "https://cp", JoinToken: "ocj_wrong"}}
	mustInstall(t, ctx, opts)
	opts.RunAsRoot, opts.Config.JoinToken = false, "ocj_right"
	mustInstall(t, ctx, opts)
	unit, _ := os.ReadFile(filepath.Join(root, DefaultPaths.Unit))
	if strings.Contains(string(unit), "User=") {
		t.Fatalf("an upgrade without --run-as-root dropped root:\n%s", unit)
	}
	conf, _ := os.ReadFile(filepath.Join(root, DefaultPaths.EnvFile))
	if !strings.Contains(string(conf), "OPSCONDUCTOR_JOIN_TOKEN=ocj_right\n") {
		t.Fatalf("a re-run before enrollment kept the old token:\n%s", conf)
	}
	// Once enrolled, a re-run keeps the configuration; --reconfigure
	// without --run-as-root goes back to the agent's own user.
	if err := os.WriteFile(filepath.Join(root, DefaultPaths.StateDir, "identity.json"), []byte(`{"agent_id":"a"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.Config.JoinToken = "ocj_other"
	mustInstall(t, ctx, opts)
	if again, _ := os.ReadFile(filepath.Join(root, DefaultPaths.EnvFile)); !bytes.Equal(again, conf) {
		t.Fatalf("an upgrade of an enrolled agent rewrote its configuration:\n%s", again)
	}
	opts.Reconfigure = true
	mustInstall(t, ctx, opts)
	if unit, _ := os.ReadFile(filepath.Join(root, DefaultPaths.Unit)); !strings.Contains(string(unit), "User="+UserName) {
		t.Fatalf("--reconfigure without --run-as-root:\n%s", unit)
	}
}

// TestInstallRefusesBadInput names the field at fault.
func TestInstallRefusesBadInput(t *testing.T) {
	stubSystemctl(t)
	root := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no server", Config{JoinToken: "t"}, "--server is required"},
		{"no token", Config{Server: "https://cp"}, "--token is required"},
		{"not a URL", Config{Server: "cp.example", JoinToken: "t"}, "--server"},
		{"line break", Config{Server: "https://cp", JoinToken: "t", Labels: "a=b\nOPSCONDUCTOR_SERVER=evil"}, "--labels"},
		{"short pin", Config{Server: "https://cp", JoinToken: "t", Fingerprint: "abcd"}, "--server-fingerprint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			in, err := New(Options{Root: root, Binary: "/bin/true", Config: tc.cfg, Out: &out})
			if err == nil {
				err = in.Install(context.Background())
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %s", err, tc.want)
			}
			if left := files(t, root); len(left) > 0 {
				t.Fatalf("a refused install wrote %v", left)
			}
		})
	}
}

// TestUnitRunAsRoot: the opt-out drops the user and the read-only
// protections, and keeps the rest of the hardening.
func TestUnitRunAsRoot(t *testing.T) {
	u := string(Unit(true))
	if strings.Contains(u, "User=") || strings.Contains(u, "ProtectSystem=") || !strings.Contains(u, "NoNewPrivileges=yes") {
		t.Fatalf("run-as-root unit:\n%s", u)
	}
}
