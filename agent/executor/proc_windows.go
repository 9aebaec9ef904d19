//go:build windows

package executor

import (
	"os"
	"os/exec"
	"syscall"
	"unsafe"

	"golang.org/x/sys/windows"
)

// The Windows side: an action's process and its children are kept in a
// job object, which a cancel or timeout terminates as a whole; no run_as
// (lookupRunAs refuses: Windows ids are not numeric). This file is built
// by make cross (GOOS=windows) but not run here: there is no Windows host.

type credential struct{}

func newCredential(uint32, uint32, []uint32) *credential { return nil }

func procAttr(*credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{CreationFlags: syscall.CREATE_NEW_PROCESS_GROUP}
}

// procTree is an action's process and everything it starts: a job object
// the process was put in right after it started (a child started in
// that instant escapes it; children inherit the job after that).
type procTree struct {
	pid int
	job windows.Handle // 0: no job object (creating it failed): the process alone
}

// trackTree puts the started process in a new job object that kills its
// members when the last handle to it closes.
func trackTree(p *os.Process) procTree {
	t := procTree{pid: p.Pid}
	job, err := windows.CreateJobObject(nil, nil)
	if err != nil {
		return t
	}
	info := windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION{
		BasicLimitInformation: windows.JOBOBJECT_BASIC_LIMIT_INFORMATION{LimitFlags: windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE},
	}
	if _, err := windows.SetInformationJobObject(job, windows.JobObjectExtendedLimitInformation,
		uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info))); err != nil {
		_ = windows.CloseHandle(job)
		return t
	}
	proc, err := windows.OpenProcess(windows.PROCESS_SET_QUOTA|windows.PROCESS_TERMINATE, false, uint32(p.Pid))
	if err != nil {
		_ = windows.CloseHandle(job)
		return t
	}
	defer windows.CloseHandle(proc)
	if err := windows.AssignProcessToJobObject(job, proc); err != nil {
		_ = windows.CloseHandle(job)
		return t
	}
	t.job = job
	return t
}

// signal ends the whole tree (Windows has no gentler signal to send).
func (t procTree) signal(syscall.Signal) {
	if t.job != 0 {
		_ = windows.TerminateJobObject(t.job, 1)
		return
	}
	_ = killPID(t.pid)
}

// release closes the job object, which also ends any member left.
func (t procTree) release() {
	if t.job != 0 {
		_ = windows.CloseHandle(t.job)
	}
}

func killPID(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

func signalOf(*exec.ExitError) (string, bool) { return "", false }

const cpuLimitSignal = ""
