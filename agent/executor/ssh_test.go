package executor

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/opsconductor/opsconductor/agent/executor/sshtest"
)

func TestSSH(t *testing.T) {
	srv := sshtest.Start(t)
	// A port nothing listens on, and a listener that never speaks SSH.
	closedPort := sshtest.FreePort(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			defer conn.Close() // held open, never written to
		}
	}()
	silentPort := strconv.Itoa(silent.Addr().(*net.TCPAddr).Port)
	dir := t.TempDir()

	tests := []struct {
		name       string
		action     Action
		wantStatus string
		wantCode   int
		wantOut    string
		wantErr    []string
	}{
		{name: "key auth", action: Action{Command: "echo hi; id -un", Spec: srv.Spec("root")},
			wantStatus: StatusSucceeded, wantOut: "hi\nroot\n"},
		{name: "exit code", action: Action{Command: "echo x; exit 7", Spec: srv.Spec("root")},
			wantStatus: StatusFailed, wantCode: 7, wantOut: "x\n", wantErr: []string{"exited with code 7"}},
		{name: "script on stdin", action: Action{Script: "a=1\necho $((a+1))\n", Spec: srv.Spec("root")},
			wantStatus: StatusSucceeded, wantOut: "2\n"},
		{name: "env and working dir", action: Action{Command: `echo "$GREETING $(pwd)"`, Env: map[string]string{"GREETING": "hello"}, WorkingDir: dir, Spec: srv.Spec("root")},
			wantStatus: StatusSucceeded, wantOut: "hello " + dir + "\n"},
		{name: "password auth", action: Action{Command: "id -un", Spec: srv.Spec(sshtest.User)},
			wantStatus: StatusSucceeded, wantOut: sshtest.User + "\n"},
		{name: "become with sudo", action: Action{Command: "id -un", Spec: srv.Spec(sshtest.User, "become", "true")},
			wantStatus: StatusSucceeded, wantOut: "root\n"},
		{name: "become runs a script", action: Action{Script: "u=$(id -un)\necho \"as $u\"\n", Spec: srv.Spec(sshtest.User, "become", "true")},
			wantStatus: StatusSucceeded, wantOut: "as root\n"},
		{name: "pinned fingerprint", action: Action{Command: "echo pinned", Spec: srv.Spec("root", "known_hosts", "", "host_key_fingerprint", ssh.FingerprintSHA256(srv.HostKey))},
			wantStatus: StatusSucceeded, wantOut: "pinned\n"},
		{name: "wrong password", action: Action{Command: "true", Spec: srv.Spec(sshtest.User, "password", "not-the-password")},
			wantStatus: StatusFailed, wantCode: -1, wantErr: []string{"ssh authentication failed", "user " + sshtest.User}},
		{name: "host key mismatch", action: Action{Command: "true", Spec: srv.Spec("root", "known_hosts", srv.OtherHosts)},
			wantStatus: StatusFailed, wantCode: -1, wantErr: []string{"host key refused", "host key mismatch", ssh.FingerprintSHA256(srv.HostKey)}},
		{name: "wrong pinned fingerprint", action: Action{Command: "true", Spec: srv.Spec("root", "known_hosts", "", "host_key_fingerprint", "SHA256:AAAA")},
			wantStatus: StatusFailed, wantCode: -1, wantErr: []string{"host key refused", ssh.FingerprintSHA256(srv.HostKey), "SHA256:AAAA is pinned"}},
		{name: "closed port", action: Action{Command: "true", Spec: srv.Spec("root", "port", closedPort)},
			wantStatus: StatusFailed, wantCode: -1, wantErr: []string{"ssh connection error", "127.0.0.1:" + closedPort}},
		{name: "no banner", action: Action{Command: "true", Spec: srv.Spec("root", "port", silentPort, "connect_timeout", "300ms")},
			wantStatus: StatusFailed, wantCode: -1, wantErr: []string{"ssh timeout", "within 300ms"}},
		{name: "no host", action: Action{Command: "true", Spec: map[string]string{}},
			wantStatus: StatusFailed, wantCode: -1, wantErr: []string{"spec.host is required"}},
		{name: "timeout", action: Action{Command: "echo started; sleep 30", Timeout: time.Second, Spec: srv.Spec("root")},
			wantStatus: StatusTimedOut, wantCode: -1, wantOut: "started\n", wantErr: []string{"timed out"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			res := SSH{}.Execute(context.Background(), tt.action, &stdout, &stderr)
			if res.Status != tt.wantStatus || res.ExitCode != tt.wantCode {
				t.Fatalf("result = %+v, want status %s code %d (stderr %q)", res, tt.wantStatus, tt.wantCode, stderr.String())
			}
			if stdout.String() != tt.wantOut {
				t.Fatalf("stdout = %q, want %q (stderr %q)", stdout.String(), tt.wantOut, stderr.String())
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(res.Error, want) {
					t.Fatalf("error = %q, want it to contain %q", res.Error, want)
				}
			}
		})
	}
}

