//go:build !windows

package executor

import (
	"os"
	"os/exec"
	"syscall"
)

// What a local action's process needs from the OS, Unix side: a process
// group of its own (so its children go with it) and, with run_as, another
// user's credentials.

type credential = syscall.Credential

func newCredential(uid, gid uint32, groups []uint32) *credential {
	return &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}
}

func procAttr(cred *credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}

// procTree is an action's process and everything it starts: on Unix its
// process group.
type procTree struct{ pid int }

// trackTree follows the tree of a started action's process.
func trackTree(p *os.Process) procTree { return procTree{pid: p.Pid} }

// signal sends sig to the whole tree.
func (t procTree) signal(sig syscall.Signal) { signalGroup(t.pid, sig) }

// release lets go of what tracking needed (nothing on Unix).
func (t procTree) release() {}

// signalGroup sends sig to the process group led by pid.
func signalGroup(pid int, sig syscall.Signal) { _ = syscall.Kill(-pid, sig) }

// killPID kills one process.
func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// signalOf is the signal that ended the process, if one did.
func signalOf(err *exec.ExitError) (string, bool) {
	if ws, ok := err.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ws.Signal().String(), true
	}
	return "", false
}

// cpuLimitSignal is what a process gets when it exceeds RLIMIT_CPU.
var cpuLimitSignal = syscall.SIGXCPU.String()
