// Package sandbox confines a local action. It runs as an unprivileged
// user, with resource limits (CPU time, memory, processes, open files),
// in a private temporary directory, with no new privileges (setuid
// binaries such as sudo lose their power), and, where the agent can manage
// cgroups (v1 memory and pids hierarchies, or v2), in a cgroup of its own
// that holds the memory and process limits for the whole action, however
// many processes it starts, and tells when a limit was hit.
//
// The confinement is applied by a helper: the agent binary run again with
// HelperArg, which joins the cgroup, lowers its limits, drops to the user
// and then executes the action. Every binary that uses Sandbox must call
// Main first thing when its first argument is HelperArg.
package sandbox

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// HelperArg is the first argument that makes a binary act as the helper.
const HelperArg = "__opsconductor_sandbox"

// Limits say how an action is confined.
type Limits struct {
	// User the action runs as (required); the agent must run as root to
	// switch to another user.
	User string
	// Memory in bytes for the whole action (0: no limit).
	Memory int64
	// Processes the action may have at once (0: no limit).
	Processes int
	// CPU time each process may use (0: no limit).
	CPU time.Duration
	// OpenFiles each process may hold (0: the host's default).
	OpenFiles int
}

// Describe is the limits in words, for logs and errors.
func (l Limits) Describe() string {
	parts := []string{"user " + l.User}
	if l.Memory > 0 {
		parts = append(parts, "memory "+FormatBytes(l.Memory))
	}
	if l.Processes > 0 {
		parts = append(parts, fmt.Sprintf("%d processes", l.Processes))
	}
	if l.CPU > 0 {
		parts = append(parts, "cpu "+l.CPU.String())
	}
	if l.OpenFiles > 0 {
		parts = append(parts, fmt.Sprintf("%d open files", l.OpenFiles))
	}
	return strings.Join(parts, ", ")
}

// FormatBytes writes a size the way limits are given: 64MiB, 1GiB, 512KiB.
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// ParseBytes reads a size: a number with an optional K, M or G suffix
// (powers of 1024; "B", "i" and "iB" allowed after it).
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "B"), "i")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K', 'k':
			mult, t = 1<<10, t[:len(t)-1]
		case 'M', 'm':
			mult, t = 1<<20, t[:len(t)-1]
		case 'G', 'g':
			mult, t = 1<<30, t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("want a size such as 256M or 1G, got %q", s)
	}
	return n * mult, nil
}
