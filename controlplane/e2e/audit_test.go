package e2e

import (
	"context"
	"strings"
	"testing"

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
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": dbURL})
	createJob(t, s, map[string]any{"name": "audited", "targets": []map[string]any{{"selector": "role=none"}},
		"actions": []map[string]any{{"command": "true"}}})

	out, errOut, code := cli(t, s, "events", "publish", "external.deploy_finished", "web", "--payload", `{"version":"1.2.3"}`, "--correlation-id", "change-7")
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
