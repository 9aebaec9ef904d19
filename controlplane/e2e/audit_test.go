package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/audit"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestAuditCLI: an external event logged and listed with the CLI; the
// audit log verifies with `opsconductor audit verify` until a record is
// edited in the database underneath, then the command exits 4 naming it.
func TestAuditCLI(t *testing.T) {
	t.Parallel()
	dbURL := storetest.NewURL(t, store.SQLite)
	out, errOut, code := cliNoServer(t, "audit", "keygen")
	signer, verifier := keyAfter(out, "signer (--audit-signing-key, keep it secret): "), keyAfter(out, "verifier (for auditors): ")
	if code != 0 || signer == "" || verifier == "" {
		t.Fatalf("audit keygen: code %d\n%s%s", code, out, errOut)
	}
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": dbURL, "OPSCONDUCTOR_AUDIT_SIGNING_KEY": signer,
		"OPSCONDUCTOR_AUDIT_CHECKPOINT_INTERVAL": "1s"})
	createJob(t, s, map[string]any{"name": "audited", "targets": []map[string]any{{"selector": "role=none"}},
		"actions": []map[string]any{{"command": "true"}}})

	out, errOut, code = cli(t, s, "events", "publish", "external.deploy_finished", "web", "--payload", `{"version":"1.2.3"}`, "--correlation-id", "change-7")
	if code != 0 || !strings.HasPrefix(out, "external-") {
		t.Fatalf("events publish: code %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli(t, s, "events", "list", "--type", "external.*")
	if code != 0 || !strings.Contains(out, "external.deploy_finished") || !strings.Contains(out, "web") {
		t.Fatalf("events list: code %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli(t, s, "audit", "list", "--action", "/opsconductor.v1.JobService/CreateJob")
	if code != 0 || !strings.Contains(out, "JobService/CreateJob") || !strings.Contains(out, "audited") {
		t.Fatalf("audit list: code %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli(t, s, "audit", "verify")
	if code != 0 || !strings.Contains(out, "audit log intact") {
		t.Fatalf("audit verify: code %d\n%s%s", code, out, errOut)
	}
	// An auditor keeps a signed checkpoint; the log still extends it.
	var kept string
	cptest.Eventually(t, 20*time.Second, func() error {
		out, errOut, code := cli(t, s, "audit", "checkpoint")
		if code != 0 || !strings.HasPrefix(out, "opsconductor audit log\n") {
			return fmt.Errorf("audit checkpoint: code %d\n%s%s", code, out, errOut)
		}
		kept = filepath.Join(t.TempDir(), "checkpoint")
		return os.WriteFile(kept, []byte(out), 0o600)
	})
	out, errOut, code = cli(t, s, "audit", "verify", "--checkpoint", kept, "--verifier-key", verifier)
	if code != 0 || !strings.Contains(out, "extends the checkpoint") {
		t.Fatalf("audit verify against the checkpoint: code %d\n%s%s", code, out, errOut)
	}

	// Someone with database access rewrites who made the job.
	db, err := store.Open(context.Background(), dbURL, audit.Schema, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := db.ExecContext(context.Background(), `UPDATE audit_log SET actor = 'nobody' WHERE action = '/opsconductor.v1.JobService/CreateJob'`)
	if n, _ := res.RowsAffected(); err != nil || n != 1 {
		t.Fatalf("tamper: %d rows (%v)", n, err)
	}
	var seq string
	if err := db.QueryRowContext(context.Background(), `SELECT seq FROM audit_log WHERE actor = 'nobody'`).Scan(&seq); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = cli(t, s, "audit", "verify")
	if code != 4 || !strings.Contains(errOut, "broken at record "+seq) || !strings.Contains(errOut, "edited") {
		t.Fatalf("verify after tampering: code %d\n%s%s", code, out, errOut)
	}
}

// keyAfter is the rest of the line of out that starts with prefix.
func keyAfter(out, prefix string) string {
	for _, line := range strings.Split(out, "\n") {
		if k, ok := strings.CutPrefix(line, prefix); ok {
			return strings.TrimSpace(k)
		}
	}
	return ""
}
