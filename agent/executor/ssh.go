package executor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSH runs actions on a remote host over SSH; the action's spec names the
// host and how to log in:
//
//	host, port (22), user, key_file, password, agent_socket (an
//	ssh-agent socket; "env" means $SSH_AUTH_SOCK), known_hosts (default
//	~/.ssh/known_hosts), host_key_policy ("strict", the default, or
//	"tofu": trust an unknown host's key on first use and record it in
//	known_hosts), host_key_fingerprint ("SHA256:..." pins the key
//	instead), connect_timeout (10s), keepalive_interval (15s; 0: off)
//	and keepalive_count_max (3), proxy_jump ("[user@]host[:port]" of a
//	bastion to go through, same credentials) with proxy_jump_fingerprint
//	(else known_hosts), become ("true": run with sudo,
//	become_password or password as its password), connect_only ("true":
//	connect, verify the host key and log in, then stop: a reachability
//	check that runs nothing)
//
// Host keys are verified strictly; a mismatch names the host and both
// fingerprints. Failures to connect, to authenticate and a lost connection
// are reported as such, apart from the command's own exit status.
type SSH struct{}

var _ Executor = SSH{}

// sshError classifies why an SSH action could not run.
func sshError(kind, addr string, err error) Result {
	return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("ssh %s: %s: %v", kind, addr, err)}
}

// Execute implements Executor.
func (SSH) Execute(ctx context.Context, a Action, stdout, stderr io.Writer) Result {
	spec := a.Spec
	host := spec["host"]
	if host == "" {
		return Result{Status: StatusFailed, ExitCode: -1, Error: "ssh: spec.host is required"}
	}
	port := cmpOr(spec["port"], "22")
	addr := net.JoinHostPort(host, port)
	user := cmpOr(spec["user"], "root")
	timeout, err := specDuration(spec, "connect_timeout", 10*time.Second)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: "ssh: " + err.Error()}
	}
	keepalive, err := keepaliveSettings(spec)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: "ssh: " + err.Error()}
	}
	hostKey, err := hostKeyCallback(spec)
	if err != nil {
		return sshError("host key setup", addr, err)
	}
	auth, closeAuth, err := authMethods(spec)
	if err != nil {
		return sshError("credentials", addr, err)
	}
	defer closeAuth()

	runCtx := ctx
	if a.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, a.Timeout)
		defer cancel()
	}
	// Within a task, actions on the same host with the same login share
	// one connection (see ConnCache); a cached one that died is replaced.
	cache, cacheKey := connCacheFrom(ctx), connKey(spec)
	client := cache.get(cacheKey)
	var session *ssh.Session
	if client != nil {
		if session, err = newSessionWithin(client, timeout); err != nil {
			cache.drop(cacheKey, client)
			client.Close()
			client = nil
		}
	}
	if client == nil {
		var res Result
		dial := (&net.Dialer{Timeout: timeout}).DialContext
		if jump := spec["proxy_jump"]; jump != "" {
			bastion, res := dialJumpHost(runCtx, jump, user, timeout, auth, spec)
			if bastion == nil {
				return res
			}
			dial = func(ctx context.Context, network, target string) (net.Conn, error) {
				conn, err := bastion.DialContext(ctx, network, target)
				if err != nil {
					bastion.Close()
					return nil, fmt.Errorf("via jump host %s: %w", jump, err)
				}
				return closeBoth{conn, bastion}, nil
			}
		}
		if client, res = dialSSH(runCtx, dial, addr, user, timeout, auth, hostKey); client == nil {
			return res
		}
		if session, err = client.NewSession(); err != nil {
			client.Close()
			return sshError("connection lost", addr, err)
		}
		cache.put(cacheKey, client)
	}
	if cache == nil {
		defer client.Close()
	}
	defer session.Close()
	if spec["connect_only"] == "true" {
		// A reachability check: connected, host key verified, logged in.
		fmt.Fprintf(stdout, "connected to %s as %s\n", addr, user)
		return Result{Status: StatusSucceeded}
	}
	session.Stdout, session.Stderr = stdout, stderr
	for k, v := range a.Env {
		_ = session.Setenv(k, v) // servers may refuse; the command still runs
	}
	remote := buildRemoteCommand(a, spec, "/tmp/opsconductor-action-"+rand.Text()+".pid")
	if remote.stdin != "" {
		session.Stdin = strings.NewReader(remote.stdin)
	}
	done := make(chan error, 1)
	go func() { done <- session.Run(remote.run) }()
	stopKeepalive := make(chan struct{})
	defer close(stopKeepalive)
	lost := make(chan error, 1)
	if keepalive.interval > 0 {
		go keepAlive(client, keepalive, stopKeepalive, lost)
	}
	select {
	case err := <-done:
		return sshExit(addr, err)
	case err := <-lost:
		cache.drop(cacheKey, client)
		client.Close()
		<-done
		return sshError("connection lost", addr, err)
	case <-runCtx.Done():
	}
	// Kill the action's process group from a second session on the same
	// connection; closing the connection is the last resort.
	if killer, err := client.NewSession(); err == nil {
		if remote.killStdin != "" {
			killer.Stdin = strings.NewReader(remote.killStdin)
		}
		_ = killer.Run(remote.kill)
		killer.Close()
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cache.drop(cacheKey, client)
		client.Close()
		<-done
	}
	if ctx.Err() != nil {
		return Result{Status: StatusCancelled, ExitCode: -1, Error: "cancelled"}
	}
	return Result{Status: StatusTimedOut, ExitCode: -1, Error: fmt.Sprintf("timed out after %s", a.Timeout)}
}

