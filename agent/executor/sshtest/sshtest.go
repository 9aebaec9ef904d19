// Package sshtest runs Debian's real OpenSSH server for tests, on a
// loopback port with its own host key and authorized_keys. .ci/run
// installs openssh-server and creates the unprivileged account below
// (password login, sudo with its password) for the become tests.
package sshtest

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

const (
	User     = "opsconductor-test"
	Password = "Opsc0nductor-Test"
)

// Server is one running sshd and the files a client needs for it.
type Server struct {
	Port       string
	KeyFile    string // the client's private key, authorized for every user
	KnownHosts string // a known_hosts line for the server's real key
	OtherHosts string // a known_hosts line for the same address but another key
	HostKey    ssh.PublicKey
}

// WriteKey writes a new ed25519 private key in OpenSSH format to path and
// returns its public half.
func WriteKey(t testing.TB, path string) ssh.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sshPub
}

// FreePort is a loopback TCP port nothing listens on (at the time).
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// Start starts sshd for the test and stops it when the test ends. It
// listens on 127.0.0.1 and on the extra loopback addresses given (such as
// 127.0.0.2), all with the same port and host key. Outside CI it skips the
// test when not root or sshd is missing; in CI (CI set) that is a failure.
func Start(t testing.TB, extraAddresses ...string) *Server {
	t.Helper()
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil || os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("the SSH tests need root and %s (installed by .ci/run): %v", sshd, err)
		}
		t.Skip("needs root and openssh-server; .ci/run provides both")
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	hostKey := WriteKey(t, filepath.Join(dir, "host_key"))
	clientKey := WriteKey(t, filepath.Join(dir, "client_key"))
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientKey), 0o644); err != nil {
		t.Fatal(err)
	}
	// The temp dir must be readable by the unprivileged user, whose
	// session sshd runs as that user.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	addresses := append([]string{"127.0.0.1"}, extraAddresses...)
	// OpenSSH caps one sshd at 16 listen sockets (MAX_LISTEN_SOCKS), so
	// each 16 addresses get their own sshd, all with the same port, host
	// key and settings.
	for n := 0; n*maxListen < len(addresses); n++ {
		group := addresses[n*maxListen : min((n+1)*maxListen, len(addresses))]
		startSSHD(t, sshd, dir, port, n, group)
	}
	addr := knownhosts.Normalize("127.0.0.1:" + port)
	var all []string
	for _, a := range addresses {
		all = append(all, knownhosts.Normalize(a+":"+port))
	}
	known := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(known, []byte(knownhosts.Line(all, hostKey)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other_known_hosts")
	otherKey := WriteKey(t, filepath.Join(dir, "unused_key"))
	if err := os.WriteFile(other, []byte(knownhosts.Line([]string{addr}, otherKey)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return &Server{Port: port, KeyFile: filepath.Join(dir, "client_key"), KnownHosts: known, OtherHosts: other, HostKey: hostKey}
}

// maxListen is OpenSSH's MAX_LISTEN_SOCKS.
const maxListen = 16

// startSSHD runs one sshd on port at addresses, stopped when the test
// ends, and waits until each address answers with the SSH banner.
func startSSHD(t testing.TB, sshd, dir, port string, n int, addresses []string) {
	t.Helper()
	// Port comes first: a ListenAddress without a port uses the Port
	// lines before it.
	listen := []string{"Port " + port}
	for _, a := range addresses {
		listen = append(listen, "ListenAddress "+a)
	}
	config := strings.Join(append(listen,
		// Many targets connect at once: no connection may be dropped as
		// an unauthenticated flood.
		"MaxStartups 500",
		"HostKey "+filepath.Join(dir, "host_key"),
		"AuthorizedKeysFile "+filepath.Join(dir, "authorized_keys"),
		"PermitRootLogin prohibit-password",
		"PasswordAuthentication yes",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"PidFile none",
		"AcceptEnv GREETING",
		"LogLevel VERBOSE",
	), "\n") + "\n"
	configFile := filepath.Join(dir, fmt.Sprintf("sshd_config.%d", n))
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, fmt.Sprintf("sshd.%d.log", n)))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshd, "-D", "-e", "-f", configFile)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			log, _ := os.ReadFile(logFile.Name())
			t.Logf("sshd %d log:\n%s", n, log)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range addresses {
		for !answers(net.JoinHostPort(a, port)) {
			if time.Now().After(deadline) {
				t.Fatalf("sshd did not start on %s port %s", a, port)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// answers reports whether an SSH server greets at addr.
func answers(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "SSH-2.0-")
}

// Spec is an ssh action spec for user on the server (root logs in with
// the key, others with the password), plus extra key, value settings (an
// empty value removes the key).
func (s *Server) Spec(user string, extra ...string) map[string]string {
	spec := map[string]string{"host": "127.0.0.1", "port": s.Port, "user": user, "known_hosts": s.KnownHosts}
	if user == "root" {
		spec["key_file"] = s.KeyFile
	} else {
		spec["password"] = Password
	}
	for i := 0; i+1 < len(extra); i += 2 {
		if extra[i+1] == "" {
			delete(spec, extra[i])
			continue
		}
		spec[extra[i]] = extra[i+1]
	}
	return spec
}
