package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsconductor/opsconductor/agent/executor/sshtest"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/secretbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestStoredCredentials: a password and an SSH key stored through the API
// log a jump agent in to remote hosts (the password also serves sudo).
// Their values appear in no API response, no log line of the server or
// the agent, and no row of any table (results, output, events, audit
// records); a credential limited to other hosts is refused before the run;
// a key rotation reseals every value under the new key and runs go on.
func TestStoredCredentials(t *testing.T) {
	t.Parallel()
	sshd := sshtest.Start(t, "127.0.0.2")
	port, _ := strconv.Atoi(sshd.Port)
	keyPEM, err := os.ReadFile(sshd.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	// A distinctive piece of the key's body: what a leak would contain.
	keyLines := strings.Split(strings.TrimSpace(string(keyPEM)), "\n")
	keyPiece := keyLines[len(keyLines)/2]
	secrets := map[string]string{"password": sshtest.Password, "private key": keyPiece}

	dbURL := storetest.NewURL(t, store.Postgres)
	k1 := "k1:" + base64.StdEncoding.EncodeToString(secretbox.NewKey())
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": dbURL, "OPSCONDUCTOR_CREDENTIAL_KEYS": k1})
	jump := s.StartAgent(t, "jump-1", "role=jump")
	s.WaitAgents(t, 1)

	// Every API answer is kept, to be scanned at the end.
	var answers []string
	call := func(want int, method, path string, body any) json.RawMessage {
		t.Helper()
		var raw json.RawMessage
		cptest.Must(t, want)(s.Do(t, method, path, body, &raw))
		answers = append(answers, string(raw))
		return raw
	}
	call(http.StatusOK, "POST", "/api/v1/credentials", map[string]any{
		"credential": map[string]any{"name": "lab-password", "kind": "password", "hosts": []string{"127.0.0.*"}}, "value": sshtest.Password})
	call(http.StatusOK, "POST", "/api/v1/credentials", map[string]any{
		"credential": map[string]any{"name": "lab-key", "kind": "ssh_key", "description": "root on the lab"}, "value": string(keyPEM)})
	call(http.StatusOK, "POST", "/api/v1/credentials", map[string]any{
		"credential": map[string]any{"name": "elsewhere", "kind": "password", "hosts": []string{"10.*"}}, "value": sshtest.Password})
	// Bad input names the field and never echoes the value.
	bad := call(http.StatusBadRequest, "POST", "/api/v1/credentials", map[string]any{
		"credential": map[string]any{"name": "broken", "kind": "ssh_key"}, "value": "not a key " + sshtest.Password})
	if !strings.Contains(string(bad), `"value"`) {
		t.Fatalf("bad key refusal = %s, want it to name the value field", bad)
	}
	call(http.StatusConflict, "POST", "/api/v1/credentials", map[string]any{
		"credential": map[string]any{"name": "lab-key", "kind": "password"}, "value": "x"})
	list := call(http.StatusOK, "GET", "/api/v1/credentials", nil)
	if !strings.Contains(string(list), `"keyId":"k1"`) || !strings.Contains(string(list), "lab-password") {
		t.Fatalf("list = %s", list)
	}
	call(http.StatusOK, "GET", "/api/v1/credentials/lab-key", nil)
	call(http.StatusNotFound, "GET", "/api/v1/credentials/nope", nil)

	remote := func(address, user, cred string, options map[string]string) map[string]any {
		opts := map[string]string{"known_hosts": sshd.KnownHosts}
		for k, v := range options {
			opts[k] = v
		}
		return map[string]any{"remote": map[string]any{"via": "role=jump", "hosts": []map[string]any{{"address": address}},
			"port": port, "user": user, "credential": cred, "options": opts}}
	}
	var created struct {
		Job job `json:"job"`
	}
	raw := call(http.StatusOK, "POST", "/api/v1/jobs", map[string]any{"name": "with-credentials", "targets": []map[string]any{
		remote("127.0.0.1", sshtest.User, "lab-password", map[string]string{"become": "true"}),
		remote("127.0.0.2", "root", "lab-key", nil),
	}, "actions": []map[string]any{{"name": "who", "command": "id -un"}}})
	if err := json.Unmarshal(raw, &created); err != nil {
		t.Fatal(err)
	}
	run := func(jobID string) results {
		t.Helper()
		var out struct {
			Execution execution `json:"execution"`
		}
		raw := call(http.StatusOK, "POST", "/api/v1/jobs/"+jobID+"/execute", map[string]any{})
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatal(err)
		}
		r := waitFinished(t, s, out.Execution.ID, 60*time.Second)
		call(http.StatusOK, "GET", "/api/v1/executions/"+out.Execution.ID+"/results", nil)
		return r
	}
	goodJob := created.Job.ID
	r := run(goodJob)
	if r.Execution.Status != "succeeded" || len(r.Results) != 2 {
		t.Fatalf("execution = %+v", r)
	}
	for _, res := range r.Results {
		if res.Actions[0].Stdout != "root\n" {
			t.Fatalf("host %s: %+v, want root (sudo with the stored password, or the stored key)", res.Task.Host, res.Actions)
		}
	}

	// A credential limited to other hosts is refused before anything runs.
	raw = call(http.StatusOK, "POST", "/api/v1/jobs", map[string]any{"name": "misused", "targets": []map[string]any{
		remote("127.0.0.1", sshtest.User, "elsewhere", nil)}, "actions": []map[string]any{{"command": "true"}}})
	if err := json.Unmarshal(raw, &created); err != nil {
		t.Fatal(err)
	}
	refused := call(http.StatusBadRequest, "POST", "/api/v1/jobs/"+created.Job.ID+"/execute", map[string]any{})
	if !strings.Contains(string(refused), `credential \"elsewhere\" may not be used for host 127.0.0.1`) {
		t.Fatalf("misuse refusal = %s", refused)
	}

	// Nor through a bastion, which would receive it.
	raw = call(http.StatusOK, "POST", "/api/v1/jobs", map[string]any{"name": "via-bastion", "targets": []map[string]any{
		remote("127.0.0.1", sshtest.User, "lab-password", map[string]string{"proxy_jump": "127.0.0.2:" + sshd.Port})},
		"actions": []map[string]any{{"command": "true"}}})
	if err := json.Unmarshal(raw, &created); err != nil {
		t.Fatal(err)
	}
	refused = call(http.StatusBadRequest, "POST", "/api/v1/jobs/"+created.Job.ID+"/execute", map[string]any{})
	if !strings.Contains(string(refused), "may not be used with proxy_jump") {
		t.Fatalf("credential through a bastion: %s", refused)
	}

	// Rotation: a second replica holds a new current key and the old one;
	// rekey reseals everything, and runs through it still log in.
	k2 := "k2:" + base64.StdEncoding.EncodeToString(secretbox.NewKey())
	s2 := cptest.StartServer(t, "server-2", map[string]string{"DATABASE_URL": dbURL, "OPSCONDUCTOR_CREDENTIAL_KEYS": k2 + "," + k1})
	s2.Token = s.Token
	var rekeyed struct {
		Resealed int `json:"resealed"`
	}
	cptest.Must(t, http.StatusOK)(s2.Do(t, "POST", "/api/v1/credentials/rekey", map[string]any{}, &rekeyed))
	if rekeyed.Resealed != 3 {
		t.Fatalf("resealed %d credentials, want 3", rekeyed.Resealed)
	}
	list = call(http.StatusOK, "GET", "/api/v1/credentials", nil)
	if strings.Contains(string(list), `"keyId":"k1"`) || !strings.Contains(string(list), `"keyId":"k2"`) {
		t.Fatalf("credentials after rekey = %s, want all under k2", list)
	}
	// The first replica lacks k2 now: its agent moves to the second.
	first, firstJump := s, jump
	firstJump.Stop(t)
	jump = s2.StartAgent(t, "jump-2", "role=jump")
	s = s2
	s.WaitAgents(t, 2)
	if r := run(goodJob); r.Execution.Status != "succeeded" {
		t.Fatalf("run after the key rotation = %+v", r)
	}

	// The scan: API answers, logs, every row of every table.
	rows := dumpTables(t, dbURL)
	for what, value := range secrets {
		for _, a := range answers {
			if strings.Contains(a, value) {
				t.Errorf("the %s appears in an API answer: %s", what, a)
			}
		}
		for name, log := range map[string]string{"server": first.Output(), "server-2": s2.Output(), "jump agent": firstJump.Output(), "second jump agent": jump.Output()} {
			if strings.Contains(log, value) {
				t.Errorf("the %s appears in the %s log", what, name)
			}
		}
		if strings.Contains(rows, value) {
			t.Errorf("the %s appears in a stored row", what)
		}
	}
	if !strings.Contains(rows, "credential.created") || !strings.Contains(rows, "id -un") {
		t.Fatal("the table scan read nothing: it would miss a leak")
	}
}

// dumpTables returns every row of every table of the database as text.
func dumpTables(t *testing.T, dbURL string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables
		WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, table := range tables {
		rows, err := conn.Query(ctx, `SELECT t::text FROM `+table+` t`)
		if err != nil {
			t.Fatal(err)
		}
		texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(strings.Join(texts, "\n"))
	}
	return b.String()
}
