package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestTLS: the server speaks HTTPS with mutual TLS on; agents verify it
// against a CA bundle or a pinned fingerprint (one presenting a client
// certificate); a wrong pin, an unknown CA and a foreign client
// certificate are refused.
func TestTLS(t *testing.T) {
	t.Parallel()
	f := cptest.NewTLS(t)
	s := cptest.StartServerTLS(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)}, f, true)
	s.StartAgent(t, "ca-agent", "role=tls", "--ca-file", f.CA)
	s.StartAgent(t, "pinned-agent", "role=tls", "--server-fingerprint", f.Fingerprint, "--client-cert", f.ClientCert, "--client-key", f.ClientKey)
	s.WaitAgents(t, 2)
	j := createJob(t, s, map[string]any{"name": "over-tls", "targets": []map[string]any{{"selector": "role=tls"}},
		"actions": []map[string]any{{"command": "echo secure"}}})
	r := waitFinished(t, s, execute(t, s, j.ID).ID, 60*time.Second)
	if r.Execution.Status != "succeeded" || len(r.Results) != 2 {
		t.Fatalf("execution over TLS: %s, %d targets", r.Execution.Status, len(r.Results))
	}

	other := cptest.NewTLS(t) // another CA, another client certificate
	refused := map[string][]string{
		"wrong pin":      {"--server-fingerprint", strings.Repeat("ab", 32)},
		"unknown CA":     {"--ca-file", other.CA},
		"foreign client": {"--ca-file", f.CA, "--client-cert", other.ClientCert, "--client-key", other.ClientKey},
	}
	want := map[string]string{"wrong pin": "does not match the pinned", "unknown CA": "certificate", "foreign client": "certificate"}
	for name, args := range refused {
		p := s.StartAgent(t, "refused-"+strings.ReplaceAll(name, " ", "-"), "role=none", args...)
		cptest.Eventually(t, 30*time.Second, func() error {
			if !p.Exited() {
				return errString(name + " agent still running")
			}
			return nil
		})
		if out := p.Output(); !strings.Contains(out, want[name]) {
			t.Errorf("%s: agent output lacks %q:\n%s", name, want[name], out)
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }
