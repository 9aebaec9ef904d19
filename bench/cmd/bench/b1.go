package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// B1: SSH fan-out. `uptime` on 50, 200 and 500 targets, one 127.x
// address each, all served by one OpenSSH sshd inside a network namespace
// of the harness's own (`unshare -n`), concurrency 50 for every tool: our
// jump agent (fresh connections, and connections kept by --ssh-persist)
// against Ansible's raw module (pipelining, ControlPersist, cold and
// warm), Ansible with Mitogen, parallel-ssh, clush, and `xargs -P 50 ssh`
// (with OpenSSH's default key exchange, and with curve25519-sha256, the
// fair floor for a Go client). Contenders are interleaved round by round;
// each figure is the median of the rounds.
//
// The outer process installs what is missing from Debian, makes sure the
// remote user exists and builds our binaries; then it runs itself again in
// network, PID and mount namespaces of its own (`unshare --net --pid
// --fork --kill-child --mount-proc`, b1InsideEnv set), where the control
// plane uses its embedded store (the machine's PostgreSQL is not on the
// namespace's loopback) and where the kernel ends every process left
// (Ansible's master connections, sshd's children) when the run ends.
// It needs root.

const (
	b1InsideEnv = "OPSCONDUCTOR_B1_INSIDE" // the work directory, set in the namespace
	b1WorkerEnv = "OPSCONDUCTOR_B1_WORKER" // set for the run under the namespace's init
	b1User      = "opsconductor-test"      // the remote user: its shell is /bin/sh, nothing to source
	b1Fanout    = 50
)

// b1Packages are the Debian packages B1 needs, by the command that shows
// each is installed.
var b1Packages = []struct{ command, pkg string }{
	{"/usr/sbin/sshd", "openssh-server"},
	{"/usr/bin/ansible", "ansible-core"},
	{"/usr/lib/python3/dist-packages/ansible_mitogen", "ansible-mitogen"},
	{"/usr/bin/parallel-ssh", "pssh"},
	{"/usr/bin/clush", "clustershell"},
}

func runB1(ctx context.Context, size string) ([]Row, error) {
	if dir := os.Getenv(b1InsideEnv); dir != "" {
		switch {
		case os.Getpid() == 1:
			return nil, b1Init()
		case os.Getenv(b1WorkerEnv) != "" && os.Getppid() == 1:
			return runB1Inside(ctx, dir, size)
		}
		return nil, fmt.Errorf("%s is set but this is not the namespaces B1 makes (pid %d)", b1InsideEnv, os.Getpid())
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("b1 needs root: it makes namespaces (unshare), starts sshd and may install packages and create the user %s", b1User)
	}
	var missing []string
	for _, p := range b1Packages {
		if _, err := os.Stat(p.command); err != nil {
			missing = append(missing, p.pkg)
		}
	}
	if len(missing) > 0 {
		// ansible-core recommends the 258 MB ansible package: not needed.
		fmt.Fprintf(os.Stderr, "bench: b1: installing %s from Debian\n", strings.Join(missing, " "))
		cmd := exec.CommandContext(ctx, "sh", "-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends "+strings.Join(missing, " "))
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			// Go on with what is there: the table says what was not run.
			fmt.Fprintf(os.Stderr, "bench: b1: apt-get install failed (%v): %s\n", err, tail(out, 500))
		}
	}
	if err := exec.CommandContext(ctx, "id", b1User).Run(); err != nil {
		// "*": no password, yet not locked (sshd refuses locked accounts).
		if out, err := exec.CommandContext(ctx, "useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", b1User).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("b1: create the remote user %s: %v: %s", b1User, err, out)
		}
	}
	dir, err := os.MkdirTemp("", "opsconductor-b1-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// The remote user reads authorized_keys from here.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	if err := buildBinaries(ctx, dir); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	out := filepath.Join(dir, "b1-results.json")
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--", self, "-part", "b1", "-size", size, "-out", out)
	cmd.Env = append(os.Environ(), b1InsideEnv+"="+dir)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr // its rows come back through out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("b1 in its network namespace: %w", err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	var res Results
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, err
	}
	return res.Rows, nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// b1Init is PID 1 of B1's namespaces: it runs the part as its child and
