package executor

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/agent/executor/sshtest"
	"github.com/opsconductor/opsconductor/agent/executor/winrmtest"
)

// The WinRM tests run against winrmtest, a WS-Management EMULATOR (no
// Windows host exists here): they prove the protocol exchange, streaming,
// exit codes, cancellation and error reporting, not Windows itself.

func winrmSpec(s *winrmtest.Server, extra ...string) map[string]string {
	spec := map[string]string{"host": s.Host, "port": strconv.Itoa(s.Port), "user": s.User, "password": s.Password}
	for i := 0; i+1 < len(extra); i += 2 {
		spec[extra[i]] = extra[i+1]
	}
	return spec
}

// timedWriter records what was written and when.
type timedWriter struct {
	mu     sync.Mutex
	buf    strings.Builder
	writes []time.Time
}

func (w *timedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, time.Now())
	return w.buf.Write(p)
}

func (w *timedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestWinRM(t *testing.T) {
	t.Parallel()
	srv := winrmtest.Start(t, "Administrator", "W1nRM-Test", false)

	t.Run("cmd: output, stderr and exit code", func(t *testing.T) {
		var out, errOut timedWriter
		res := WinRM{}.Execute(context.Background(), Action{Command: "echo hello & echo oops 1>&2 & exit /b 3", Spec: winrmSpec(srv)}, &out, &errOut)
		if res.Status != StatusFailed || res.ExitCode != 3 || !strings.Contains(res.Error, "exited with code 3") {
			t.Fatalf("result = %+v", res)
		}
		if out.String() != "hello\r\n" || errOut.String() != "oops\r\n" {
			t.Fatalf("stdout %q, stderr %q", out.String(), errOut.String())
		}
	})

	t.Run("powershell script sent as -EncodedCommand", func(t *testing.T) {
		script := "Write-Output 'from powershell'\nWrite-Output \"it's quoted\"\nexit 0"
		var out, errOut timedWriter
		res := WinRM{}.Execute(context.Background(), Action{Script: script, Spec: winrmSpec(srv, "shell", "powershell")}, &out, &errOut)
		if res.Status != StatusSucceeded || out.String() != "from powershell\r\nit's quoted\r\n" {
			t.Fatalf("result = %+v, stdout %q, stderr %q", res, out.String(), errOut.String())
		}
		var sent winrmtest.Call
		for _, c := range srv.Calls() {
			if c.Action == "Command" && c.Script != "" {
				sent = c
			}
		}
		if !strings.HasPrefix(sent.Command, "powershell.exe -EncodedCommand ") || !strings.HasSuffix(sent.Script, script) {
			t.Fatalf("command sent = %+v, want the script whole as -EncodedCommand", sent)
		}
	})

	t.Run("output streams while the command runs", func(t *testing.T) {
		var out, errOut timedWriter
		res := WinRM{}.Execute(context.Background(), Action{Command: "Write-Output first; Start-Sleep -Seconds 2; Write-Output second",
			Spec: winrmSpec(srv, "shell", "powershell")}, &out, &errOut)
		end := time.Now()
		if res.Status != StatusSucceeded || out.String() != "first\r\nsecond\r\n" {
			t.Fatalf("result = %+v, stdout %q", res, out.String())
		}
		if first := out.writes[0]; end.Sub(first) < time.Second {
			t.Fatalf("the first line arrived %s before the end: not streamed", end.Sub(first))
		}
	})

	t.Run("protocol: create, command, receive, delete", func(t *testing.T) {
		fresh := winrmtest.Start(t, "u", "p", false)
		res := WinRM{}.Execute(context.Background(), Action{Command: "echo x", Spec: winrmSpec(fresh)}, &timedWriter{}, &timedWriter{})
		if res.Status != StatusSucceeded {
			t.Fatalf("result = %+v", res)
		}
		var actions []string
		for _, c := range fresh.Calls() {
			if len(actions) == 0 || actions[len(actions)-1] != c.Action {
				actions = append(actions, c.Action)
			}
		}
		if got := strings.Join(actions, ","); got != "Create,Command,Receive,Delete" && got != "Create,Command,Receive,Signal,Delete" {
			t.Fatalf("calls = %s", got)
		}
		if fresh.OpenShells() != 0 {
			t.Fatal("the remote shell was not deleted")
		}
	})

	t.Run("timeout terminates the command and deletes the shell", func(t *testing.T) {
		fresh := winrmtest.Start(t, "u", "p", false)
		start := time.Now()
		res := WinRM{}.Execute(context.Background(), Action{Command: "timeout /t 60", Timeout: time.Second, Spec: winrmSpec(fresh)}, &timedWriter{}, &timedWriter{})
		if res.Status != StatusTimedOut {
			t.Fatalf("result = %+v", res)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Fatalf("a 1s timeout took %s", took)
		}
		terminated := false
		for _, c := range fresh.Calls() {
			if c.Action == "Signal" && strings.HasSuffix(c.Signal, "/signal/terminate") {
				terminated = true
			}
		}
		if !terminated || fresh.OpenShells() != 0 {
			t.Fatalf("terminate sent %v, open shells %d; calls %+v", terminated, fresh.OpenShells(), fresh.Calls())
		}
	})

	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(500*time.Millisecond, cancel)
		res := WinRM{}.Execute(ctx, Action{Command: "Start-Sleep -Seconds 60", Spec: winrmSpec(srv, "shell", "powershell")}, &timedWriter{}, &timedWriter{})
		if res.Status != StatusCancelled {
			t.Fatalf("result = %+v", res)
		}
	})

	t.Run("unknown command fails like Windows", func(t *testing.T) {
		var errOut timedWriter
		res := WinRM{}.Execute(context.Background(), Action{Command: "frobnicate", Spec: winrmSpec(srv)}, &timedWriter{}, &errOut)
		if res.ExitCode != 9009 || !strings.Contains(errOut.String(), "is not recognized") {
			t.Fatalf("result = %+v, stderr %q", res, errOut.String())
		}
	})

	t.Run("wrong password is an authentication error", func(t *testing.T) {
		res := WinRM{}.Execute(context.Background(), Action{Command: "echo x", Spec: winrmSpec(srv, "password", "wrong")}, &timedWriter{}, &timedWriter{})
		if res.Status != StatusFailed || !strings.Contains(res.Error, "winrm authentication failed") || !strings.Contains(res.Error, `"Administrator"`) {
			t.Fatalf("result = %+v", res)
		}
	})

	t.Run("closed port is a connection error", func(t *testing.T) {
		res := WinRM{}.Execute(context.Background(), Action{Command: "echo x", Spec: winrmSpec(srv, "port", sshtest.FreePort(t))}, &timedWriter{}, &timedWriter{})
		if res.Status != StatusFailed || !strings.Contains(res.Error, "winrm connection error") {
			t.Fatalf("result = %+v", res)
		}
	})

	t.Run("bad spec is refused", func(t *testing.T) {
		for _, spec := range []map[string]string{winrmSpec(srv, "shell", "bash"), winrmSpec(srv, "auth", "kerberos"), winrmSpec(srv, "connect_timeout", "soon")} {
			if res := (WinRM{}).Execute(context.Background(), Action{Command: "echo x", Spec: spec}, &timedWriter{}, &timedWriter{}); res.Status != StatusFailed {
				t.Errorf("spec %v accepted: %+v", spec, res)
			}
		}
		if res := (WinRM{}).Execute(context.Background(), Action{Script: "echo x", Spec: winrmSpec(srv)}, &timedWriter{}, &timedWriter{}); !strings.Contains(res.Error, "needs spec.shell powershell") {
			t.Errorf("cmd script: %+v", res)
		}
	})
}

