package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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

// TestComplianceExport: after a plain run and a run with a dangerous-
// command override on a real agent, `opsconductor audit export` gives the
// records (whose hashes an auditor can recompute from the export alone,
// linked from prev_hash), who ran which job on which agent, and the
// override with its reason; the CSV table of overrides too.
func TestComplianceExport(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte("extra_rules:\n  - id: test.export-marker\n    severity: critical\n    reason: the export test marker\n    pattern: '^echo export-marker$'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite), "OPSCONDUCTOR_SAFETY_RULES": rules})
	s.StartAgent(t, "exporter", "role=export", "--safety-rules", rules)
	s.WaitAgents(t, 1)
	for name, command := range map[string]string{"plain": "echo fine", "marked": "echo export-marker"} {
		job := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(job, []byte("name: "+name+"\nactions:\n  - command: "+command+"\ntargets:\n  - selector: role=export\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, errOut, code := cli(t, s, "job", "apply", "-f", job); code != 0 {
			t.Fatalf("apply %s: %s", name, errOut)
		}
	}
	if out, errOut, code := cli(t, s, "run", "plain", "--follow"); code != 0 {
		t.Fatalf("run plain: %s%s", out, errOut)
	}
	if out, errOut, code := cli(t, s, "run", "marked", "--follow", "--allow-dangerous", "change 42, approved by the CAB"); code != 0 {
		t.Fatalf("run marked: %s%s", out, errOut)
	}

	out, errOut, code := cli(t, s, "audit", "export", "--since", "1h")
	if code != 0 {
		t.Fatalf("audit export: code %d\n%s", code, errOut)
	}
	var x struct {
		Records []struct {
			Seq                                                                        string
			Time                                                                       string
			Actor, ActorKind                                                           string
			Roles                                                                      []string
			Action, Resource, Outcome, Reason, Peer, UserAgent, CorrelationID, Request string
			PrevHash, Hash                                                             string
		}
		PrevHash, HashMethod string
		ChainVerified        bool
		Executions           []struct {
			JobName, CreatedBy string
			Targets            []string
		}
		DangerousOverrides []struct{ JobName, Reason string }
	}
	if err := json.Unmarshal([]byte(out), &x); err != nil {
		t.Fatalf("export is not JSON: %v\n%s", err, out)
	}
	if !x.ChainVerified || len(x.Records) < 4 || x.HashMethod == "" || x.Records[0].PrevHash != x.PrevHash {
		t.Fatalf("export: verified %v, %d records, prev %q", x.ChainVerified, len(x.Records), x.PrevHash)
	}
	// The auditor's side: recompute every hash from the export alone.
	prev := x.PrevHash
	for _, r := range x.Records {
		seq, _ := strconv.ParseInt(r.Seq, 10, 64)
		at, err := time.Parse(time.RFC3339Nano, r.Time)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(audit.Record{Seq: seq, Time: at.UTC(), Actor: r.Actor, ActorKind: r.ActorKind, Roles: strings.Join(r.Roles, ","),
			Action: r.Action, Resource: r.Resource, Outcome: r.Outcome, Reason: r.Reason, Peer: r.Peer, UserAgent: r.UserAgent,
			CorrelationID: r.CorrelationID, Request: r.Request, PrevHash: r.PrevHash})
		sum := sha256.Sum256(body)
		if hex.EncodeToString(sum[:]) != r.Hash || r.PrevHash != prev {
			t.Fatalf("record %s does not recompute from the export (or does not link)", r.Seq)
		}
		prev = r.Hash
	}
	ran := map[string]string{}
	for _, e := range x.Executions {
		ran[e.JobName] = e.CreatedBy + " on " + strings.Join(e.Targets, ",")
	}
	if !strings.HasSuffix(ran["plain"], " on exporter") || !strings.HasSuffix(ran["marked"], " on exporter") || strings.HasPrefix(ran["plain"], " ") {
		t.Fatalf("who ran what where: %v", ran)
	}
	if len(x.DangerousOverrides) != 1 || x.DangerousOverrides[0].JobName != "marked" || x.DangerousOverrides[0].Reason != "change 42, approved by the CAB" {
		t.Fatalf("overrides: %+v", x.DangerousOverrides)
	}
	out, errOut, code = cli(t, s, "audit", "export", "--since", "1h", "--format", "csv", "--table", "overrides")
	if code != 0 || !strings.HasPrefix(out, "execution_id,time,job,created_by,reason\n") || !strings.Contains(out, `"change 42, approved by the CAB"`) {
		t.Fatalf("csv overrides: code %d\n%s%s", code, out, errOut)
	}
}
