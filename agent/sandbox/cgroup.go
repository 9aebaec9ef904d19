//go:build linux

package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupRoot is where cgroup file systems are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// cgroup is one action's cgroup: on v2 one directory, on v1 one in the
// memory and one in the pids hierarchy.
type cgroup struct {
	v2     bool
	memory string // directory holding the memory limit ("" when none)
	pids   string // directory holding the process limit ("" when none)
}

// newCgroup creates the action's cgroup with the limits (0: none) under
// opsconductor/ in each hierarchy it needs, or fails when the host offers
// no cgroup the agent may manage.
func newCgroup(name string, memory int64, processes int) (*cgroup, error) {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		return newCgroupV2(name, memory, processes)
	}
	c := &cgroup{}
	if memory > 0 {
		dir, err := mkCgroup(filepath.Join(cgroupRoot, "memory"), name)
		if err != nil {
			return nil, err
		}
		c.memory = dir
		if err := write(dir, "memory.limit_in_bytes", strconv.FormatInt(memory, 10)); err != nil {
			c.remove()
			return nil, err
		}
		// No swapping past the limit either, where swap is accounted.
		_ = write(dir, "memory.memsw.limit_in_bytes", strconv.FormatInt(memory, 10))
	}
	if processes > 0 {
		dir, err := mkCgroup(filepath.Join(cgroupRoot, "pids"), name)
		if err != nil {
			c.remove()
			return nil, err
		}
		c.pids = dir
		if err := write(dir, "pids.max", strconv.Itoa(processes)); err != nil {
			c.remove()
			return nil, err
		}
	}
	return c, nil
}

func newCgroupV2(name string, memory int64, processes int) (*cgroup, error) {
	parent := filepath.Join(cgroupRoot, "opsconductor")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	// The controllers must be enabled from the root down to our parent.
	for _, dir := range []string{cgroupRoot, parent} {
		if err := write(dir, "cgroup.subtree_control", "+memory +pids"); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	c := &cgroup{v2: true, memory: dir, pids: dir}
	if memory > 0 {
		if err := write(dir, "memory.max", strconv.FormatInt(memory, 10)); err != nil {
			c.remove()
			return nil, err
		}
		_ = write(dir, "memory.swap.max", "0")
	}
	if processes > 0 {
		if err := write(dir, "pids.max", strconv.Itoa(processes)); err != nil {
			c.remove()
			return nil, err
		}
	}
	return c, nil
}

// mkCgroup makes hierarchy/opsconductor/name, checking the hierarchy is a
// cgroup file system we may write.
func mkCgroup(hierarchy, name string) (string, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(hierarchy, &fs); err != nil {
		return "", fmt.Errorf("cgroup %s: %w", hierarchy, err)
	}
	if fs.Type != 0x27e0eb { // CGROUP_SUPER_MAGIC
		return "", fmt.Errorf("cgroup %s: not a cgroup v1 hierarchy", hierarchy)
	}
	dir := filepath.Join(hierarchy, "opsconductor", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	return dir, nil
}

func write(dir, file, value string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
		return fmt.Errorf("cgroup: write %s: %w", filepath.Join(dir, file), err)
	}
	return nil
}

// dirs are the cgroup's directories, each once.
func (c *cgroup) dirs() []string {
	var out []string
	for _, d := range []string{c.memory, c.pids} {
		if d != "" && (len(out) == 0 || out[0] != d) {
			out = append(out, d)
		}
	}
	return out
}

// procs are the files a process writes its pid to, to join.
func (c *cgroup) procs() []string {
	var out []string
	for _, d := range c.dirs() {
		out = append(out, filepath.Join(d, "cgroup.procs"))
	}
	return out
}

// counter reads "key N" from a flat keyed file; 0 when absent.
func counter(path, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

func (c *cgroup) oomKills() int64 {
	if c.memory == "" {
		return 0
	}
	if c.v2 {
		return counter(filepath.Join(c.memory, "memory.events"), "oom_kill")
	}
	return counter(filepath.Join(c.memory, "memory.oom_control"), "oom_kill")
}

func (c *cgroup) pidsMaxHits() int64 {
	if c.pids == "" {
		return 0
	}
	return counter(filepath.Join(c.pids, "pids.events"), "max")
}

// members are the pids in the cgroup.
func (c *cgroup) members() []int {
	var out []int
	for _, p := range c.procs() {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(raw)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

// killAll SIGKILLs every process in the cgroup until it is empty (a fork
// bomb keeps adding some while we kill), for at most a few seconds.
func (c *cgroup) killAll() {
	if c.v2 {
		if err := write(c.memory, "cgroup.kill", "1"); err == nil {
			c.waitEmpty(5 * time.Second)
			return
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		pids := c.members()
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cgroup) waitEmpty(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for len(c.members()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// remove deletes the cgroup's directories (they must be empty of
// processes; the kernel refuses otherwise, and that is only logged away).
func (c *cgroup) remove() {
	var errs []error
	for _, d := range c.dirs() {
		for i := 0; i < 50; i++ {
			err := os.Remove(d)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			if i == 49 {
				errs = append(errs, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	_ = errors.Join(errs...)
}

// SweepCgroups removes the action cgroups left empty by a helper or shell
// plugin that died before cleaning up. A cgroup with processes in it is
// refused by the kernel and stays.
func SweepCgroups() {
	var parents []string
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		parents = []string{filepath.Join(cgroupRoot, "opsconductor")}
	} else {
		parents = []string{filepath.Join(cgroupRoot, "memory", "opsconductor"), filepath.Join(cgroupRoot, "pids", "opsconductor")}
	}
	for _, p := range parents {
		entries, err := os.ReadDir(p)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), "action-") {
				_ = os.Remove(filepath.Join(p, e.Name()))
			}
		}
	}
}
