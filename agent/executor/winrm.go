package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/masterzen/winrm"
)

// WinRM runs actions on a Windows host over WS-Management
// (github.com/masterzen/winrm); the action's spec names the host and how
// to log in:
//
//	host, port (5985, or 5986 with https), user, password, https
//	("true"), ca_file (PEM bundle trusted for https; default the system
//	roots), insecure_skip_verify ("true": accept any certificate, an
//	explicit opt-out), auth ("basic", the default, or "ntlm"), shell
//	("cmd", the default, or "powershell"), connect_timeout (10s),
//	operation_timeout (60s: one WS-Management call's limit) and
//	connect_only ("true": open and close a shell, run nothing)
//
// A command runs in a remote shell that is created for the action and
// deleted after it; PowerShell is sent as -EncodedCommand (UTF-16LE,
// base64), so no quoting can break it. Output streams as it arrives;
// cancel or timeout sends the terminate signal. Failures to connect, to
// authenticate, a refused certificate and the command's own exit code are
// reported apart.
type WinRM struct{}

var _ Executor = WinRM{}

func winrmError(kind, addr string, err error) Result {
	return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("winrm %s: %s: %v", kind, addr, err)}
}

// winrmCommand is the command line an action runs in the remote shell.
func winrmCommand(a Action) (string, error) {
	switch shell := cmpOr(a.Spec["shell"], "cmd"); shell {
	case "powershell":
		text := a.Command
		if a.Script != "" {
			text = a.Script
		}
		return winrm.Powershell(text), nil
	case "cmd":
		if a.Script != "" {
			return "", errors.New("a script needs spec.shell powershell (cmd runs one command line)")
		}
		return a.Command, nil
	default:
		return "", fmt.Errorf("spec.shell must be cmd or powershell, got %q", shell)
	}
}

// Execute implements Executor.
func (WinRM) Execute(ctx context.Context, a Action, stdout, stderr io.Writer) Result {
	spec := a.Spec
	host := spec["host"]
	if host == "" {
		return Result{Status: StatusFailed, ExitCode: -1, Error: "winrm: spec.host is required"}
	}
	if a.Upload != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: "winrm: upload actions are not supported over WinRM"}
	}
	connectOnly := spec["connect_only"] == "true"
	line, err := winrmCommand(a)
	if err != nil && !connectOnly {
		return Result{Status: StatusFailed, ExitCode: -1, Error: "winrm: " + err.Error()}
	}
	https := spec["https"] == "true"
	port := 5985
	if https {
		port = 5986
	}
	if v := spec["port"]; v != "" {
		if port, err = strconv.Atoi(v); err != nil || port < 1 || port > 65535 {
			return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("winrm: spec.port must be a port number, got %q", v)}
		}
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	connectTimeout, err := specDuration(spec, "connect_timeout", 10*time.Second)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: "winrm: " + err.Error()}
	}
	opTimeout, err := specDuration(spec, "operation_timeout", 60*time.Second)
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: "winrm: " + err.Error()}
	}
	var ca []byte
	if path := spec["ca_file"]; path != "" {
		if ca, err = os.ReadFile(path); err != nil {
			return Result{Status: StatusFailed, ExitCode: -1, Error: "winrm: ca_file: " + err.Error()}
		}
	}
	endpoint := winrm.NewEndpoint(host, port, https, spec["insecure_skip_verify"] == "true", ca, nil, nil, opTimeout)
	params := winrm.NewParameters(fmt.Sprintf("PT%dS", int(opTimeout.Seconds())), "en-US", 153600)
	dial := (&net.Dialer{Timeout: connectTimeout}).Dial
	params.Dial = dial
	switch auth := cmpOr(spec["auth"], "basic"); auth {
	case "basic":
	case "ntlm":
		params.TransportDecorator = func() winrm.Transporter { return winrm.NewClientNTLMWithDial(dial) }
	default:
		return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("winrm: spec.auth must be basic or ntlm, got %q", auth)}
	}
	user := spec["user"]
	client, err := winrm.NewClientWithParameters(endpoint, user, spec["password"], params)
	if err != nil {
		return winrmError("configuration error", addr, err)
	}

	if a.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.Timeout)
		defer cancel()
	}
	// Creating the shell takes no context: bound it by the dial and
	// operation timeouts, and give up waiting when ctx ends.
	type created struct {
		shell *winrm.Shell
		err   error
	}
	made := make(chan created, 1)
	go func() {
		sh, err := client.CreateShell()
		made <- created{sh, err}
	}()
	var shell *winrm.Shell
	select {
	case c := <-made:
		if c.err != nil {
			return classifyWinRM(addr, user, c.err)
		}
		shell = c.shell
	case <-ctx.Done():
		go func() {
			if c := <-made; c.err == nil {
				_ = c.shell.Close()
			}
		}()
		return ctxResult(ctx, a)
	}
	defer shell.Close() // deletes the remote shell
	if connectOnly {
		fmt.Fprintf(stdout, "connected to %s as %s\n", addr, user)
		return Result{Status: StatusSucceeded}
	}

	cmd, err := shell.ExecuteWithContext(ctx, line)
	if err != nil {
		if ctx.Err() != nil {
			return ctxResult(ctx, a)
		}
		return classifyWinRM(addr, user, err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = io.Copy(stdout, cmd.Stdout) }()
	go func() { defer wg.Done(); _, _ = io.Copy(stderr, cmd.Stderr) }()
	cmd.Wait()
	wg.Wait()
	if ctx.Err() != nil {
		return ctxResult(ctx, a)
	}
	if code := cmd.ExitCode(); code != 0 {
		return Result{Status: StatusFailed, ExitCode: code, Error: fmt.Sprintf("exited with code %d on %s", code, addr)}
	}
	return Result{Status: StatusSucceeded}
}

// ctxResult is how an action ends when ctx did: its timeout, or a cancel.
func ctxResult(ctx context.Context, a Action) Result {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) && a.Timeout > 0 {
		return Result{Status: StatusTimedOut, ExitCode: -1, Error: fmt.Sprintf("timed out after %s", a.Timeout)}
	}
	return Result{Status: StatusCancelled, ExitCode: -1, Error: "cancelled"}
}

// classifyWinRM names why a WinRM call failed; the library only gives
// text, so the text is read.
func classifyWinRM(addr, user string, err error) Result {
	msg := err.Error()
	var netErr net.Error
	switch {
	case strings.Contains(msg, "http response error: 401") || strings.Contains(msg, "http error 401"):
		return winrmError("authentication failed", addr, fmt.Errorf("the host refused user %q", user))
	case strings.Contains(msg, "x509:") || strings.Contains(msg, "tls:"):
		return winrmError("certificate refused", addr, err)
	case errors.As(err, &netErr) && netErr.Timeout():
		return winrmError("timeout", addr, err)
	case strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such host") || strings.Contains(msg, "dial tcp"):
		return winrmError("connection error", addr, err)
	}
	return winrmError("error", addr, err)
}
