package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestStoreExportImport moves a lab from the embedded SQLite store to
// PostgreSQL with `opsconductor store export|import`: after the move the
// old admin token still works, the job, the execution with its output,
// the schedule and the audit log (whose hash chain still verifies) are
// there, and new work runs. A second import into the same database is
// refused, and the way back (PostgreSQL to SQLite) keeps every table's
// row count.
func TestStoreExportImport(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(cptest.Binaries(t), "opsconductor")
	sqliteURL := storetest.NewURL(t, store.SQLite)
	a := cptest.StartServer(t, "sqlite server", map[string]string{"DATABASE_URL": sqliteURL})
	agent := a.StartAgent(t, "mover", "role=mover")
	a.WaitAgents(t, 1)
	j := createJob(t, a, map[string]any{"name": "to-move", "targets": []map[string]any{{"selector": "role=mover"}},
		"actions": []map[string]any{{"command": "echo before the move"}}})
	before := waitFinished(t, a, execute(t, a, j.ID).ID, 30*time.Second)
	if before.Execution.Status != "succeeded" {
		t.Fatalf("execution before the move: %+v", before)
	}
	cptest.Must(t, http.StatusOK)(a.Do(t, "POST", "/api/v1/schedules", map[string]any{"schedule": map[string]any{
		"name": "moved-nightly", "jobId": j.ID, "kind": "cron", "cron": "0 3 * * *"}}, nil))
	agent.Stop(t)
	a.Stop(t)

	dir := t.TempDir()
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	export := filepath.Join(dir, "lab.export")
	if out, err := run(nil, "store", "export", "--database-url", sqliteURL, "--out", export); err != nil {
		t.Fatalf("store export: %v\n%s", err, out)
	} else if !strings.Contains(out, "jobs.jobs: 1 rows") {
		t.Fatalf("store export shows no progress per table:\n%s", out)
	}
	if st, err := os.Stat(export); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("export file: %v %v, want mode 0600", st, err)
	}
	pgURL := storetest.NewURL(t, store.Postgres)
	if out, err := run([]string{"DATABASE_URL=" + pgURL}, "store", "import", "--in", export); err != nil {
		t.Fatalf("store import: %v\n%s", err, out)
	}
	if out, err := run(nil, "store", "import", "--database-url", pgURL, "--in", export); err == nil || !strings.Contains(out, "already has rows") {
		t.Fatalf("a second import into the same database: %v\n%s", err, out)
	}

	b := cptest.StartServer(t, "postgres server", map[string]string{"DATABASE_URL": pgURL})
	b.Token = a.Token // the users and tokens moved too
	var got results
	cptest.Must(t, http.StatusOK)(b.Do(t, "GET", "/api/v1/executions/"+before.Execution.ID+"/results", nil, &got))
	if got.Execution.Status != "succeeded" || got.Results[0].Actions[0].Stdout != "before the move\n" {
		t.Fatalf("the execution after the move: %+v", got)
	}
	var list struct {
		Schedules []struct {
			Name string `json:"name"`
		} `json:"schedules"`
	}
	cptest.Must(t, http.StatusOK)(b.Do(t, "GET", "/api/v1/schedules/job/"+j.ID, nil, &list))
	if len(list.Schedules) != 1 || list.Schedules[0].Name != "moved-nightly" {
		t.Fatalf("schedules after the move: %+v", list)
	}
	var verify struct {
		OK      bool   `json:"ok"`
		Records string `json:"records"`
		Problem string `json:"problem"`
	}
	cptest.Must(t, http.StatusOK)(b.Do(t, "POST", "/api/v1/audit/verify", map[string]any{}, &verify))
	if !verify.OK || verify.Records == "" || verify.Records == "0" {
		t.Fatalf("audit log after the move: %+v", verify)
	}
	// New work runs (the sequences continue after the moved rows).
	b.StartAgent(t, "after-move", "role=after")
	j2 := createJob(t, b, map[string]any{"name": "after-the-move", "targets": []map[string]any{{"selector": "role=after"}},
		"actions": []map[string]any{{"command": "echo after the move"}}})
	// (The moved agent may still count as online for a while: wait for
	// the new one by running the job once it has enrolled.)
	var started struct {
		Execution execution `json:"execution"`
	}
	cptest.Eventually(t, 30*time.Second, func() error {
		if code := b.Do(t, "POST", "/api/v1/jobs/"+j2.ID+"/execute", map[string]any{}, &started); code != http.StatusOK {
			return fmt.Errorf("execute: HTTP %d", code)
		}
		return nil
	})
	if r := waitFinished(t, b, started.Execution.ID, 30*time.Second); r.Execution.Status != "succeeded" {
		t.Fatalf("execution after the move: %+v", r)
	}
	b.Stop(t)

	// And back: PostgreSQL to a new SQLite store, every table kept.
	back, again := filepath.Join(dir, "back.export"), storetest.NewURL(t, store.SQLite)
	out1, err := run(nil, "store", "export", "--database-url", pgURL, "--out", back)
	if err != nil {
		t.Fatalf("store export from postgres: %v\n%s", err, out1)
	}
	if out, err := run(nil, "store", "import", "--database-url", again, "--in", back); err != nil {
		t.Fatalf("store import into sqlite: %v\n%s", err, out)
	}
	out2, err := run(nil, "store", "export", "--database-url", again, "--out", filepath.Join(dir, "again.export"))
	if err != nil {
		t.Fatalf("store export from the new sqlite: %v\n%s", err, out2)
	}
	if strings.Replace(out1, back, "", 1) != strings.Replace(out2, filepath.Join(dir, "again.export"), "", 1) {
		t.Fatalf("row counts differ after the way back:\nfrom postgres:\n%s\nfrom sqlite:\n%s", out1, out2)
	}
}
