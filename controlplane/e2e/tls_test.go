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
	// The first two are refused by the agent itself, with a clear message;
	// the foreign certificate is refused by the server during the
	// handshake, which the agent may see as "bad certificate" or as a
	// connection that could not be set up: it must simply never enrol.
	want := map[string]string{"wrong pin": "does not match the pinned", "unknown CA": "certificate", "foreign client": "enroll with"}
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
	var agents struct {
		Agents []struct {
			Name string `json:"name"`
		} `json:"agents"`
	}
	s.Do(t, "GET", "/api/v1/agents", nil, &agents)
	if len(agents.Agents) != 2 {
		t.Fatalf("enrolled agents %+v, want only the two trusted ones", agents.Agents)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// TestAgentMTLS: with --agent-mtls an agent without a client certificate
// is refused; one with a certificate from the client CA works.
func TestAgentMTLS(t *testing.T) {
	t.Parallel()
	f := cptest.NewTLS(t)
	s := cptest.StartServerTLS(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite), "OPSCONDUCTOR_AGENT_MTLS": "true"}, f, true)
	s.StartAgent(t, "with-cert", "role=mtls", "--ca-file", f.CA, "--client-cert", f.ClientCert, "--client-key", f.ClientKey)
	s.WaitAgents(t, 1)
	p := s.StartAgent(t, "without-cert", "role=mtls", "--ca-file", f.CA)
	cptest.Eventually(t, 30*time.Second, func() error {
		if !p.Exited() {
			return errString("agent without a client certificate still running")
		}
		return nil
	})
	if !strings.Contains(p.Output(), "client certificate") {
		t.Fatalf("refused agent's output:\n%s", p.Output())
	}
	j := createJob(t, s, map[string]any{"name": "mtls", "targets": []map[string]any{{"selector": "role=mtls"}},
		"actions": []map[string]any{{"command": "echo mutual"}}})
	if r := waitFinished(t, s, execute(t, s, j.ID).ID, 60*time.Second); r.Execution.Status != "succeeded" || len(r.Results) != 1 {
		t.Fatalf("execution: %s, %d targets", r.Execution.Status, len(r.Results))
	}
}
