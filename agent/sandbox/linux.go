//go:build linux

package sandbox

import (
	"golang.org/x/sys/unix"
)

// rlimitNPROC is RLIMIT_NPROC, which package syscall does not name.
const rlimitNPROC = unix.RLIMIT_NPROC

// noNewPrivs sets PR_SET_NO_NEW_PRIVS: exec can no longer grant
// privileges (setuid and file capabilities stop working).
func noNewPrivs() error {
	return unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
}