// dialSSH connects and logs in; on failure it returns a nil client and
// the classified error.
func dialSSH(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), addr, user string, timeout time.Duration,
	auth []ssh.AuthMethod, hostKey ssh.HostKeyCallback) (*ssh.Client, Result) {
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, sshError("connection error", addr, err)
	}
	// The deadline bounds the banner and the handshake: a listener that
	// accepts but never speaks SSH cannot hold the action.
	_ = conn.SetDeadline(time.Now().Add(timeout))
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{User: user, Auth: auth, HostKeyCallback: hostKey, Timeout: timeout})
	if err != nil {
		conn.Close()
		var keyErr *knownhosts.KeyError
		var netErr net.Error
		switch {
		case errors.As(err, &keyErr), strings.Contains(err.Error(), "host key"):
			return nil, sshError("host key refused", addr, err)
		case errors.As(err, &netErr) && netErr.Timeout():
			return nil, Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("ssh timeout: %s did not complete the SSH handshake within %s", addr, timeout)}
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, sshError("authentication failed", addr, fmt.Errorf("user %s: %w", user, err))
		}
		return nil, sshError("connection error", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), Result{}
}

// dialJumpHost logs in to the bastion named by proxy_jump
// ("[user@]host[:port]") with the action's credentials; its host key is
// checked against proxy_jump_fingerprint when set, else known_hosts.
func dialJumpHost(ctx context.Context, jump, user string, timeout time.Duration, auth []ssh.AuthMethod, spec map[string]string) (*ssh.Client, Result) {
	jumpUser, hostPort := user, jump
	if at := strings.LastIndex(jump, "@"); at >= 0 {
		jumpUser, hostPort = jump[:at], jump[at+1:]
	}
	if _, _, err := net.SplitHostPort(hostPort); err != nil {
		hostPort = net.JoinHostPort(hostPort, "22")
	}
	jumpSpec := map[string]string{"known_hosts": spec["known_hosts"], "host_key_policy": spec["host_key_policy"],
		"host_key_fingerprint": spec["proxy_jump_fingerprint"]}
	hostKey, err := hostKeyCallback(jumpSpec)
	if err != nil {
		return nil, sshError("host key setup", hostPort, fmt.Errorf("jump host: %w", err))
	}
	client, res := dialSSH(ctx, (&net.Dialer{Timeout: timeout}).DialContext, hostPort, jumpUser, timeout, auth, hostKey)
	if client == nil {
		res.Error = "jump host " + jump + ": " + res.Error
	}
	return client, res
}

// closeBoth is a connection through a jump host: closing it closes the
// jump host's connection too.
type closeBoth struct {
	net.Conn
	bastion *ssh.Client
}

func (c closeBoth) Close() error {
	err := c.Conn.Close()
	c.bastion.Close()
	return err
}

