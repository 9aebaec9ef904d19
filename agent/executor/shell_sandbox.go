package executor

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/opsconductor/opsconductor/agent/sandbox"
)

// DefaultSandboxUser runs sandboxed actions when neither the agent nor the
// action names a user.
const DefaultSandboxUser = "nobody"

// sandboxLimits returns the sandbox an action runs in (nil: none): the
// agent's policy, tightened by the action's spec; or the action's own when
// it asks for one.
func (s *Shell) sandboxLimits(spec map[string]string) (*sandbox.Limits, error) {
	asked := spec["sandbox"]
	switch asked {
	case "", "false", "true":
	default:
		return nil, fmt.Errorf("spec.sandbox must be true or false, got %q", asked)
	}
	if s.Sandbox == nil && asked != "true" {
		return nil, nil
	}
	var l sandbox.Limits
	switch {
	case s.Sandbox != nil:
		l = *s.Sandbox
	case s.Defaults != nil:
		l = *s.Defaults
	}
	// The agent's policy only tightens; its defaults are overridden.
	policy := s.Sandbox != nil
	if l.User == "" {
		l.User = DefaultSandboxUser
	}
	if u := spec["sandbox_user"]; u != "" {
		if s.Sandbox != nil && s.Sandbox.User != "" && u != s.Sandbox.User {
			return nil, fmt.Errorf("spec.sandbox_user: this agent runs sandboxed actions as %s only", s.Sandbox.User)
		}
		l.User = u
	}
	// An action may lower the agent's limits, never raise them.
	lower := func(cur, asked int64) int64 {
		if !policy || cur == 0 || asked < cur {
			return asked
		}
		return cur
	}
	if v := spec["sandbox_memory"]; v != "" {
		n, err := sandbox.ParseBytes(v)
		if err != nil {
			return nil, fmt.Errorf("spec.sandbox_memory: %v", err)
		}
		l.Memory = lower(l.Memory, n)
	}
	for _, key := range []string{"sandbox_processes", "sandbox_open_files"} {
		v := spec[key]
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("spec.%s must be a positive number, got %q", key, v)
		}
		if key == "sandbox_processes" {
			l.Processes = int(lower(int64(l.Processes), int64(n)))
		} else {
			l.OpenFiles = int(lower(int64(l.OpenFiles), int64(n)))
		}
	}
	if v := spec["sandbox_cpu"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("spec.sandbox_cpu must be a duration of at least 1s, got %q", v)
		}
		l.CPU = time.Duration(lower(int64(l.CPU), int64(d)))
	}
	return &l, nil
}

// executeSandboxed runs the action through the sandbox helper.
func (s *Shell) executeSandboxed(ctx, runCtx context.Context, a Action, limits sandbox.Limits, stdout, stderr io.Writer) Result {
	sb, err := sandbox.New(limits)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: err.Error()}
	}
	defer sb.Close()
	uid, gid := sb.Owner()
	name, args, cleanup, err := s.command(a, sb.TempDir, uid, gid)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: err.Error()}
	}
	defer cleanup()
	helper := s.Helper
	if helper == "" {
		if helper, err = os.Executable(); err != nil {
			return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("sandbox helper: %v", err)}
		}
	}
	// Not the agent's environment (it may hold the agent's secrets): a
	// plain one, the private directory, then the action's. It travels
	// inside the helper's configuration, so nothing in it can reach the
	// helper while it is still root.
	env := append(append(plainEnv(), sb.Env()...), s.actionEnv(a)...)
	cmd, err := sb.Command(helper, env, name, args...)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: err.Error()}
	}
	if a.WorkingDir != "" {
		cmd.Dir = a.WorkingDir
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	res := s.run(ctx, runCtx, a, cmd, sb, nil)
	if cpuLimitSignal != "" && res.Error == "killed by signal "+cpuLimitSignal {
		res.Error = fmt.Sprintf("stopped by the sandbox: cpu time limit of %s reached", limits.CPU)
	}
	return res
}

// watchSandbox reports the first limit the action hits, looking every
// 100ms until stop closes.
func watchSandbox(sb *sandbox.Sandbox, tripped chan<- string, stop <-chan struct{}) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if reason := sb.Tripped(); reason != "" {
				tripped <- reason
				return
			}
		}
	}
}
