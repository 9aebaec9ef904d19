//go:build linux

package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// configEnv carries the helper's instructions.
const configEnv = "OPSCONDUCTOR_SANDBOX_CONFIG"

// config is what the helper needs.
type config struct {
	UID, GID    uint32
	SwitchUser  bool
	Dir         string
	CgroupProcs []string // cgroup.procs files to join
	Memory      int64    // RLIMIT_AS when no cgroup holds the memory
	Processes   int      // RLIMIT_NPROC when no cgroup holds the count
	CPUSeconds  uint64
	OpenFiles   uint64
	Env         []string // the action's whole environment
}

// Sandbox is the confinement of one action.
type Sandbox struct {
	limits Limits
	cfg    config
	cg     *cgroup // nil: no cgroup on this host
	// TempDir is the action's private temporary directory (also its
	// HOME, TMPDIR and default working directory).
	TempDir string
}

// New prepares a sandbox: resolves the user, creates the private
// temporary directory and, where possible, the cgroup. Close undoes it.
func New(limits Limits) (*Sandbox, error) {
	if limits.User == "" {
		return nil, errors.New("sandbox: no user to run as")
	}
	u, err := user.Lookup(limits.User)
	if err != nil {
		return nil, fmt.Errorf("sandbox: user %q: %w", limits.User, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("sandbox: user %q has a non-numeric id", limits.User)
	}
	if uid == 0 {
		return nil, fmt.Errorf("sandbox: user %q is root: name an unprivileged user", limits.User)
	}
	switchUser := uint64(os.Getuid()) != uid
	if switchUser && os.Getuid() != 0 {
		return nil, fmt.Errorf("sandbox: running as user %q needs the agent to run as root", limits.User)
	}
	s := &Sandbox{limits: limits}
	dir, err := os.MkdirTemp("", "opsconductor-sandbox-*")
	if err != nil {
		return nil, fmt.Errorf("sandbox: private temp dir: %w", err)
	}
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("sandbox: private temp dir: %w", err)
	}
	s.TempDir = dir
	s.cfg = config{UID: uint32(uid), GID: uint32(gid), SwitchUser: switchUser, Dir: dir, OpenFiles: uint64(limits.OpenFiles)}
	if limits.CPU > 0 {
		s.cfg.CPUSeconds = uint64(max(limits.CPU/time.Second, 1))
	}
	if limits.Memory > 0 || limits.Processes > 0 {
		s.cg, err = newCgroup(randomName(), limits.Memory, limits.Processes)
		if err != nil {
			// No cgroup: per-process limits stand in (less precise, and
			// a hit cannot be told apart from another failure).
			s.cg = nil
		}
	}
	if s.cg != nil {
		s.cfg.CgroupProcs = s.cg.procs()
	} else {
		s.cfg.Memory, s.cfg.Processes = limits.Memory, limits.Processes
	}
	return s, nil
}

// Owner is the uid and gid the action runs as.
func (s *Sandbox) Owner() (int, int) { return int(s.cfg.UID), int(s.cfg.GID) }

// HasCgroup reports whether a cgroup holds the memory and process limits.
func (s *Sandbox) HasCgroup() bool { return s.cg != nil }

// Command returns how to run name with args, and env as its whole
// environment, in the sandbox: through the helper binary (the agent
// itself), whose own environment is only its configuration. The caller
// sets output and process attributes (not Env), and starts it.
func (s *Sandbox) Command(helper string, env []string, name string, args ...string) (*exec.Cmd, error) {
	cfg := s.cfg
	cfg.Env = env
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(helper, append([]string{HelperArg, name}, args...)...)
	cmd.Env = []string{configEnv + "=" + string(raw)}
	cmd.Dir = s.TempDir
	return cmd, nil
}

// Env is the environment an action gets in the sandbox besides its own:
// HOME and TMPDIR point at the private directory.
func (s *Sandbox) Env() []string {
	return []string{"HOME=" + s.TempDir, "TMPDIR=" + s.TempDir, "USER=" + s.limits.User, "LOGNAME=" + s.limits.User}
}