// newSessionWithin opens a session on a connection that was already open
// (kept for this task or idle since an earlier one), within timeout: a
// host that vanished while the connection sat idle never answers, and the
// action then dials afresh instead of waiting.
func newSessionWithin(client *ssh.Client, timeout time.Duration) (*ssh.Session, error) {
	type opened struct {
		s   *ssh.Session
		err error
	}
	done := make(chan opened, 1)
	go func() {
		s, err := client.NewSession()
		done <- opened{s, err}
	}()
	select {
	case o := <-done:
		return o.s, o.err
	case <-time.After(timeout):
		client.Close() // unblocks NewSession
		if o := <-done; o.s != nil {
			o.s.Close()
		}
		return nil, fmt.Errorf("no answer to a new session within %s", timeout)
	}
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// keepaliveConfig says how often to probe the server while a command runs
// and how many unanswered probes mean the connection is gone.
type keepaliveConfig struct {
	interval time.Duration // zero: no probes
	countMax int
}

func keepaliveSettings(spec map[string]string) (keepaliveConfig, error) {
	k := keepaliveConfig{interval: 15 * time.Second, countMax: 3}
	if v := spec["keepalive_interval"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return k, fmt.Errorf("spec.keepalive_interval %q is not a duration (0 disables)", v)
		}
		k.interval = d
	}
	if v := spec["keepalive_count_max"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return k, fmt.Errorf("spec.keepalive_count_max %q must be a whole number of at least 1", v)
		}
		k.countMax = n
	}
	return k, nil
}

// keepAlive sends keepalive@openssh.com requests every interval (any
// reply, even a refusal, shows the server is there) and reports on lost
// when countMax probes in a row went unanswered: a host that vanished
// without closing the TCP connection would otherwise hold the action
// until its timeout.
func keepAlive(client *ssh.Client, k keepaliveConfig, stop <-chan struct{}, lost chan<- error) {
	tick := time.NewTicker(k.interval)
	defer tick.Stop()
	replied := make(chan struct{}, 1)
	waiting, missed := false, 0
	for {
		select {
		case <-stop:
			return
		case <-replied:
			waiting, missed = false, 0
		case <-tick.C:
			if waiting {
				if missed++; missed >= k.countMax {
					lost <- fmt.Errorf("no answer to %d keepalives sent every %s", missed, k.interval)
					return
				}
				continue
			}
			waiting = true
			go func() {
				// Blocks until the reply, or until the client is closed.
				if _, _, err := client.SendRequest("keepalive@openssh.com", true, nil); err == nil {
					select {
					case replied <- struct{}{}:
					default:
					}
				}
			}()
		}
	}
}

// remoteCommand is an action's remote command line, what goes on its
// stdin, and the command that kills it (see groupWrap) with its stdin.
type remoteCommand struct {
	run, stdin, kill, killStdin string
}

// killGroup is the command that kills the process group recorded in
// pidFile: TERM, then KILL a second later.
func killGroup(pidFile string) string {
	pid := shellQuote(pidFile)
	return "test -f " + pid + " && p=$(cat " + pid + ") && kill -TERM -$p 2>/dev/null; sleep 1; kill -KILL -$p 2>/dev/null; true"
}

// buildRemoteCommand builds the remote command for a. A script goes on
// stdin to "sh -s", except under become: there stdin carries sudo's
// password, so the script travels as an argument instead (a password line
// must never reach a shell that did not ask for it).
func buildRemoteCommand(a Action, spec map[string]string, pidFile string) remoteCommand {
	become := spec["become"] == "true"
	if a.Upload != nil {
		return buildUpload(a.Upload, become, cmpOr(spec["become_password"], spec["password"]), pidFile)
	}
	cmd, stdin := a.Command, ""
	switch {
	case cmd == "" && become:
		cmd = "sh -c " + shellQuote(a.Script)
	case cmd == "":
		cmd, stdin = "sh -s", a.Script
	}
	if a.WorkingDir != "" {
		cmd = "cd " + shellQuote(a.WorkingDir) + " && " + cmd
	}
	kill := killGroup(pidFile)
	if !become {
		return remoteCommand{run: groupWrap(cmd, pidFile), stdin: stdin, kill: kill}
	}
	password := cmpOr(spec["become_password"], spec["password"])
	if password == "" {
		// -n: fail at once instead of waiting for a password nobody sends.
		return remoteCommand{run: groupWrap("sudo -n sh -c "+shellQuote(cmd), pidFile), kill: "sudo -n sh -c " + shellQuote(kill)}
	}
	// -S reads the password from stdin; -k makes sudo ask for it even
	// when a cached credential exists, so the line is always consumed.
	sudo := "sudo -k -S -p '' sh -c "
	return remoteCommand{run: groupWrap(sudo+shellQuote(cmd), pidFile), stdin: password + "\n" + stdin, kill: sudo + shellQuote(kill), killStdin: password + "\n"}
}