// reaps every process that ends orphaned meanwhile (sshd's and Ansible's
// daemonised children are; unreaped, their zombies used up the machine's
// process ids within one run at 500 targets). It exits as the part does.
func b1Init() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	child, err := os.StartProcess(self, os.Args, &os.ProcAttr{
		Env:   append(os.Environ(), b1WorkerEnv+"=1"),
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
	})
	if err != nil {
		return fmt.Errorf("start b1 under the namespace's init: %w", err)
	}
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reap: %w", err)
		}
		if pid == child.Pid {
			os.Exit(ws.ExitStatus()) // 0: the worker wrote the results
		}
	}
}

// outcome is one timed run of one contender.
type outcome struct {
	wall       time.Duration
	cpu        float64 // the controller's CPU seconds (user + system)
	rss        float64 // the controller's peak resident memory, MiB
	machineCPU float64 // every process's CPU seconds, sshd included
	ok         int     // targets that answered
}

// contender is one tool of the comparison.
type contender struct {
	name       string
	maxTargets int  // 0: every size
	warmUp     bool // run once untimed before the timed run
	run        func(ctx context.Context, hosts []string) (outcome, error)
}

// b1Lab is what runs inside the namespace.
type b1Lab struct {
	dir        string
	sshConfig  string // for the OpenSSH-based tools
	key        string
	knownHost  string
	sshd       *process
	round      int    // counts runs: each cold Ansible run gets a new control directory
	controlDir string // the last cold Ansible run's, for the warm run after it
}

func runB1Inside(ctx context.Context, dir, size string) ([]Row, error) {
	sizes, rounds, roundsAt500 := []int{50, 200, 500}, 5, 3
	if size == "tiny" {
		sizes, rounds, roundsAt500 = []int{3}, 1, 1
	}
	// For a closer look at one tool: BENCH_B1_SIZES=50,200 runs those
	// sizes, BENCH_B1_ONLY=mitogen the contenders whose name holds it
	// (ours always run: the ratios need them).
	if v := os.Getenv("BENCH_B1_SIZES"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > 60000 {
				return nil, fmt.Errorf("BENCH_B1_SIZES: %q is not a number of targets", f)
			}
			sizes = append(sizes, n)
		}
	}
	only := os.Getenv("BENCH_B1_ONLY")
	if out, err := exec.CommandContext(ctx, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("b1: bring up the namespace's loopback: %v: %s", err, out)
	}
	// 500 connections at once, a few descriptors each.
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: 65536, Max: 65536})
	lab, err := newB1Lab(ctx, dir)
	if err != nil {
		return nil, err
	}
	cp, url, admin, err := startControlPlane(ctx, dir, dir, "sqlite:"+filepath.Join(dir, "db"))
	if err != nil {
		return nil, err
	}
	defer cp.stop()
	fresh, err := startJumpAgent(ctx, dir, url, admin, "b1-fresh")
	if err != nil {
		return nil, err
	}
	defer fresh.stop()
	// The same period as Ansible's ControlPersist.
	reuse, err := startJumpAgent(ctx, dir, url, admin, "b1-reuse", "--ssh-persist", "60s")
	if err != nil {
		return nil, err
	}
	defer reuse.stop()

	contenders := slices.DeleteFunc(lab.contenders(url, admin, cp, fresh, reuse), func(c contender) bool {
		return only != "" && !strings.HasPrefix(c.name, "opsconductor") && !strings.Contains(c.name, only)
	})
	// Which key exchange each negotiated, from sshd's own log, one
	// target each, before the timed runs.
	kex, err := lab.probeKex(ctx, contenders)
	if err != nil {
		return nil, err
	}
	if err := lab.startSSHD(ctx, "ERROR", filepath.Join(dir, "sshd.log")); err != nil {
		return nil, err
	}
	defer func() { lab.sshd.stop() }()

	rows := toolVersions(ctx)
	for _, n := range sizes {
		hosts := make([]string, n)
		for i := range hosts {
			hosts[i] = fmt.Sprintf("127.1.%d.%d", i/250, i%250+1)
		}
		r := rounds
		if n >= 500 {
			r = roundsAt500
		}
		results := map[string][]outcome{}
		for round := 0; round < r; round++ {
			for _, c := range contenders {
				if c.maxTargets > 0 && n > c.maxTargets {
					continue
				}
				lab.round++
				if c.warmUp {
					if _, err := c.run(ctx, hosts); err != nil {
						return nil, fmt.Errorf("b1 %s warm-up on %d: %w", c.name, n, err)
					}
				}
				o, err := c.run(ctx, hosts)
				if err != nil {
					return nil, fmt.Errorf("b1 %s on %d: %w", c.name, n, err)
				}
				fmt.Fprintf(os.Stderr, "bench: b1: %d targets, round %d: %-28s %7.2fs, %d ok\n", n, round+1, c.name, o.wall.Seconds(), o.ok)
				if size == "tiny" && o.ok != n {
					return nil, fmt.Errorf("b1 %s on %d targets: only %d answered", c.name, n, o.ok)
				}
				results[c.name] = append(results[c.name], o)
			}
		}
		rows = append(rows, b1Rows(n, contenders, results, kex)...)
	}
	return rows, nil
}

