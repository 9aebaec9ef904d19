package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestPrecedence(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "db-url")
	if err := os.WriteFile(secret, []byte("postgres://u:pw@db/x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"OPSCONDUCTOR_ADDR":           "0.0.0.0:9000",
		"DATABASE_URL_FILE":           secret,
		"OPSCONDUCTOR_REDIS_URL":      "redis://r:6379",
		"OPSCONDUCTOR_LEASE_DURATION": "45s",
		"OPSCONDUCTOR_OUTPUT_LIMIT":   "2048",
		"OPSCONDUCTOR_INSECURE_HTTP":  "true",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg := Default()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse([]string{"--lease-duration=1m"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.ApplyEnv(lookup, fs.Changed); err != nil {
		t.Fatal(err)
	}
	if !cfg.InsecureHTTP || cfg.Addr != "0.0.0.0:9000" || cfg.DatabaseURL != "postgres://u:pw@db/x" || cfg.RedisURL != "redis://r:6379" || cfg.OutputLimit != 2048 {
		t.Fatalf("env not applied: %+v", cfg)
	}
	if cfg.LeaseDuration.String() != "1m0s" {
		t.Fatalf("flag did not win over env: lease %s", cfg.LeaseDuration)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateReportsEverything(t *testing.T) {
	cfg := Default()
	cfg.DatabaseURL = "mysql://x"
	cfg.LogFormat = "xml"
	cfg.LeaseDuration = 0
	cfg.OutputLimit = 1
	err := cfg.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, field := range []string{"database-url", "log-format", "lease-duration", "output-limit", "tls-cert"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
	bad := func(k string) (string, bool) { return "soon", k == "OPSCONDUCTOR_POLL_MAX_WAIT" }
	if err := cfg.ApplyEnv(bad, nil); err == nil || !strings.Contains(err.Error(), "OPSCONDUCTOR_POLL_MAX_WAIT") {
		t.Fatalf("bad duration in env: %v", err)
	}
}

// TestReferenceDocumented: docs/operations.md lists every setting.
func TestReferenceDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range Reference() {
		if !strings.Contains(string(doc), "| `"+r[0]+"` | `"+r[1]+"` |") {
			t.Errorf("docs/operations.md's configuration reference lacks %s (%s)", r[0], r[1])
		}
	}
}
