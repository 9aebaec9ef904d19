//go:build windows

package executor

import (
	"os"
	"os/exec"
	"syscall"
)

// The Windows side: no process groups to signal (the action's own process
// is killed; its children are not, until job objects are used) and no
// run_as (lookupRunAs refuses: Windows ids are not numeric).

type credential struct{}

func newCredential(uint32, uint32, []uint32) *credential { return nil }

func procAttr(*credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{CreationFlags: syscall.CREATE_NEW_PROCESS_GROUP}
}

func signalGroup(pid int, _ syscall.Signal) { _ = killPID(pid) }

func killPID(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

func signalOf(*exec.ExitError) (string, bool) { return "", false }

const cpuLimitSignal = ""