// b1Rows turns the runs at n targets into rows: medians with min and max,
// and the ratios the targets are about.
func b1Rows(n int, contenders []contender, results map[string][]outcome, kex map[string]string) []Row {
	var rows []Row
	wall := map[string]float64{}
	for _, c := range contenders {
		runs := results[c.name]
		if len(runs) == 0 {
			continue
		}
		walls := make([]float64, len(runs))
		var cpu, rss, machine, ok []float64
		for i, o := range runs {
			walls[i] = o.wall.Seconds()
			cpu, rss, machine, ok = append(cpu, o.cpu), append(rss, o.rss), append(machine, o.machineCPU), append(ok, float64(o.ok))
		}
		w := medianOf(walls)
		wall[c.name] = w
		name := fmt.Sprintf("%d targets: %s", n, c.name)
		rows = append(rows,
			Row{Part: "b1", Case: name, Metric: "wall", Value: w, Unit: "s", Note: fmt.Sprintf("median of %d (min %.2f, max %.2f); key exchange %s", len(walls), slices.Min(walls), slices.Max(walls), kex[c.name])},
			Row{Part: "b1", Case: name, Metric: "hosts/s", Value: float64(n) / w, Unit: "/s"},
			Row{Part: "b1", Case: name, Metric: "controller cpu", Value: medianOf(cpu), Unit: "s"},
			Row{Part: "b1", Case: name, Metric: "controller peak rss", Value: medianOf(rss), Unit: "MiB", Note: "its largest process"},
			Row{Part: "b1", Case: name, Metric: "machine cpu per host", Value: 1000 * medianOf(machine) / float64(n), Unit: "ms", Note: "every process, sshd included"},
			Row{Part: "b1", Case: name, Metric: "successes", Value: slices.Min(ok), Unit: "hosts", Note: fmt.Sprintf("fewest of %d runs, of %d", len(ok), n)},
		)
	}
	ratio := func(a, b, target string) {
		if wall[a] > 0 && wall[b] > 0 {
			rows = append(rows, Row{Part: "b1", Case: fmt.Sprintf("%d targets: %s vs %s", n, a, b), Metric: "speed-up", Value: wall[b] / wall[a], Unit: "x", Note: target})
		}
	}
	ratio("opsconductor, fresh", "ansible raw, cold", "target at 500: >= 5x")
	ratio("opsconductor, fresh", "parallel-ssh", "target at 500: >= 3x")
	ratio("opsconductor, fresh", "xargs ssh, curve25519", "target at 500: >= 1x (at or below the floor)")
	ratio("opsconductor, reused", "ansible raw, warm", "target at 500: >= 10x")
	return rows
}

