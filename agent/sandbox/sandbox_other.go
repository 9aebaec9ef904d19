//go:build !linux

package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// errNotLinux: the confinement (users, rlimits, cgroups, no_new_privs)
// is Linux's; elsewhere a sandboxed action is refused, not run unconfined.
var errNotLinux = errors.New("sandboxed actions need a Linux agent")

// Sandbox is the confinement of one action (never made on this OS).
type Sandbox struct {
	// TempDir is the action's private temporary directory.
	TempDir string
}

// New refuses: there is no sandbox on this OS.
func New(Limits) (*Sandbox, error) { return nil, errNotLinux }

// Owner is the user and group the action runs as.
func (s *Sandbox) Owner() (int, int) { return -1, -1 }

// HasCgroup reports whether a cgroup holds the limits.
func (s *Sandbox) HasCgroup() bool { return false }

// Command is never reached (New refuses).
func (s *Sandbox) Command(string, []string, string, ...string) (*exec.Cmd, error) {
	return nil, errNotLinux
}

// Env is the action's environment.
func (s *Sandbox) Env() []string { return nil }

// Tripped says which limit was hit.
func (s *Sandbox) Tripped() string { return "" }

// Kill stops the action.
func (s *Sandbox) Kill() {}

// Close undoes New.
func (s *Sandbox) Close() {}

// Main is the helper's entry point: on this OS it only refuses.
func Main() {
	fmt.Fprintln(os.Stderr, errNotLinux)
	os.Exit(126)
}

// SweepCgroups removes the cgroups a crashed agent left (none here).
func SweepCgroups() {}
