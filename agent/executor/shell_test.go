package executor

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the executor's copy goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestShell(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name       string
		action     Action
		wantStatus string
		wantCode   int
		wantOut    string
		wantErr    string
	}{
		{name: "success", action: Action{Command: "echo hi"}, wantStatus: StatusSucceeded, wantOut: "hi\n"},
		{name: "exit code", action: Action{Command: "echo x; exit 7"}, wantStatus: StatusFailed, wantCode: 7, wantOut: "x\n"},
		{name: "env and dir", action: Action{Command: `echo "$GREETING $(pwd)"`, Env: map[string]string{"GREETING": "hello"}, WorkingDir: dir},
			wantStatus: StatusSucceeded, wantOut: "hello " + dir + "\n"},
		{name: "script", action: Action{Script: "a=1\necho $((a+1))\n"}, wantStatus: StatusSucceeded, wantOut: "2\n"},
		{name: "script with shebang", action: Action{Script: "#!/bin/sh\necho from-file\n"}, wantStatus: StatusSucceeded, wantOut: "from-file\n"},
		{name: "missing working dir", action: Action{Command: "true", WorkingDir: dir + "/nope"}, wantStatus: StatusFailed, wantCode: -1, wantErr: "start"},
		{name: "timeout", action: Action{Command: "echo started; sleep 30", Timeout: 300 * time.Millisecond}, wantStatus: StatusTimedOut, wantCode: -1, wantOut: "started\n", wantErr: "timed out"},
		{name: "empty", action: Action{}, wantStatus: StatusFailed, wantCode: -1, wantErr: "neither"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr syncBuffer
			res := (&Shell{}).Execute(context.Background(), tt.action, &stdout, &stderr)
			if res.Status != tt.wantStatus || res.ExitCode != tt.wantCode {
				t.Fatalf("result = %+v, want status %s code %d (stderr %q)", res, tt.wantStatus, tt.wantCode, stderr.String())
			}
			if stdout.String() != tt.wantOut {
				t.Fatalf("stdout = %q, want %q", stdout.String(), tt.wantOut)
			}
			if !strings.Contains(res.Error, tt.wantErr) {
				t.Fatalf("error %q does not mention %q", res.Error, tt.wantErr)
			}
		})
	}
}

// TestShellCancel: cancelling the context stops the action promptly, even
// when it ignores SIGTERM.
func TestShellCancel(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout syncBuffer
	done := make(chan Result, 1)
	go func() {
		done <- (&Shell{KillGrace: 200 * time.Millisecond}).Execute(ctx, Action{Command: "trap '' TERM; echo ready; while :; do sleep 1; done"}, &stdout, &stdout)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "ready") {
		if time.Now().After(deadline) {
			t.Fatal("action never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	cancel()
	select {
	case res := <-done:
		if res.Status != StatusCancelled {
			t.Fatalf("status = %s, want cancelled", res.Status)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("cancel took %s", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled action that ignores SIGTERM was not killed within 10s")
	}
}

// TestShellBackgroundChildDoesNotHang: an action that leaves a child
// holding stdout ends when its shell exits.
func TestShellBackgroundChildDoesNotHang(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	start := time.Now()
	res := (&Shell{}).Execute(context.Background(), Action{Command: "sleep 60 & echo bye"}, &out, &out)
	if res.Status != StatusSucceeded || out.String() != "bye\n" {
		t.Fatalf("result = %+v, output %q", res, out.String())
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("took %s: the background child held the action", took)
	}
}

func TestShellUpload(t *testing.T) {
	t.Parallel()
	dest := t.TempDir() + "/app.conf"
	if err := os.WriteFile(dest, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr syncBuffer
	res := (&Shell{}).Execute(context.Background(), Action{Upload: &Upload{Destination: dest, Content: []byte("new\n"), Mode: 0o600}}, &stdout, &stderr)
	if res.Status != StatusSucceeded || stdout.String() != "uploaded 4 bytes to "+dest+"\n" {
		t.Fatalf("upload = %+v, stdout %q", res, stdout.String())
	}
	got, _ := os.ReadFile(dest)
	info, _ := os.Stat(dest)
	if string(got) != "new\n" || info.Mode().Perm() != 0o600 {
		t.Fatalf("file = %q mode %o, want the new content with mode 600", got, info.Mode().Perm())
	}
	res = (&Shell{}).Execute(context.Background(), Action{Upload: &Upload{Destination: t.TempDir() + "/missing/dir/f"}}, &stdout, &stderr)
	if res.Status != StatusFailed || !strings.Contains(res.Error, "upload to") {
		t.Fatalf("upload into a missing directory = %+v", res)
	}
}