// newB1Lab writes the keys, known_hosts and ssh_config every tool uses.
func newB1Lab(ctx context.Context, dir string) (*b1Lab, error) {
	lab := &b1Lab{dir: dir, key: filepath.Join(dir, "id_ed25519"), knownHost: filepath.Join(dir, "known_hosts"), sshConfig: filepath.Join(dir, "ssh_config")}
	for _, k := range []string{lab.key, filepath.Join(dir, "host_ed25519")} {
		if out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("b1: ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(lab.key + ".pub")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o644); err != nil {
		return nil, err
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host_ed25519.pub"))
	if err != nil {
		return nil, err
	}
	// One pattern for every target: the same host key answers them all.
	fields := strings.Fields(string(hostPub))
	if err := os.WriteFile(lab.knownHost, []byte("127.* "+fields[0]+" "+fields[1]+"\n"), 0o644); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`Host *
  User %s
  IdentityFile %s
  IdentitiesOnly yes
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 60
  LogLevel ERROR
`, b1User, lab.key, lab.knownHost)
	if err := os.WriteFile(lab.sshConfig, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	return lab, nil
}

// startSSHD starts the one sshd that serves every target address.
// MaxStartups is raised so that no tool's 50 connections at once are
// refused; StrictModes is off for keys under the temporary directory.
func (l *b1Lab) startSSHD(ctx context.Context, logLevel, logFile string) error {
	if l.sshd != nil {
		l.sshd.stop()
	}
	cfg := fmt.Sprintf(`Port 22
ListenAddress 0.0.0.0
HostKey %[1]s/host_ed25519
PidFile %[1]s/sshd.pid
AuthorizedKeysFile %[1]s/authorized_keys
StrictModes no
MaxStartups 1000
MaxSessions 100
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers %[2]s
UseDNS no
LogLevel %[3]s
`, l.dir, b1User, logLevel)
	file := filepath.Join(l.dir, "sshd_config")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return err
	}
	_ = os.MkdirAll("/run/sshd", 0o755)
	p, err := start(ctx, "/usr/sbin/sshd", []string{"-D", "-f", file, "-E", logFile}, nil, logFile+".out")
	if err != nil {
		return err
	}
	l.sshd = p
	return waitFor(10*time.Second, "sshd start", func() (bool, error) {
		out, err := exec.CommandContext(ctx, "ssh", "-F", l.sshConfig, "127.1.0.1", "true").CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("%v: %s", err, out)
		}
		return true, nil
	})
}

// probeKex runs every contender once on one target against an sshd that
// logs at DEBUG1 and reads the key exchange each negotiated.
func (l *b1Lab) probeKex(ctx context.Context, contenders []contender) (map[string]string, error) {
	logFile := filepath.Join(l.dir, "sshd-kex.log")
	if err := l.startSSHD(ctx, "DEBUG1", logFile); err != nil {
		return nil, err
	}
	re := regexp.MustCompile(`kex: algorithm: (\S+)`)
	kex := map[string]string{}
	for _, c := range contenders {
		if c.warmUp { // the timed run is the one after
			if _, err := c.run(ctx, []string{"127.1.0.1"}); err != nil {
				return nil, fmt.Errorf("b1: %s on one target: %w", c.name, err)
			}
		}
		before, _ := os.ReadFile(logFile)
		if _, err := c.run(ctx, []string{"127.1.0.1"}); err != nil {
			return nil, fmt.Errorf("b1: %s on one target: %w", c.name, err)
		}
		after, _ := os.ReadFile(logFile)
		kex[c.name] = "none (no new connection)"
		if m := re.FindAllSubmatch(after[len(before):], -1); len(m) > 0 {
			kex[c.name] = string(m[len(m)-1][1])
		}
	}
	return kex, nil
}

