package executor

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/agent/sandbox"
)

// needSandbox skips (or, in CI, fails) where the sandbox cannot be shown:
// it needs root (to switch users) and a cgroup the agent may manage.
func needSandbox(t *testing.T) {
	t.Helper()
	_, v1 := os.Stat("/sys/fs/cgroup/pids/pids.max")
	_, v1root := os.Stat("/sys/fs/cgroup/pids/cgroup.procs")
	_, v2 := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	if os.Getuid() != 0 || (v1 != nil && v1root != nil && v2 != nil) {
		if os.Getenv("CI") != "" {
			t.Fatal("the sandbox tests need root and cgroups (.ci/run runs as root on a host with them)")
		}
		t.Skip("needs root and cgroups")
	}
}

// TestSandboxConfines: a sandboxed action runs as the unprivileged user,
// with its open-files limit, in a private temporary directory that is
// gone afterwards, without the agent's environment, and cannot gain
// privileges.
func TestSandboxConfines(t *testing.T) {
	needSandbox(t)
	t.Setenv("OPSCONDUCTOR_AGENT_SECRET_FOR_TEST", "must-not-leak")
	var out, errOut syncBuffer
	res := (&Shell{}).Execute(context.Background(), Action{
		Command: `id -un; ulimit -n; echo "$TMPDIR"; touch "$TMPDIR/x" && echo wrote; grep NoNewPrivs /proc/self/status; echo "secret=$OPSCONDUCTOR_AGENT_SECRET_FOR_TEST"`,
		Timeout: 30 * time.Second,
		Spec:    map[string]string{"sandbox": "true", "sandbox_user": "nobody", "sandbox_open_files": "100"},
		// An action cannot rewrite the helper's instructions.
		Env: map[string]string{"OPSCONDUCTOR_SANDBOX_CONFIG": `{"SwitchUser":false}`},
	}, &out, &errOut)
	if res.Status != StatusSucceeded {
		t.Fatalf("result = %+v, stderr %q", res, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 6 || lines[0] != "nobody" || lines[1] != "100" || !strings.Contains(lines[2], "opsconductor-sandbox-") ||
		lines[3] != "wrote" || !strings.HasSuffix(lines[4], "1") || lines[5] != "secret=" {
		t.Fatalf("inside the sandbox:\n%s", out.String())
	}
	if _, err := os.Stat(lines[2]); !os.IsNotExist(err) {
		t.Fatalf("the private temp dir %s outlived the action: %v", lines[2], err)
	}
	// The agent writes uploads itself: refused under a sandbox policy.
	target := t.TempDir() + "/x"
	res = (&Shell{Sandbox: &sandboxLimitsForTest}).Execute(context.Background(), Action{Upload: &Upload{Destination: target, Content: []byte("x")}},
		&syncBuffer{}, &syncBuffer{})
	if _, err := os.Stat(target); res.Status != StatusFailed || err == nil {
		t.Fatalf("an upload under a sandbox policy: %+v", res)
	}
}

// TestSandboxStopsForkBomb: a fork bomb hits the process limit, is
// stopped at once (not at its timeout) and reported as such; an action
// running beside it is unaffected, and nothing of the bomb is left.
func TestSandboxStopsForkBomb(t *testing.T) {
	needSandbox(t)
	var wg sync.WaitGroup
	var neighbour Result
	var neighbourOut syncBuffer
	wg.Add(1)
	go func() {
		defer wg.Done()
		neighbour = (&Shell{}).Execute(context.Background(), Action{Command: "sleep 2; echo neighbour-ok", Timeout: 60 * time.Second}, &neighbourOut, &syncBuffer{})
	}()
	start := time.Now()
	var errOut syncBuffer
	res := (&Shell{}).Execute(context.Background(), Action{
		Command: `bomb_b3f1() { bomb_b3f1 | bomb_b3f1 & }; bomb_b3f1; sleep 120`,
		Timeout: 120 * time.Second,
		Spec:    map[string]string{"sandbox": "true", "sandbox_processes": "40"},
	}, &syncBuffer{}, &errOut)
	took := time.Since(start)
	if res.Status != StatusFailed || !strings.Contains(res.Error, "stopped by the sandbox: process limit of 40 reached") {
		t.Fatalf("fork bomb result = %+v", res)
	}
	if took > 30*time.Second {
		t.Fatalf("the fork bomb was stopped after %s, not by its limit", took)
	}
	wg.Wait()
	if neighbour.Status != StatusSucceeded || neighbourOut.String() != "neighbour-ok\n" {
		t.Fatalf("the action beside the bomb: %+v %q", neighbour, neighbourOut.String())
	}
	// Only the bomb's own processes (by the token in their command line):
	// tests of other packages may run actions as nobody at the same time.
	// The kernel may take a moment to reap the last of them.
	deadline := time.Now().Add(5 * time.Second)
	for n := processesWith(t, "bomb_b3f1"); n != 0; n = processesWith(t, "bomb_b3f1") {
		if time.Now().After(deadline) {
			t.Fatalf("%d processes of the bomb are left", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processesWith counts the processes whose command line holds token.
func processesWith(t *testing.T, token string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		raw, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && e.Name() != fmt.Sprint(os.Getpid()) && strings.Contains(string(raw), token) {
			n++
		}
	}
	return n
}

// TestSandboxStopsMemoryHog: allocating past the memory limit gets the
// action killed by the kernel and reported as the memory limit.
func TestSandboxStopsMemoryHog(t *testing.T) {
	needSandbox(t)
	res := (&Shell{}).Execute(context.Background(), Action{
		// The shell keeps the whole 400 MB in a variable.
		Command: `x=$(head -c 400000000 /dev/zero | tr '\0' a); echo survived ${#x}`,
		Timeout: 120 * time.Second,
		Spec:    map[string]string{"sandbox": "true", "sandbox_memory": "64M"},
	}, &syncBuffer{}, &syncBuffer{})
	if res.Status != StatusFailed || !strings.Contains(res.Error, "stopped by the sandbox: memory limit of 64MiB reached") {
		t.Fatalf("memory hog result = %+v", res)
	}
}

// TestSandboxPolicy: the agent's limits hold; an action may lower them,
// not raise them, nor pick another user; bad values name the spec key.
func TestSandboxPolicy(t *testing.T) {
	s := &Shell{Sandbox: &sandboxLimitsForTest}
	l, err := s.sandboxLimits(map[string]string{"sandbox_processes": "500", "sandbox_memory": "64M"})
	if err != nil || l.Processes != 100 || l.Memory != 64<<20 || l.User != "nobody" {
		t.Fatalf("limits = %+v, %v", l, err)
	}
	if _, err := s.sandboxLimits(map[string]string{"sandbox_user": "root"}); err == nil {
		t.Fatal("an action chose another user than the agent's")
	}
	for key, bad := range map[string]string{"sandbox": "yes", "sandbox_memory": "lots", "sandbox_processes": "-1", "sandbox_cpu": "1ms"} {
		if _, err := (&Shell{}).sandboxLimits(map[string]string{"sandbox": "true", key: bad}); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s=%q: %v", key, bad, err)
		}
	}
	if l, err := (&Shell{}).sandboxLimits(nil); l != nil || err != nil {
		t.Fatalf("no policy, no request: %+v, %v", l, err)
	}
}

var sandboxLimitsForTest = sandbox.Limits{User: "nobody", Processes: 100, Memory: 1 << 30}

// TestShellRunAs: spec run_as runs a local action as another user, in
// their home, with their groups; a missing user is refused by name.
func TestShellRunAs(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("run_as needs root (.ci/run runs as root)")
		}
		t.Skip("needs root")
	}
	t.Setenv("OPSCONDUCTOR_AGENT_SECRET_FOR_TEST", "must-not-leak")
	var out syncBuffer
	res := (&Shell{}).Execute(context.Background(), Action{Command: `id -un; echo $HOME; pwd; echo "secret=$OPSCONDUCTOR_AGENT_SECRET_FOR_TEST"`,
		Spec: map[string]string{"run_as": "opsconductor-test"}}, &out, &syncBuffer{})
	if res.Status != StatusSucceeded || out.String() != "opsconductor-test\n/home/opsconductor-test\n/home/opsconductor-test\nsecret=\n" {
		t.Fatalf("result %+v, stdout %q", res, out.String())
	}
	script := "#!/bin/sh\nid -un\n"
	out = syncBuffer{}
	if res := (&Shell{}).Execute(context.Background(), Action{Script: script, Spec: map[string]string{"run_as": "nobody"}}, &out, &syncBuffer{}); res.Status != StatusSucceeded || out.String() != "nobody\n" {
		t.Fatalf("script as nobody: %+v %q", res, out.String())
	}
	if res := (&Shell{}).Execute(context.Background(), Action{Command: "true", Spec: map[string]string{"run_as": "no-such-user"}}, &syncBuffer{}, &syncBuffer{}); !strings.Contains(res.Error, "spec.run_as") {
		t.Fatalf("missing user: %+v", res)
	}
}