// buildUpload is the remote command that puts u in place: the content
// arrives on stdin into a temporary file next to the destination, which is
// renamed over it, so readers never see half a file. Under become the
// content first lands in a private temporary file as the login user and
// root copies it in; the password is the first stdin line, read by the
// shell itself so it can never end up in the file.
func buildUpload(u *Upload, become bool, password, pidFile string) remoteCommand {
	mode := fmt.Sprintf("%04o", u.mode())
	place := `u=$(mktemp "$(dirname "$2")/.opsconductor-upload.XXXXXX") && cat "$1" > "$u" && chmod ` + mode +
		` "$u" && mv -f "$u" "$2" || { rm -f "$u"; exit 1; }`
	// Under become the password line is read first, then root places the
	// file the login user received.
	readPassword, placeAs, stdin := "", "", string(u.Content)
	switch {
	case become && password != "":
		readPassword, placeAs, stdin = "IFS= read -r pw; ", `printf '%s\n' "$pw" | sudo -k -S -p '' `, password+"\n"+stdin
	case become:
		placeAs = "sudo -n "
	}
	cmd := readPassword + "d=" + shellQuote(u.Destination) + `; t=$(mktemp) && cat > "$t" && ` + placeAs + "sh -c " + shellQuote(place) +
		` sh "$t" "$d"; rc=$?; rm -f "$t"; ` + fmt.Sprintf(`[ $rc -eq 0 ] && echo "uploaded %d bytes to $d"; exit $rc`, len(u.Content))
	return remoteCommand{run: groupWrap(cmd, pidFile), stdin: stdin, kill: killGroup(pidFile)}
}

// groupWrap runs cmd in a session of its own (setsid) and records its
// process group in pidFile, so a cancel can kill everything the action
// started: sshd leaves a session without a pty running when its
// connection closes, and it refuses signal requests for root logins. The
// user's login shell must be POSIX. Stdin is passed through fd 3 because
// a background job's stdin is otherwise /dev/null.
func groupWrap(cmd, pidFile string) string {
	pid := shellQuote(pidFile)
	return "exec 3<&0; setsid sh -c " + shellQuote(cmd) + " <&3 3<&- & p=$!; exec 3<&-; echo $p > " + pid +
		"; wait $p; rc=$?; rm -f " + pid + "; exit $rc"
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func sshExit(addr string, err error) Result {
	if err == nil {
		return Result{Status: StatusSucceeded}
	}
	var exitErr *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case errors.As(err, &exitErr) && exitErr.Signal() != "":
		return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("killed by signal %s on %s", exitErr.Signal(), addr)}
	case errors.As(err, &exitErr):
		return Result{Status: StatusFailed, ExitCode: exitErr.ExitStatus(), Error: fmt.Sprintf("exited with code %d on %s", exitErr.ExitStatus(), addr)}
	case errors.As(err, &missing):
		return sshError("connection lost", addr, errors.New("the command's exit status never arrived"))
	}
	return sshError("connection lost", addr, err)
}