// contenders are the tools in the order each round runs them.
func (l *b1Lab) contenders(url, admin string, cp, fresh, reuse *process) []contender {
	hostsFile := func(hosts []string) (string, error) {
		f := filepath.Join(l.dir, fmt.Sprintf("hosts-%d", len(hosts)))
		return f, os.WriteFile(f, []byte(strings.Join(hosts, "\n")+"\n"), 0o644)
	}
	ssh := []string{"ssh", "-F", l.sshConfig}
	xargs := func(extra ...string) func(context.Context, []string) (outcome, error) {
		return func(ctx context.Context, hosts []string) (outcome, error) {
			f, err := hostsFile(hosts)
			if err != nil {
				return outcome{}, err
			}
			args := append([]string{"-a", f, "-P", strconv.Itoa(b1Fanout), "-I{}"}, ssh...)
			args = append(append(args, extra...), "{}", "uptime")
			return runTool(ctx, "xargs", args, nil, "load average")
		}
	}
	ansible := func(mitogen, cold bool) func(context.Context, []string) (outcome, error) {
		return func(ctx context.Context, hosts []string) (outcome, error) {
			inv := filepath.Join(l.dir, fmt.Sprintf("inventory-%d", len(hosts)))
			if err := os.WriteFile(inv, []byte("[targets]\n"+strings.Join(hosts, "\n")+"\n"), 0o644); err != nil {
				return outcome{}, err
			}
			// A cold run starts with no master connections; the warm
			// run right after it uses the ones it left (ControlPersist).
			if cold {
				l.controlDir = filepath.Join(l.dir, fmt.Sprintf("cp-%d", l.round))
			}
			cpDir := l.controlDir
			home := filepath.Join(l.dir, "ansible-home")
			env := []string{
				"ANSIBLE_HOME=" + home, "ANSIBLE_LOCAL_TEMP=" + filepath.Join(home, "tmp"),
				"ANSIBLE_SSH_CONTROL_PATH_DIR=" + cpDir, "ANSIBLE_PIPELINING=True",
				// Long enough that no master expires between a cold run at
				// 500 targets and the warm run after it; they are stopped
				// after the warm run.
				"ANSIBLE_SSH_ARGS=-F " + l.sshConfig + " -o ControlMaster=auto -o ControlPersist=600s",
				"ANSIBLE_HOST_KEY_CHECKING=True", "ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3",
				"ANSIBLE_NOCOLOR=1", "ANSIBLE_FORCE_COLOR=0", "ANSIBLE_TIMEOUT=60",
			}
			if mitogen {
				env = append(env, "ANSIBLE_STRATEGY_PLUGINS=/usr/lib/python3/dist-packages/ansible_mitogen/plugins/strategy", "ANSIBLE_STRATEGY=mitogen_linear")
			}
			o, err := runTool(ctx, "ansible", []string{"targets", "-i", inv, "-u", b1User, "-m", "raw", "-a", "uptime", "-f", strconv.Itoa(b1Fanout)}, env, "rc=0")
			if !cold || mitogen {
				// The warm run is over: its masters go, so that they do not
				// sit beside the other tools' runs.
				stopMasters(cpDir)
			}
			return o, err
		}
	}
	var cs []contender
	ours := func(name, via string, p *process, warm bool) contender {
		return contender{name: name, warmUp: warm, run: func(ctx context.Context, hosts []string) (outcome, error) {
			return l.runOurs(ctx, url, admin, via, hosts, cp, p)
		}}
	}
	cs = append(cs, ours("opsconductor, fresh", "role=b1-fresh", fresh, false), ours("opsconductor, reused", "role=b1-reuse", reuse, true))
	cs = append(cs,
		contender{name: "xargs ssh", run: xargs()},
		contender{name: "xargs ssh, curve25519", run: xargs("-o", "KexAlgorithms=curve25519-sha256")},
	)
	if have("/usr/bin/parallel-ssh") {
		cs = append(cs, contender{name: "parallel-ssh", run: func(ctx context.Context, hosts []string) (outcome, error) {
			f, err := hostsFile(hosts)
			if err != nil {
				return outcome{}, err
			}
			return runTool(ctx, "parallel-ssh", []string{"-h", f, "-p", strconv.Itoa(b1Fanout), "-t", "120", "-x", "-F " + l.sshConfig, "uptime"}, nil, "[SUCCESS]")
		}})
	}
	if have("/usr/bin/clush") {
		cs = append(cs, contender{name: "clush", run: func(ctx context.Context, hosts []string) (outcome, error) {
			f, err := hostsFile(hosts)
			if err != nil {
				return outcome{}, err
			}
			return runTool(ctx, "clush", []string{"--hostfile", f, "-f", strconv.Itoa(b1Fanout), "-o", "-F " + l.sshConfig, "-t", "60", "uptime"}, nil, "load average")
		}})
	}
	if have("/usr/bin/ansible") {
		cs = append(cs,
			contender{name: "ansible raw, cold", run: ansible(false, true)},
			contender{name: "ansible raw, warm", run: ansible(false, false)}, // right after the cold run
		)
		if have("/usr/lib/python3/dist-packages/ansible_mitogen") {
			// About 1 s of wall and 3.5 s of machine CPU per host here
			// (a Python interpreter bootstrapped on each target): at 50
			// targets only, or the part would not fit its hour.
			cs = append(cs, contender{name: "ansible + mitogen", maxTargets: 50, run: ansible(true, true)})
		}
	}
	return cs
}

// toolVersions are rows naming the version of every tool compared.
func toolVersions(ctx context.Context) []Row {
	var rows []Row
	for _, t := range []struct {
		name string
		cmd  []string
	}{
		{"OpenSSH (client and sshd)", []string{"ssh", "-V"}},
		{"ansible-core", []string{"ansible", "--version"}},
		{"ansible-mitogen", []string{"dpkg-query", "-W", "-f", "${Version}", "ansible-mitogen"}},
		{"parallel-ssh", []string{"parallel-ssh", "--version"}},
		{"clush", []string{"clush", "--version"}},
	} {
		out, err := exec.CommandContext(ctx, t.cmd[0], t.cmd[1:]...).CombinedOutput()
		v, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		if err != nil {
			v = "not installed"
		}
		rows = append(rows, Row{Part: "b1", Case: "version", Metric: t.name, Note: v})
	}
	return rows
}

// stopMasters ends the OpenSSH master connections under dir (the
// process titles of ControlPersist masters name their socket).
func stopMasters(dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && bytes.Contains(raw, []byte("ssh: "+dir+"/")) {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	}
}

func have(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// runTool runs one command to the end and measures it: wall time, its
// own and its children's CPU and largest resident set (from the kernel's
// accounting of waited-for processes), the machine's CPU meanwhile, and
// how many output lines hold success.
func runTool(ctx context.Context, name string, args, env []string, success string) (outcome, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	m0 := machineCPU()
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	m1 := machineCPU()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return outcome{}, fmt.Errorf("%s: %w", name, err)
	}
	// A tool exits non-zero when a host failed: the count says how many.
	ok := strings.Count(out.String(), success)
	if ok == 0 {
		return outcome{}, fmt.Errorf("%s: no target answered; its output:\n%s", name, tail(out.Bytes(), 2000))
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	return outcome{wall: wall, cpu: cpu, rss: float64(ru.Maxrss) / 1024, machineCPU: m1 - m0, ok: ok}, nil
}

// machineCPU is the CPU seconds every core has spent busy, from
// /proc/stat.
func machineCPU() float64 {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	// user nice system idle iowait irq softirq steal guest guest_nice:
	// busy is user, nice, system, irq and softirq (guest time is already
	// in user; steal is another machine's).
	var busy float64
	for _, i := range []int{1, 2, 3, 6, 7} {
		if i < len(f) {
			x, _ := strconv.ParseFloat(f[i], 64)
			busy += x
		}
	}
	return busy / 100 // USER_HZ
}

// startJumpAgent starts a real agent process labelled role=NAME that runs
// up to b1Fanout remote tasks at once.
func startJumpAgent(ctx context.Context, dir, url, admin, name string, extra ...string) (*process, error) {
	var tok struct {
		Token string `json:"token"`
	}
	if err := apiJSON("POST", url+"/api/v1/agents/tokens", admin, map[string]any{"description": name}, &tok); err != nil {
		return nil, err
	}
	args := append([]string{"--server", url, "--join-token", tok.Token, "--state-dir", filepath.Join(dir, name), "--name", name,
		"--labels", "role=" + name, "--remote-capacity", strconv.Itoa(b1Fanout), "--log-level", "warn"}, extra...)
	p, err := start(ctx, filepath.Join(dir, "opsconductor-agent"), args, nil, filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	err = waitFor(30*time.Second, name+" online", func() (bool, error) {
		var list struct {
			Agents []listedAgent `json:"agents"`
		}
		if err := apiJSON("GET", url+"/api/v1/agents", admin, nil, &list); err != nil {
			return false, err
		}
		return slices.Contains(list.Agents, listedAgent{Name: name, Status: "online"}), nil
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// runOurs runs `uptime` on hosts through the jump agent via: from the API
// call to the execution's final status, read from its event stream. The
// controller is the control plane and the agent with its plugins.
func (l *b1Lab) runOurs(ctx context.Context, url, admin, via string, hosts []string, cp, agent *process) (outcome, error) {
	list := make([]map[string]any, len(hosts))
	for i, h := range hosts {
		list[i] = map[string]any{"address": h}
	}
	body := map[string]any{"inlineJob": map[string]any{
		"name": "b1",
		"targets": []map[string]any{{"remote": map[string]any{
			"via": via, "user": b1User, "credential": "agent:" + l.key, "hosts": list,
			"options": map[string]string{"known_hosts": l.knownHost},
		}}},
		"actions": []map[string]any{{"command": "uptime"}},
	}}
	pids := func() []int { return append(tree(cp.cmd.Process.Pid), tree(agent.cmd.Process.Pid)...) }
	_, cpu0 := usage(pids())
	m0 := machineCPU()
	t0 := time.Now()
	var created struct {
		Execution struct {
			ID string `json:"id"`
		} `json:"execution"`
	}
	if err := apiJSON("POST", url+"/api/v1/executions", admin, body, &created); err != nil {
		return outcome{}, err
	}
	if err := waitExecutionEnd(ctx, url, admin, created.Execution.ID); err != nil {
		return outcome{}, err
	}
	wall := time.Since(t0)
	m1 := machineCPU()
	procs := pids()
	_, cpu1 := usage(procs)
	var got struct {
		Execution struct {
			Status     string         `json:"status"`
			TaskCounts map[string]int `json:"taskCounts"`
		} `json:"execution"`
	}
	if err := apiJSON("GET", url+"/api/v1/executions/"+created.Execution.ID, admin, nil, &got); err != nil {
		return outcome{}, err
	}
	return outcome{wall: wall, cpu: cpu1 - cpu0, rss: peakRSS(procs), machineCPU: m1 - m0, ok: got.Execution.TaskCounts["succeeded"]}, nil
}

// waitExecutionEnd reads the execution's event stream until its final
// status.
func waitExecutionEnd(ctx context.Context, url, admin, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", url+"/api/v1/executions/"+id+"/events", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("execution %s events: HTTP %d", id, resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			event = v
			continue
		}
		if v, ok := strings.CutPrefix(line, "data: "); ok && event == "execution.status" {
			var ev struct {
				Status string `json:"status"`
			}
			if json.Unmarshal([]byte(v), &ev) == nil {
				switch ev.Status {
				case "succeeded", "failed", "cancelled":
					return nil
				}
			}
		}
	}
	return fmt.Errorf("execution %s: its event stream ended before its final status: %v", id, sc.Err())
}

// peakRSS is the largest peak resident set (VmHWM) of the processes, MiB:
// each one's peak over its life so far. (The other tools' figure is the
// kernel's ru_maxrss: their largest process too.)
func peakRSS(pids []int) float64 {
	var kb int64
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				kb = max(kb, n)
			}
		}
	}
	return float64(kb) / 1024
}
