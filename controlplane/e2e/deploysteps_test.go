package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestDeploySteps runs the steps deploy/compose and deploy/k8s take
// besides `opsconductor server`: `opsconductor health` (the container
// health check), `opsconductor migrate` before the
// servers (a Job in Kubernetes; twice, as a re-run would), then a join
// token written to a file by `agent token create --out` with the admin
// token read from OPSCONDUCTOR_TOKEN_FILE, which an agent enrolls with
// from OPSCONDUCTOR_JOIN_TOKEN_FILE.
func TestDeploySteps(t *testing.T) {
	t.Parallel()
	dbURL := storetest.NewURL(t, store.Postgres)
	bin := filepath.Join(cptest.Binaries(t), "opsconductor")
	for i := 0; i < 2; i++ {
		cmd := exec.Command(bin, "migrate")
		cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("opsconductor migrate (run %d): %v\n%s", i+1, err, out)
		}
	}
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	var migrated []string
	rows, err := conn.Query(context.Background(), `SELECT table_schema FROM information_schema.tables WHERE table_name = 'schema_migrations' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	migrated, err = pgx.CollectRows(rows, pgx.RowTo[string])
	conn.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": dbURL})
	// Every schema the server uses was migrated beforehand.
	var served []string
	conn, err = pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	rows, _ = conn.Query(context.Background(), `SELECT table_schema FROM information_schema.tables WHERE table_name = 'schema_migrations' ORDER BY 1`)
	served, err = pgx.CollectRows(rows, pgx.RowTo[string])
	conn.Close(context.Background())
	if err != nil || strings.Join(served, ",") != strings.Join(migrated, ",") || len(migrated) < 8 {
		t.Fatalf("migrate made schemas %v; the server uses %v (%v)", migrated, served, err)
	}

	// The container health check (no curl in the image): healthy, then
	// not, against a port nothing listens on.
	if out, err := exec.Command(bin, "--server", s.URL, "health").CombinedOutput(); err != nil || !strings.Contains(string(out), `"status":"ok"`) {
		t.Fatalf("opsconductor health: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "--server", "http://"+cptest.FreeAddr(t), "health").CombinedOutput(); err == nil {
		t.Fatalf("opsconductor health of nothing succeeded:\n%s", out)
	}

	dir := t.TempDir()
	adminFile, joinFile := filepath.Join(dir, "admin-token"), filepath.Join(dir, "join-token")
	if err := os.WriteFile(adminFile, []byte(s.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--server", s.URL, "agent", "token", "create", "--description", "deploy", "--out", joinFile)
	cmd.Env = append(os.Environ(), "OPSCONDUCTOR_TOKEN_FILE="+adminFile, "OPSCONDUCTOR_TOKEN=")
	if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "ocj_") {
		t.Fatalf("agent token create --out: %v (the token must not be printed)\n%s", err, out)
	}
	if st, err := os.Stat(joinFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("join token file: %v %v, want mode 0600", st, err)
	}
	cptest.Start(t, "agent from files", filepath.Join(cptest.Binaries(t), "opsconductor-agent"),
		[]string{"--server", s.URL, "--state-dir", t.TempDir(), "--name", "from-files", "--labels", "role=files"},
		map[string]string{"OPSCONDUCTOR_JOIN_TOKEN_FILE": joinFile})
	s.WaitAgents(t, 1)
}