// Tripped says which limit the action hit, "" when none (or when no cgroup
// can tell).
func (s *Sandbox) Tripped() string {
	if s.cg == nil {
		return ""
	}
	switch {
	case s.cg.oomKills() > 0:
		return fmt.Sprintf("memory limit of %s reached (the kernel killed a process)", FormatBytes(s.limits.Memory))
	case s.cg.pidsMaxHits() > 0:
		return fmt.Sprintf("process limit of %d reached (a fork was refused)", s.limits.Processes)
	}
	return ""
}

// Kill ends every process in the sandbox's cgroup (the process group is
// the caller's to kill; a cgroup also catches what left it).
func (s *Sandbox) Kill() {
	if s.cg != nil {
		s.cg.killAll()
	}
}

// Close kills what is left, removes the cgroup and the temp directory.
func (s *Sandbox) Close() {
	if s.cg != nil {
		s.cg.killAll()
		s.cg.remove()
	}
	_ = os.RemoveAll(s.TempDir)
}

// Main is the helper: it joins the cgroup, sets the limits, drops to the
// user, forbids new privileges and executes the action. It never returns.
func Main() {
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "sandbox: "+format+"\n", args...)
		os.Exit(126)
	}
	if len(os.Args) < 3 || os.Args[1] != HelperArg {
		fail("usage: %s %s COMMAND [ARG...]", os.Args[0], HelperArg)
	}
	var cfg config
	if err := json.Unmarshal([]byte(os.Getenv(configEnv)), &cfg); err != nil {
		fail("no configuration: %v", err)
	}
	os.Unsetenv(configEnv)
	pid := []byte(strconv.Itoa(os.Getpid()))
	for _, procs := range cfg.CgroupProcs {
		if err := os.WriteFile(procs, pid, 0); err != nil {
			fail("join cgroup %s: %v", procs, err)
		}
	}
	set := func(resource int, v uint64, what string) {
		if err := syscall.Setrlimit(resource, &syscall.Rlimit{Cur: v, Max: v}); err != nil {
			fail("limit %s: %v", what, err)
		}
	}
	if cfg.Memory > 0 {
		set(syscall.RLIMIT_AS, uint64(cfg.Memory), "memory")
	}
	if cfg.CPUSeconds > 0 {
		set(syscall.RLIMIT_CPU, cfg.CPUSeconds, "cpu time")
	}
	if cfg.OpenFiles > 0 {
		set(syscall.RLIMIT_NOFILE, cfg.OpenFiles, "open files")
	}
	if cfg.Processes > 0 {
		set(rlimitNPROC, uint64(cfg.Processes), "processes")
	}
	if cfg.SwitchUser {
		if err := syscall.Setgroups(nil); err != nil {
			fail("drop groups: %v", err)
		}
		if err := syscall.Setgid(int(cfg.GID)); err != nil {
			fail("set group %d: %v", cfg.GID, err)
		}
		if err := syscall.Setuid(int(cfg.UID)); err != nil {
			fail("set user %d: %v", cfg.UID, err)
		}
	}
	if err := noNewPrivs(); err != nil {
		fail("no_new_privs: %v", err)
	}
	path := os.Args[2]
	if !strings.Contains(path, "/") {
		// Looked up in the action's PATH, not the helper's (it has none).
		for _, kv := range cfg.Env {
			if dirs, ok := strings.CutPrefix(kv, "PATH="); ok {
				for _, d := range strings.Split(dirs, ":") {
					if fi, err := os.Stat(d + "/" + path); err == nil && !fi.IsDir() {
						path = d + "/" + path
						break
					}
				}
			}
		}
	}
	if err := syscall.Exec(path, os.Args[2:], cfg.Env); err != nil {
		fail("exec %s: %v", path, err)
	}
}

func randomName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "action-" + hex.EncodeToString(b[:])
}