func TestWinRMHTTPS(t *testing.T) {
	t.Parallel()
	srv := winrmtest.Start(t, "Administrator", "W1nRM-Test", true)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, srv.CA, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(extra ...string) Result {
		return WinRM{}.Execute(context.Background(), Action{Command: "echo secure", Spec: winrmSpec(srv, append([]string{"https", "true"}, extra...)...)}, &timedWriter{}, &timedWriter{})
	}
	if res := run("ca_file", ca); res.Status != StatusSucceeded {
		t.Fatalf("with the CA: %+v", res)
	}
	if res := run(); res.Status != StatusFailed || !strings.Contains(res.Error, "winrm certificate refused") {
		t.Fatalf("an unknown certificate was accepted: %+v", res)
	}
	if res := run("insecure_skip_verify", "true"); res.Status != StatusSucceeded {
		t.Fatalf("with the explicit opt-out: %+v", res)
	}
}

// TestWinRMNTLM: against an emulator that takes only NTLM, the executor
// with auth ntlm completes the NTLMv2 handshake (the emulator verifies the
// response against its password) and runs the command; a wrong password,
// or Basic, is an authentication error.
func TestWinRMNTLM(t *testing.T) {
	t.Parallel()
	srv := winrmtest.Start(t, "Administrator", "Ntlm-Pass-1", false)
	srv.RequireNTLM()
	var out timedWriter
	res := WinRM{}.Execute(context.Background(), Action{Command: "echo over ntlm", Spec: winrmSpec(srv, "auth", "ntlm")}, &out, &timedWriter{})
	if res.Status != StatusSucceeded || out.String() != "over ntlm\r\n" {
		t.Fatalf("result %+v, stdout %q", res, out.String())
	}
	ntlm := false
	for _, c := range srv.Calls() {
		ntlm = ntlm || c.Action == "NTLM"
	}
	if !ntlm {
		t.Fatal("no NTLM handshake reached the emulator")
	}
	for _, spec := range []map[string]string{winrmSpec(srv, "auth", "ntlm", "password", "wrong"), winrmSpec(srv)} {
		if res := (WinRM{}).Execute(context.Background(), Action{Command: "echo x", Spec: spec}, &timedWriter{}, &timedWriter{}); !strings.Contains(res.Error, "winrm authentication failed") {
			t.Fatalf("spec auth=%q password=%q: %+v", spec["auth"], spec["password"], res)
		}
	}
}
