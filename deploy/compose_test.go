package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestComposeFile: docker-compose (Debian's package) accepts the lab's
// compose file, and gen-certs.sh makes the files it mounts, in a copy of
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
	for _, f := range []string{"ca.crt", "tls.crt", "tls.key", "secret-key"} {
		if _, err := os.Stat(filepath.Join(dir, "certs", f)); err != nil {
			t.Fatalf("gen-certs.sh made no %s: %v", f, err)
		}
	}
	// The gateway's certificate names the host agents reach it by.
	out, err := exec.Command("openssl", "x509", "-in", filepath.Join(dir, "certs/tls.crt"), "-noout", "-ext", "subjectAltName").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "DNS:gateway") {
		t.Fatalf("gateway certificate SANs: %v %s", err, out)
	}

	cmd := exec.Command(compose, "--project-directory", dir, "-f", filepath.Join(dir, "docker-compose.yml"), "config")
	cmd.Env = append(os.Environ(), "COMPOSE_PROJECT_NAME=opsconductor-test")
	rendered, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, rendered)
	}
	for _, want := range []string{"cp1:", "cp2:", "gateway:", "agent1:", "agent2:", "postgres:", "redis:", "migrate:", "bootstrap:"} {
		if !strings.Contains(string(rendered), "  "+want) {
			t.Errorf("the rendered compose file has no service %s", strings.TrimSuffix(want, ":"))
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
