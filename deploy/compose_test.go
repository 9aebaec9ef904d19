package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestComposeFile: docker-compose (Debian's package) accepts the lab's
// compose files (one control plane with two replicas, and the split
// services), and gen-certs.sh makes the files they mount, in a copy of
// the folder (the real one keeps its certs out of git). The gateway's
// configuration runs for real in the main module's e2e tests
// (TestComposeGateway).
func TestComposeFile(t *testing.T) {
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatal("docker-compose is needed (apt-get install docker-compose): ", err)
	}
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-a", "compose/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy deploy/compose: %v %s", err, out)
	}
	_ = os.RemoveAll(filepath.Join(dir, "certs"))
	if out, err := exec.Command("sh", filepath.Join(dir, "gen-certs.sh")).CombinedOutput(); err != nil {
		t.Fatalf("gen-certs.sh: %v\n%s", err, out)
	}
	for _, f := range []string{"ca.crt", "tls.crt", "tls.key", "secret-key", "service-token"} {
		if _, err := os.Stat(filepath.Join(dir, "certs", f)); err != nil {
			t.Fatalf("gen-certs.sh made no %s: %v", f, err)
		}
	}
	// The gateway's certificate names the host agents reach it by.
	out, err := exec.Command("openssl", "x509", "-in", filepath.Join(dir, "certs/tls.crt"), "-noout", "-ext", "subjectAltName").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "DNS:gateway") {
		t.Fatalf("gateway certificate SANs: %v %s", err, out)
	}

	for file, services := range map[string][]string{
		"docker-compose.yml":       {"cp1", "cp2", "gateway", "agent1", "agent2", "postgres", "redis", "migrate", "bootstrap"},
		"split/docker-compose.yml": {"jobs", "executions", "scheduling", "audit", "router", "gateway", "agent1", "postgres", "redis", "bootstrap"},
	} {
		path := filepath.Join(dir, file)
		cmd := exec.Command(compose, "--project-directory", filepath.Dir(path), "-f", path, "config")
		cmd.Env = append(os.Environ(), "COMPOSE_PROJECT_NAME=opsconductor-test")
		rendered, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("docker-compose config %s: %v\n%s", file, err, rendered)
		}
		for _, want := range services {
			if !strings.Contains(string(rendered), "\n  "+want+":\n") {
				t.Errorf("%s: the rendered file has no service %s", file, want)
			}
		}
	}
	// Split mode: the four services on the seed's ports.
	raw, err := os.ReadFile(filepath.Join(dir, "split/docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`OPSCONDUCTOR_ADDR: ":8001"`, `OPSCONDUCTOR_ADDR: ":8002"`, `OPSCONDUCTOR_ADDR: ":8003"`, `OPSCONDUCTOR_ADDR: ":8004"`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("split/docker-compose.yml lacks %s", want)
		}
	}

	// And refuses a broken one, or the check above proves nothing.
	broken := filepath.Join(dir, "broken.yml")
	if err := os.WriteFile(broken, []byte("services:\n  x:\n    image: a\n    depends_on:\n      missing:\n        condition: service_healthy\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(compose, "-f", broken, "config", "-q").CombinedOutput(); err == nil {
		t.Fatalf("docker-compose config accepted a service depending on a missing one:\n%s", out)
	}
}
