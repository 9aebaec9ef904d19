package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opsconductor/opsconductor/agent/sandbox"
)

// Shell runs actions on the local host with /bin/sh, each in its own
// process group so a timeout or cancel stops everything the action started.
//
// spec run_as names a user to run the action as (the agent must be root);
// HOME and the default working directory are then that user's.
//
// An action may ask for a sandbox in its spec (sandbox "true", and
// sandbox_user, sandbox_memory such as 256M, sandbox_processes,
// sandbox_cpu such as 30s, sandbox_open_files), and the agent may impose
// one on every action (Sandbox); then an action's own limits may only be
// lower. See package sandbox for what it confines.
type Shell struct {
	// ExtraEnv is added to every action's environment (after the agent's
	// own, before the action's).
	ExtraEnv map[string]string
	// KillGrace is how long a stopped action gets between SIGTERM and
	// SIGKILL (default 3s).
	KillGrace time.Duration
	// Sandbox, when set, confines every action (the agent's policy).
	Sandbox *sandbox.Limits
	// Defaults are the user and limits of an action that asks for a
	// sandbox when Sandbox is not set; its spec may change them.
	Defaults *sandbox.Limits
	// Helper is the binary that applies a sandbox (it must call
	// sandbox.Main on sandbox.HelperArg); default this process's own.
	Helper string
	// DropEnv are variables (or prefixes, ending in "_") of this
	// process's environment that actions must not see.
	DropEnv []string
}

var _ Executor = (*Shell)(nil)

// Execute implements Executor.
func (s *Shell) Execute(ctx context.Context, a Action, stdout, stderr io.Writer) Result {
	limits, err := s.sandboxLimits(a.Spec)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: err.Error()}
	}
	if a.Upload != nil {
		// The agent writes uploads itself: nothing to confine them.
		if limits != nil || a.Spec["run_as"] != "" {
			return Result{Status: StatusFailed, ExitCode: -1, Error: "uploads are not allowed in a sandbox or with run_as"}
		}
		return uploadLocal(a.Upload, stdout)
	}
	runCtx := ctx
	if a.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, a.Timeout)
		defer cancel()
	}
	if limits != nil {
		return s.executeSandboxed(ctx, runCtx, a, *limits, stdout, stderr)
	}
	runAs, err := lookupRunAs(a.Spec["run_as"])
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: err.Error()}
	}
	name, args, cleanup, err := s.command(a, "", runAs.uid, runAs.gid)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: err.Error()}
	}
	defer cleanup()

	cmd := exec.Command(name, args...)
	cmd.Dir = a.WorkingDir
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Env = s.environ()
	if runAs.cred != nil {
		if cmd.Dir == "" {
			cmd.Dir = "/"
			if fi, err := os.Stat(runAs.home); err == nil && fi.IsDir() {
				cmd.Dir = runAs.home
			}
		}
		// Not the agent's environment: it is root's business.
		cmd.Env = append(plainEnv(), "HOME="+runAs.home, "USER="+runAs.name, "LOGNAME="+runAs.name)
	}
	cmd.Env = append(cmd.Env, s.actionEnv(a)...)
	return s.run(ctx, runCtx, a, cmd, nil, runAs.cred)
}

// environ is this process's environment without DropEnv.
func (s *Shell) environ() []string {
	env := os.Environ()
	if len(s.DropEnv) == 0 {
		return env
	}
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, d := range s.DropEnv {
			if name == d || (strings.HasSuffix(d, "_") && strings.HasPrefix(name, d)) {
				drop = true
			}
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// actionEnv is what an action adds to its environment: the executor's
// ExtraEnv, then the action's own.
func (s *Shell) actionEnv(a Action) []string {
	var env []string
	for k, v := range s.ExtraEnv {
		env = append(env, k+"="+v)
	}
	for k, v := range a.Env {
		env = append(env, k+"="+v)
	}
	return env
}

// plainEnv is the environment an action run as another user starts from.
func plainEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
}

// run starts cmd (its Dir, output and environment set) in a process group of its own, and waits for it, stopping
// the group when runCtx ends. sb, when set, is the action's sandbox: a
// limit it hits stops the action and is reported.
func (s *Shell) run(ctx, runCtx context.Context, a Action, cmd *exec.Cmd, sb *sandbox.Sandbox, cred *credential) Result {
	cmd.SysProcAttr = procAttr(cred)
	// A background child that keeps stdout open must not hold the action
	// forever once the shell itself has exited.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("start: %v", err)}
	}
	tree := trackTree(cmd.Process)
	defer tree.release()

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var tripped <-chan string
	if sb != nil {
		watch := make(chan string, 1)
		tripped = watch
		stopWatch := make(chan struct{})
		defer close(stopWatch)
		go watchSandbox(sb, watch, stopWatch)
	}
	select {
	case reason := <-tripped:
		// A limit was hit: stop everything now rather than let a fork
		// bomb spin against its ceiling until the timeout.
		tree.signal(syscall.SIGKILL)
		sb.Kill()
		<-done
		return Result{Status: StatusFailed, ExitCode: -1, Error: "stopped by the sandbox: " + reason}
	case err := <-done:
		// The action's leftovers (background children) go with it.
		tree.signal(syscall.SIGKILL)
		if sb != nil {
			sb.Kill()
			if reason := trippedAfterExit(sb, cmd.ProcessState); reason != "" {
				return Result{Status: StatusFailed, ExitCode: -1, Error: "stopped by the sandbox: " + reason}
			}
		}
		if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil {
			// The shell exited; a child it left behind kept the output
			// open and was stopped. The shell's own exit status counts.
			if cmd.ProcessState.Success() {
				err = nil
			} else {
				err = &exec.ExitError{ProcessState: cmd.ProcessState}
			}
		}
		return exitResult(err)
	case <-runCtx.Done():
	}
	s.stopGroup(tree, done)
	if sb != nil {
		sb.Kill()
	}
	if ctx.Err() != nil {
		return Result{Status: StatusCancelled, ExitCode: -1, Error: "cancelled"}
	}
	return Result{Status: StatusTimedOut, ExitCode: -1, Error: fmt.Sprintf("timed out after %s; its process group was killed", a.Timeout)}
}