// TestSSHCancelKillsRemoteProcesses shows a cancel ends the remote action
// and everything it started, not only the SSH session.
func TestSSHCancelKillsRemoteProcesses(t *testing.T) {
	srv := sshtest.Start(t)
	cases := []struct {
		name string
		spec map[string]string
	}{
		{name: "root", spec: srv.Spec("root")},
		{name: "unprivileged", spec: srv.Spec(sshtest.User)},
		{name: "become", spec: srv.Spec(sshtest.User, "become", "true")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// t.TempDir's parent is private to root; the remote user
			// must be able to write the pid file.
			pidDir, err := os.MkdirTemp("", "ssh-cancel-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(pidDir) })
			if err := os.Chmod(pidDir, 0o777); err != nil {
				t.Fatal(err)
			}
			pidFile := filepath.Join(pidDir, "pid")
			ctx, cancel := context.WithCancel(context.Background())
			var stdout, stderr syncBuffer
			done := make(chan Result, 1)
			// The background sleep is a grandchild: killing only the
			// session's shell would leave it running.
			action := Action{Command: fmt.Sprintf("sleep 300 & echo $! > %s; echo started; wait", pidFile), Spec: tc.spec}
			go func() { done <- SSH{}.Execute(ctx, action, &stdout, &stderr) }()

			var pid int
			deadline := time.Now().Add(10 * time.Second)
			for pid == 0 {
				if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
					pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
				}
				if time.Now().After(deadline) {
					t.Fatalf("the remote command did not start (stderr %q)", stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			select {
			case res := <-done:
				if res.Status != StatusCancelled {
					t.Fatalf("result = %+v, want cancelled", res)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Execute did not return within 10s of the cancel")
			}
			for syscall.Kill(pid, 0) == nil {
				if time.Now().After(deadline.Add(5 * time.Second)) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					t.Fatalf("remote process %d still runs after the cancel", pid)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestSSHTrustOnFirstUseAndAgent: with host_key_policy tofu an unknown
// host's key is recorded and then enforced (strictly, too); a known host
// with another key is still refused. Keys held by a real ssh-agent log in.
func TestSSHTrustOnFirstUseAndAgent(t *testing.T) {
	srv := sshtest.Start(t)
	run := func(spec map[string]string) Result {
		t.Helper()
		var stdout, stderr syncBuffer
		return SSH{}.Execute(context.Background(), Action{Command: "echo ok", Spec: spec}, &stdout, &stderr)
	}
	known := filepath.Join(t.TempDir(), "ssh", "known_hosts") // the directory does not exist yet

	if res := run(srv.Spec("root", "known_hosts", known)); res.Status != StatusFailed || !strings.Contains(res.Error, "known_hosts") {
		t.Fatalf("strict with a missing known_hosts = %+v, want a known_hosts error", res)
	}
	if res := run(srv.Spec("root", "known_hosts", known, "host_key_policy", "tofu")); res.Status != StatusSucceeded {
		t.Fatalf("first use = %+v, want success", res)
	}
	recorded, err := os.ReadFile(known)
	if err != nil || !strings.Contains(string(recorded), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(srv.HostKey)))) {
		t.Fatalf("known_hosts after first use = %q, %v; want the server's key", recorded, err)
	}
	if res := run(srv.Spec("root", "known_hosts", known)); res.Status != StatusSucceeded {
		t.Fatalf("strict after first use = %+v, want success (the key is pinned)", res)
	}
	if res := run(srv.Spec("root", "known_hosts", srv.OtherHosts, "host_key_policy", "tofu")); res.Status != StatusFailed || !strings.Contains(res.Error, "host key mismatch") {
		t.Fatalf("tofu with a different recorded key = %+v, want a mismatch", res)
	}
	if res := run(srv.Spec("root", "host_key_policy", "sometimes")); !strings.Contains(res.Error, "host_key_policy") {
		t.Fatalf("bad policy = %+v, want an error naming host_key_policy", res)
	}

	// A real ssh-agent holding the client key.
	socket := filepath.Join(t.TempDir(), "agent.sock")
	agentCmd := exec.Command("ssh-agent", "-D", "-a", socket)
	if err := agentCmd.Start(); err != nil {
		t.Fatalf("start ssh-agent: %v", err)
	}
	t.Cleanup(func() {
		_ = agentCmd.Process.Kill()
		_ = agentCmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ssh-agent did not create its socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	add := exec.Command("ssh-add", srv.KeyFile)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+socket)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v: %s", err, out)
	}
	if res := run(srv.Spec("root", "key_file", "", "agent_socket", socket)); res.Status != StatusSucceeded {
		t.Fatalf("login with the agent's key = %+v", res)
	}
	t.Setenv("SSH_AUTH_SOCK", socket)
	if res := run(srv.Spec("root", "key_file", "", "agent_socket", "env")); res.Status != StatusSucceeded {
		t.Fatalf("login with $SSH_AUTH_SOCK = %+v", res)
	}
}

// TestSSHKeepaliveDetectsSilentHost: a host that stops answering without
// closing the connection (a proxy in between stops forwarding) is
// reported as a lost connection after the keepalives go unanswered, not
// after the command's own (much later) end.
func TestSSHKeepaliveDetectsSilentHost(t *testing.T) {
	srv := sshtest.Start(t)
	proxy := startCountingProxy(t, srv.Port)
	spec := srv.Spec("root", "port", proxy.port(), "known_hosts", "",
		"host_key_fingerprint", ssh.FingerprintSHA256(srv.HostKey), "keepalive_interval", "200ms", "keepalive_count_max", "3")
	// The remote command's process group, to stop it afterwards: sshd
	// keeps running it for the frozen connection.
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
			}
		}
	})
	var stdout, stderr syncBuffer
	result := make(chan Result, 1)
	go func() {
		result <- SSH{}.Execute(context.Background(), Action{Command: "echo $$ > " + pidFile + "; echo started; sleep 60", Spec: spec}, &stdout, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "started") {
		if time.Now().After(deadline) {
			t.Fatalf("the command did not start (stderr %q)", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	proxy.freeze()
	select {
	case res := <-result:
		if res.Status != StatusFailed || !strings.Contains(res.Error, "ssh connection lost") || !strings.Contains(res.Error, "keepalive") {
			t.Fatalf("result = %+v, want a lost connection found by keepalives", res)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a silent host was not noticed within 20s (keepalives every 200ms)")
	}
}

// countingProxy forwards loopback connections to port and counts them;
// cut closes every connection forwarded so far; freeze stops forwarding
// without closing anything (a host gone silent).
type countingProxy struct {
	listener net.Listener
	frozen   chan struct{}
	stopped  chan struct{}
	mu       sync.Mutex
	accepted int
	conns    []net.Conn
}

func (p *countingProxy) freeze() { close(p.frozen) }

// pipe copies src to dst until either closes or the proxy freezes.
func (p *countingProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		select {
		case <-p.frozen:
			<-p.stopped // nothing more is forwarded
			return
		default:
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func startCountingProxy(t *testing.T, port string) *countingProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{listener: l, frozen: make(chan struct{}), stopped: make(chan struct{})}
	t.Cleanup(func() {
		close(p.stopped)
		l.Close()
		p.cut()
	})
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", "127.0.0.1:"+port)
			if err != nil {
				client.Close()
				continue
			}
			p.mu.Lock()
			p.accepted++
			p.conns = append(p.conns, client, server)
			p.mu.Unlock()
			go p.pipe(server, client)
			go p.pipe(client, server)
		}
	}()
	return p
}

func (p *countingProxy) port() string { return strconv.Itoa(p.listener.Addr().(*net.TCPAddr).Port) }

func (p *countingProxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

func (p *countingProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestSSHConnectionReuse: a task's actions on one host share one SSH
// connection; a connection that broke between actions is replaced; and
// without a cache every action connects afresh.
func TestSSHConnectionReuse(t *testing.T) {
	srv := sshtest.Start(t)
	proxy := startCountingProxy(t, srv.Port)
	spec := srv.Spec("root", "port", proxy.port(), "known_hosts", "", "host_key_fingerprint", ssh.FingerprintSHA256(srv.HostKey))
	run := func(ctx context.Context, n int) {
		t.Helper()
		var stdout, stderr syncBuffer
		res := SSH{}.Execute(ctx, Action{Command: fmt.Sprintf("echo %d", n), Spec: spec}, &stdout, &stderr)
		if res.Status != StatusSucceeded || stdout.String() != fmt.Sprintf("%d\n", n) {
			t.Fatalf("action %d = %+v, stdout %q", n, res, stdout.String())
		}
	}
	conns := NewConnCache(nil)
	ctx := WithConnCache(context.Background(), conns)
	for i := range 3 {
		run(ctx, i)
	}
	if got := proxy.count(); got != 1 {
		t.Fatalf("3 actions with a cache made %d connections, want 1", got)
	}
	proxy.cut()
	run(ctx, 3)
	if got := proxy.count(); got != 2 {
		t.Fatalf("after the connection broke: %d connections, want 2 (one new)", got)
	}
	conns.Close()
	for i := range 2 {
		run(context.Background(), 10+i)
	}
	if got := proxy.count(); got != 4 {
		t.Fatalf("2 actions without a cache: %d connections in all, want 4", got)
	}
}

// TestSSHIdleConnections: with an idle pool (--ssh-persist), the next task
// on the same host and login reuses the connection an earlier task left;
// another login does not; a pooled connection that died is replaced; one
// idle longer than the period is closed; and a host gone silent while its
// connection sat idle costs the connect timeout, not a hang.
func TestSSHIdleConnections(t *testing.T) {
	srv := sshtest.Start(t)
	proxy := startCountingProxy(t, srv.Port)
	spec := srv.Spec("root", "port", proxy.port(), "known_hosts", "", "host_key_fingerprint", ssh.FingerprintSHA256(srv.HostKey),
		"connect_timeout", "2s")
	idle := NewIdleConns(time.Hour, 100)
	defer idle.Close()
	// run is one task of one action through pool: its result, its output
	// and the connection it used (now given back to the pool).
	run := func(pool *IdleConns, spec map[string]string, command string) (Result, string, *ssh.Client) {
		t.Helper()
		conns := NewConnCache(pool)
		var stdout, stderr syncBuffer
		res := SSH{}.Execute(WithConnCache(context.Background(), conns), Action{Command: command, Spec: spec}, &stdout, &stderr)
		client := conns.get(connKey(spec))
		conns.Close()
		return res, stdout.String(), client
	}
	task := func(spec map[string]string, n int) {
		t.Helper()
		if res, out, _ := run(idle, spec, fmt.Sprintf("echo %d", n)); res.Status != StatusSucceeded || out != fmt.Sprintf("%d\n", n) {
			t.Fatalf("task %d = %+v, stdout %q", n, res, out)
		}
	}
	succeed := func(pool *IdleConns, spec map[string]string) *ssh.Client {
		t.Helper()
		res, _, client := run(pool, spec, "true")
		if res.Status != StatusSucceeded {
			t.Fatalf("task = %+v", res)
		}
		return client
	}
	waitClosed := func(client *ssh.Client, failure string) {
		t.Helper()
		closed := make(chan error, 1)
		go func() { closed <- client.Wait() }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal(failure)
		}
	}
	for i := range 3 {
		task(spec, i)
	}
	if got := proxy.count(); got != 1 {
		t.Fatalf("3 tasks with an idle pool made %d connections, want 1", got)
	}
	if idle.Len() != 1 {
		t.Fatalf("idle connections = %d, want 1", idle.Len())
	}

	other := srv.Spec(sshtest.User, "port", proxy.port(), "known_hosts", "", "host_key_fingerprint", ssh.FingerprintSHA256(srv.HostKey))
	task(other, 3)
	if got := proxy.count(); got != 2 {
		t.Fatalf("a task with another login: %d connections in all, want 2 (its own)", got)
	}

	// Past the limit, the connection idle longest is closed.
	one := NewIdleConns(time.Hour, 1)
	defer one.Close()
	evicted := succeed(one, spec)
	succeed(one, other)
	if one.Len() != 1 {
		t.Fatalf("a pool of at most 1 holds %d", one.Len())
	}
	waitClosed(evicted, "the connection idle longest was not closed past the limit")

	proxy.cut()
	task(spec, 4)
	if got := proxy.count(); got != 5 { // 2 for the limit's check
		t.Fatalf("after the pooled connection broke: %d connections, want 5 (one new)", got)
	}

	// Closed when its period ran out.
	short := NewIdleConns(50*time.Millisecond, 100)
	waitClosed(succeed(short, spec), "a connection idle past its period was not closed")
	if short.Len() != 0 {
		t.Fatalf("expired connections still pooled: %d", short.Len())
	}

	proxy.freeze()
	start := time.Now()
	if res, _, _ := run(idle, spec, "true"); res.Status != StatusFailed || time.Since(start) > 30*time.Second {
		t.Fatalf("a silent host behind a pooled connection: %+v after %s, want a failure within the timeouts", res, time.Since(start))
	}
}

// TestSSHProxyJump: an action reaches its host through a bastion (the
// same sshd serves as both: the bastion forwards to its own port); a
// bastion with the wrong pinned key is refused as such.
func TestSSHProxyJump(t *testing.T) {
	srv := sshtest.Start(t)
	proxy := startCountingProxy(t, srv.Port) // the "bastion" address; counts direct connections
	fp := ssh.FingerprintSHA256(srv.HostKey)
	spec := srv.Spec("root", "known_hosts", "", "host_key_fingerprint", fp,
		"proxy_jump", "root@127.0.0.1:"+proxy.port(), "proxy_jump_fingerprint", fp)
	var stdout, stderr syncBuffer
	res := SSH{}.Execute(context.Background(), Action{Command: "echo through-the-bastion", Spec: spec}, &stdout, &stderr)
	if res.Status != StatusSucceeded || stdout.String() != "through-the-bastion\n" {
		t.Fatalf("via the jump host = %+v, stdout %q, stderr %q", res, stdout.String(), stderr.String())
	}
	if got := proxy.count(); got != 1 {
		t.Fatalf("the bastion saw %d connections, want 1 (the target is reached through it)", got)
	}
	spec["proxy_jump_fingerprint"] = "SHA256:wrong"
	res = SSH{}.Execute(context.Background(), Action{Command: "true", Spec: spec}, &stdout, &stderr)
	if res.Status != StatusFailed || !strings.Contains(res.Error, "jump host") || !strings.Contains(res.Error, "host key refused") {
		t.Fatalf("bastion with a wrong key = %+v, want a host key refusal naming the jump host", res)
	}
}

// TestSSHUpload: a file goes in place over SSH with its mode, as the login
// user and with become (root-owned destination); the password never ends
// up in the file.
func TestSSHUpload(t *testing.T) {
	srv := sshtest.Start(t)
	dir, err := os.MkdirTemp("", "ssh-upload-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	rootOnly := filepath.Join(dir, "root-only")
	if err := os.Mkdir(rootOnly, 0o755); err != nil {
		t.Fatal(err)
	}
	content := "line one\nbinary \x00\xff end\n"
	tests := []struct {
		name, dest, owner string
		spec              map[string]string
		mode              os.FileMode
	}{
		{name: "as root", dest: filepath.Join(dir, "a.conf"), spec: srv.Spec("root"), mode: 0o600, owner: "root"},
		{name: "as the user", dest: filepath.Join(dir, "b.conf"), spec: srv.Spec(sshtest.User), owner: sshtest.User},
		{name: "with become", dest: filepath.Join(rootOnly, "c.conf"), spec: srv.Spec(sshtest.User, "become", "true"), mode: 0o640, owner: "root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			res := SSH{}.Execute(context.Background(), Action{Upload: &Upload{Destination: tt.dest, Content: []byte(content), Mode: tt.mode}, Spec: tt.spec}, &stdout, &stderr)
			if res.Status != StatusSucceeded || !strings.Contains(stdout.String(), fmt.Sprintf("uploaded %d bytes to %s", len(content), tt.dest)) {
				t.Fatalf("upload = %+v, stdout %q, stderr %q", res, stdout.String(), stderr.String())
			}
			got, err := os.ReadFile(tt.dest)
			if err != nil || string(got) != content {
				t.Fatalf("file = %q, %v; want %q", got, err, content)
			}
			info, _ := os.Stat(tt.dest)
			wantMode := tt.mode
			if wantMode == 0 {
				wantMode = 0o644
			}
			if info.Mode().Perm() != wantMode {
				t.Fatalf("mode = %o, want %o", info.Mode().Perm(), wantMode)
			}
			owner := "root"
			if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
				owner = sshtest.User
			}
			if owner != tt.owner {
				t.Fatalf("owner = %s, want %s", owner, tt.owner)
			}
		})
	}
	// The user cannot write there without become: a plain failure.
	var stdout, stderr syncBuffer
	res := SSH{}.Execute(context.Background(), Action{Upload: &Upload{Destination: filepath.Join(rootOnly, "d.conf"), Content: []byte("x")}, Spec: srv.Spec(sshtest.User)}, &stdout, &stderr)
	if res.Status != StatusFailed {
		t.Fatalf("upload into a root-only directory as the user = %+v, want failed", res)
	}
}