// hostKeyCallback verifies the server: a pinned fingerprint, or the
// known_hosts file (strict: an unknown host is refused too).
func hostKeyCallback(spec map[string]string) (ssh.HostKeyCallback, error) {
	if fp := spec["host_key_fingerprint"]; fp != "" {
		return func(hostname string, _ net.Addr, key ssh.PublicKey) error {
			if got := ssh.FingerprintSHA256(key); got != fp {
				return fmt.Errorf("host key of %s is %s, but %s is pinned", hostname, got, fp)
			}
			return nil
		}, nil
	}
	path := spec["known_hosts"]
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, err
		}
		path = filepath.Join(home, ".ssh", "known_hosts")
	}
	tofu := false
	switch policy := cmpOr(spec["host_key_policy"], "strict"); policy {
	case "strict":
	case "tofu":
		tofu = true
		// The first host ever creates the file.
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("known_hosts %s: %w", path, err)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("known_hosts %s: %w", path, err)
		}
		f.Close()
	default:
		return nil, fmt.Errorf("spec.host_key_policy %q: want strict or tofu", policy)
	}
	check, err := knownhosts.New(path)
	if err != nil {
		return nil, fmt.Errorf("known_hosts %s: %w", path, err)
	}
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := check(hostname, remote, key)
		var keyErr *knownhosts.KeyError
		if tofu && errors.As(err, &keyErr) && len(keyErr.Want) == 0 {
			// Unknown host: trust this key and pin it from now on. One
			// small O_APPEND write, so concurrent first contacts do not
			// interleave.
			f, ferr := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
			if ferr != nil {
				return fmt.Errorf("record the key of %s in %s: %w", hostname, path, ferr)
			}
			defer f.Close()
			if _, ferr := f.WriteString(knownhosts.Line([]string{knownhosts.Normalize(hostname)}, key) + "\n"); ferr != nil {
				return fmt.Errorf("record the key of %s in %s: %w", hostname, path, ferr)
			}
			return nil
		}
		if errors.As(err, &keyErr) && len(keyErr.Want) > 0 {
			want := make([]string, len(keyErr.Want))
			for i, k := range keyErr.Want {
				want[i] = ssh.FingerprintSHA256(k.Key)
			}
			return fmt.Errorf("host key mismatch for %s: it offered %s, known_hosts has %s", hostname, ssh.FingerprintSHA256(key), strings.Join(want, ", "))
		}
		if errors.As(err, &keyErr) {
			return fmt.Errorf("host %s (key %s) is not in %s", hostname, ssh.FingerprintSHA256(key), path)
		}
		return err
	}, nil
}

// authMethods are the ways to log in the spec offers: a key file, a key
// sent by the control plane, the keys of an ssh-agent, a password (also for keyboard-interactive
// prompts). The returned func closes the agent connection.
func authMethods(spec map[string]string) ([]ssh.AuthMethod, func(), error) {
	var methods []ssh.AuthMethod
	closeAll := func() {}
	if path := spec["key_file"]; path != "" {
		pem, err := os.ReadFile(path)
		if err != nil {
			return nil, closeAll, fmt.Errorf("key_file: %w", err)
		}
		signer, err := ssh.ParsePrivateKey(pem)
		if err != nil {
			return nil, closeAll, fmt.Errorf("key_file %s: %w", path, err)
		}
		methods = append(methods, ssh.PublicKeys(signer))
	}
	if pem := spec["private_key"]; pem != "" {
		// A stored credential the control plane sent with this task: it
		// stays in memory; a parse error never quotes it.
		signer, err := ssh.ParsePrivateKey([]byte(pem))
		if err != nil {
			return nil, closeAll, errors.New("private_key (a stored credential) is not a usable private key")
		}
		methods = append(methods, ssh.PublicKeys(signer))
	}
	if socket := spec["agent_socket"]; socket != "" {
		if socket == "env" {
			socket = os.Getenv("SSH_AUTH_SOCK")
			if socket == "" {
				return nil, closeAll, errors.New("agent_socket is env, but SSH_AUTH_SOCK is not set")
			}
		}
		conn, err := net.Dial("unix", socket)
		if err != nil {
			return nil, closeAll, fmt.Errorf("agent_socket: %w", err)
		}
		closeAll = func() { conn.Close() }
		methods = append(methods, ssh.PublicKeysCallback(agent.NewClient(conn).Signers))
	}
	if pw := spec["password"]; pw != "" {
		methods = append(methods, ssh.Password(pw), ssh.KeyboardInteractive(func(_, _ string, questions []string, _ []bool) ([]string, error) {
			answers := make([]string, len(questions))
			for i := range answers {
				answers[i] = pw
			}
			return answers, nil
		}))
	}
	if len(methods) == 0 {
		return nil, closeAll, errors.New("spec needs key_file, private_key, agent_socket or password")
	}
	return methods, closeAll, nil
}
