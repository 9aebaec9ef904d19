package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// cli runs the opsconductor binary against s and returns its stdout,
// stderr and exit code.
func cli(t *testing.T, s *cptest.Server, args ...string) (string, string, int) {
	t.Helper()
	return runCLI(t, append([]string{"--server", s.URL, "--token", s.Token}, args...)...)
}

// cliNoServer runs a command that needs no server (keygen, --local).
func cliNoServer(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runCLI(t, args...)
}

func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(cptest.Binaries(t), "opsconductor"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// TestCLI drives the operator commands the way a person would.
func TestCLI(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)})
	s.StartAgent(t, "cli-agent", "role=cli")
	s.WaitAgents(t, 1)
	dir := t.TempDir()
	jobFile := filepath.Join(dir, "job.yaml")
	write := func(body string) {
		if err := os.WriteFile(jobFile, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`
name: cli-job
labels: {team: ops}
actions:
  - name: first
    command: printf 'line one\nline two\n'
  - name: second
    command: echo "to stderr" >&2; exit 5
targets:
  - selector: role=cli
`)
	out, errOut, code := cli(t, s, "job", "apply", "-f", jobFile)
	if code != 0 || !strings.Contains(out, "job cli-job created") || !strings.Contains(out, "version 1") {
		t.Fatalf("apply: code %d\n%s%s", code, out, errOut)
	}
	out, _, _ = cli(t, s, "job", "apply", "-f", jobFile)
	if !strings.Contains(out, "unchanged") {
		t.Fatalf("re-apply of the same file: %s", out)
	}

	out, errOut, code = cli(t, s, "run", "cli-job", "--follow")
	if code != 2 {
		t.Fatalf("run --follow of a failing job exited %d, want 2\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"[cli-agent] running",
		"[cli-agent] #1 out| line one\n[cli-agent] #1 out| line two\n",
		"[cli-agent] #2 err| to stderr",
		"[cli-agent] failed: action 2 (second) exited with code 5",
		"failed in",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("follow output lacks %q:\n%s", want, out)
		}
	}
	execID := regexp.MustCompile(`execution ([0-9a-f-]{36}) of cli-job`).FindStringSubmatch(out)
	if execID == nil {
		t.Fatalf("no execution id in:\n%s", out)
	}

	out, _, code = cli(t, s, "execution", "results", execID[1])
	if code != 0 || !strings.Contains(out, "#2 second: failed (exit 5)") || !strings.Contains(out, "out| line two") {
		t.Fatalf("results:\n%s", out)
	}
	out, _, _ = cli(t, s, "execution", "get", execID[1])
	if !strings.Contains(out, "cli-agent") || !strings.Contains(out, "failed") {
		t.Fatalf("execution get:\n%s", out)
	}
	out, _, _ = cli(t, s, "-o", "json", "execution", "get", execID[1])
	if !strings.Contains(out, `"status": "failed"`) {
		t.Fatalf("execution get -o json:\n%s", out)
	}

	write(`
name: cli-job
actions:
  - command: echo fixed
targets:
  - selector: role=cli
`)
	out, _, _ = cli(t, s, "job", "apply", "-f", jobFile)
	if !strings.Contains(out, "updated") || !strings.Contains(out, "version 2") {
		t.Fatalf("apply of a changed file: %s", out)
	}
	out, errOut, code = cli(t, s, "run", "cli-job", "-f")
	if code != 0 || !strings.Contains(out, "#1 out| fixed") || !strings.Contains(out, "succeeded in") {
		t.Fatalf("run of the fixed job: code %d\n%s%s", code, out, errOut)
	}

	// On a terminal --follow keeps a progress bar; in a pipe it prints
	// plain lines only (script(1) gives the CLI a pseudo-terminal).
	if strings.Contains(out, "\033") {
		t.Fatalf("escape codes in piped output:\n%q", out)
	}
	if scriptPath, err := exec.LookPath("script"); err == nil {
		bin := filepath.Join(cptest.Binaries(t), "opsconductor")
		line := fmt.Sprintf("%s --server %s --token %s run cli-job --follow", bin, s.URL, s.Token)
		tty, _ := exec.Command(scriptPath, "-qec", line, "/dev/null").CombinedOutput()
		if !strings.Contains(string(tty), "1/1 targets done, 0 failed") {
			t.Fatalf("no progress bar on a terminal:\n%q", tty)
		}
	}
	out, _, _ = cli(t, s, "execution", "list", "--job", "cli-job")
	if strings.Count(out, "cli-job") != 3 || !strings.Contains(out, "failed") || !strings.Contains(out, "succeeded") {
		t.Fatalf("execution list:\n%s", out)
	}
	out, _, _ = cli(t, s, "job", "list")
	if !strings.Contains(out, "cli-job") || !strings.Contains(out, "role=cli") {
		t.Fatalf("job list:\n%s", out)
	}
	out, _, _ = cli(t, s, "agent", "list", "-l", "role=cli")
	if !strings.Contains(out, "cli-agent") || !strings.Contains(out, "online") || !strings.Contains(out, "linux/") {
		t.Fatalf("agent list:\n%s", out)
	}
	out, _, code = cli(t, s, "job", "validate", "cli-job")
	if code != 0 || !strings.Contains(out, "runs on: cli-agent") {
		t.Fatalf("validate:\n%s", out)
	}
	out, _, code = cli(t, s, "agent", "token", "create", "--max-uses", "1")
	if code != 0 || !strings.HasPrefix(out, "ocj_") {
		t.Fatalf("token create: %q", out)
	}

	write("name: [unclosed")
	_, errOut, code = cli(t, s, "job", "apply", "-f", jobFile)
	if code == 0 || !strings.Contains(errOut, "not valid YAML") {
		t.Fatalf("apply of bad YAML: code %d, %s", code, errOut)
	}
	write("name: ''\nactions: [{command: ''}]\ntargets: [{selector: role=cli}]\n")
	_, errOut, code = cli(t, s, "job", "apply", "-f", jobFile)
	if code == 0 || !strings.Contains(errOut, "job.name") || !strings.Contains(errOut, "job.actions[0].command") {
		t.Fatalf("apply of an invalid job: code %d, %s", code, errOut)
	}
	_, errOut, code = cli(t, s, "run", "no-such-job")
	if code == 0 || !strings.Contains(errOut, "no job with id or name") {
		t.Fatalf("run of an unknown job: code %d, %s", code, errOut)
	}
	// Custom role and user through the CLI.
	if out, errOut, code := cli(t, s, "role", "create", "cli-readers", "--permission", "self:read,jobs:read", "--job-selector", "team=ops"); code != 0 {
		t.Fatalf("role create: %d %s %s", code, out, errOut)
	}
	if out, errOut, code := cli(t, s, "user", "create", "carol", "--role", "cli-readers"); code != 0 {
		t.Fatalf("user create: %d %s %s", code, out, errOut)
	}
	carolTok, errOut, code := cli(t, s, "token", "create", "carol-ci", "--user", "carol")
	if code != 0 || !strings.Contains(errOut, "acting as user carol") {
		t.Fatalf("token for carol: %d %s", code, errOut)
	}
	out, _, _ = cli(t, s, "--token", strings.TrimSpace(carolTok), "whoami")
	if !strings.Contains(out, "carol (api_token)") || !strings.Contains(out, "cli-readers") {
		t.Fatalf("carol whoami: %s", out)
	}
	out, _, _ = cli(t, s, "role", "list")
	if !strings.Contains(out, "cli-readers") || !strings.Contains(out, "team=ops") || !strings.Contains(out, "built-in") {
		t.Fatalf("role list:\n%s", out)
	}
	out, _, _ = cli(t, s, "user", "list")
	if !strings.Contains(out, "carol") {
		t.Fatalf("user list:\n%s", out)
	}

	// A viewer token may look but not run; a revoked token is refused.
	viewer, errOut, code := cli(t, s, "token", "create", "looker", "--role", "viewer")
	viewer = strings.TrimSpace(viewer)
	if code != 0 || !strings.HasPrefix(viewer, "oct_") {
		t.Fatalf("token create: code %d %q %s", code, viewer, errOut)
	}
	asViewer := func(args ...string) (string, string, int) {
		return cli(t, s, append([]string{"--token", viewer}, args...)...)
	}
	out, _, code = asViewer("whoami")
	if code != 0 || !strings.Contains(out, "looker (api_token)") || !strings.Contains(out, "roles: viewer") {
		t.Fatalf("whoami: %d %s", code, out)
	}
	_, errOut, code = asViewer("run", "cli-job")
	if code == 0 || !strings.Contains(errOut, "permission denied") || !strings.Contains(errOut, "executions:run") {
		t.Fatalf("viewer run: code %d, %s", code, errOut)
	}
	out, _, _ = cli(t, s, "token", "list")
	id := regexp.MustCompile(`looker\s+viewer\s+active\s+\S+\s+\S+\s+(\S+)`).FindStringSubmatch(out)
	if id == nil {
		t.Fatalf("token list:\n%s", out)
	}
	if out, _, code := cli(t, s, "token", "revoke", id[1]); code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	_, errOut, code = asViewer("whoami")
	if code == 0 || !strings.Contains(errOut, "revoked") {
		t.Fatalf("revoked token: code %d, %s", code, errOut)
	}
	_, errOut, code = cli(t, s, "--token", "", "job", "list")
	if code == 0 || !strings.Contains(errOut, "authentication required") {
		t.Fatalf("no token: code %d, %s", code, errOut)
	}

	out, _, _ = cli(t, s, "-o", "json", "agent", "list")
	agentID := regexp.MustCompile(`"id": "([0-9a-f-]{36})"`).FindStringSubmatch(out)
	if agentID == nil {
		t.Fatalf("agent list -o json:\n%s", out)
	}
	out, errOut, code = cli(t, s, "agent", "revoke", agentID[1], "--reason", "test")
	if code != 0 || !strings.Contains(out, "revoked") {
		t.Fatalf("agent revoke: %d %s %s", code, out, errOut)
	}
	out, _, _ = cli(t, s, "agent", "list")
	if strings.Contains(out, "cli-agent") {
		t.Fatalf("a revoked agent is still listed:\n%s", out)
	}

	out, _, _ = cli(t, s, "job", "delete", "cli-job")
	if !strings.Contains(out, "deleted") {
		t.Fatalf("delete: %s", out)
	}
}