// stopGroup sends SIGTERM to the action's process tree, then SIGKILL
// after the grace period, and waits for the process to be reaped.
func (s *Shell) stopGroup(tree procTree, done <-chan error) {
	grace := s.KillGrace
	if grace <= 0 {
		grace = 3 * time.Second
	}
	tree.signal(syscall.SIGTERM)
	select {
	case <-done:
		tree.signal(syscall.SIGKILL)
		return
	case <-time.After(grace):
	}
	tree.signal(syscall.SIGKILL)
	<-done
}

func exitResult(err error) Result {
	if err == nil {
		return Result{Status: StatusSucceeded, ExitCode: 0}
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code := exitErr.ExitCode()
		if sig, ok := signalOf(exitErr); ok {
			return Result{Status: StatusFailed, ExitCode: -1, Error: "killed by signal " + sig}
		}
		return Result{Status: StatusFailed, ExitCode: code, Error: fmt.Sprintf("exited with code %d", code)}
	}
	return Result{Status: StatusFailed, ExitCode: -1, Error: err.Error()}
}

// command returns how to run the action: `sh -c COMMAND`, `sh -c SCRIPT`,
// or a script with its own #! line run from a temporary file (in dir,
// owned by uid:gid when they are not -1).
func (s *Shell) command(a Action, dir string, uid, gid int) (string, []string, func(), error) {
	noop := func() {}
	switch {
	case a.Command != "":
		return "/bin/sh", []string{"-c", a.Command}, noop, nil
	case strings.HasPrefix(a.Script, "#!"):
		f, err := os.CreateTemp(dir, "opsconductor-script-*")
		if err != nil {
			return "", nil, noop, fmt.Errorf("write script: %w", err)
		}
		cleanup := func() { _ = os.Remove(f.Name()) }
		if _, err := f.WriteString(a.Script); err != nil {
			f.Close()
			cleanup()
			return "", nil, noop, fmt.Errorf("write script: %w", err)
		}
		if err := f.Chmod(0o700); err != nil {
			f.Close()
			cleanup()
			return "", nil, noop, err
		}
		if err := f.Chown(uid, gid); err != nil {
			f.Close()
			cleanup()
			return "", nil, noop, err
		}
		if err := f.Close(); err != nil {
			cleanup()
			return "", nil, noop, err
		}
		return f.Name(), nil, cleanup, nil
	case a.Script != "":
		return "/bin/sh", []string{"-c", a.Script}, noop, nil
	default:
		return "", nil, noop, errors.New("action has neither command nor script")
	}
}

// uploadLocal writes u on this host: to a temporary file next to the
// destination, then renamed over it, so readers never see half a file.
func uploadLocal(u *Upload, stdout io.Writer) Result {
	fail := func(err error) Result {
		return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("upload to %s: %v", u.Destination, err)}
	}
	tmp, err := os.CreateTemp(filepath.Dir(u.Destination), ".opsconductor-upload-*")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(u.Content); err != nil {
		tmp.Close()
		return fail(err)
	}
	if err := tmp.Chmod(u.mode()); err != nil {
		tmp.Close()
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), u.Destination); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "uploaded %d bytes to %s\n", len(u.Content), u.Destination)
	return Result{Status: StatusSucceeded}
}

// runAs is the user a local action runs as (spec run_as); the zero value
// is the agent's own user.
type runAs struct {
	name, home string
	uid, gid   int
	cred       *credential
}

// lookupRunAs resolves spec run_as: the user, its primary and
// supplementary groups and home. Switching needs the agent to be root.
func lookupRunAs(name string) (runAs, error) {
	if name == "" {
		return runAs{uid: -1, gid: -1}, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return runAs{}, fmt.Errorf("spec.run_as: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return runAs{}, fmt.Errorf("spec.run_as: user %q has a non-numeric id", name)
	}
	if uint64(os.Getuid()) != uid && os.Getuid() != 0 {
		return runAs{}, fmt.Errorf("spec.run_as: running as %q needs the agent to run as root", name)
	}
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, g := range ids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				groups = append(groups, uint32(n))
			}
		}
	}
	return runAs{name: name, home: u.HomeDir, uid: int(uid), gid: int(gid),
		cred: newCredential(uint32(uid), uint32(gid), groups)}, nil
}

// trippedAfterExit is sb.Tripped for an action that exited. The kernel's
// OOM killer sends its SIGKILL before it counts the kill in the cgroup,
// so a process it killed can be reaped before the count shows: a SIGKILL
// exit is given up to 100 ms for it (seen under load in CI).
func trippedAfterExit(sb *sandbox.Sandbox, ps *os.ProcessState) string {
	reason := sb.Tripped()
	ws, ok := sysWaitStatus(ps)
	if reason != "" || !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return reason
	}
	for range 10 {
		time.Sleep(10 * time.Millisecond)
		if reason = sb.Tripped(); reason != "" {
			break
		}
	}
	return reason
}

func sysWaitStatus(ps *os.ProcessState) (syscall.WaitStatus, bool) {
	var ws syscall.WaitStatus
	if ps == nil {
		return ws, false
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	return ws, ok
}
