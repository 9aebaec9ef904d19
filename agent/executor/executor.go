// Package executor runs one action and reports how it ended. The agent
// runs every action through the Executor interface; the local shell
// executor lives here, and the remote-execution issue puts SSH, WinRM and
// third-party executors behind the same interface as go-plugin processes.
package executor

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

// Action statuses an Executor returns.
const (
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusTimedOut  = "timed_out"
	StatusCancelled = "cancelled"
)

// Action is what an executor runs.
type Action struct {
	Index      int
	Name       string
	Plugin     string
	Command    string // run by the shell; exactly one of Command and Script
	Script     string
	Env        map[string]string
	WorkingDir string
	Timeout    time.Duration     // zero means none
	Spec       map[string]string // plugin-specific settings
	Upload     *Upload           // instead of Command and Script: put a file in place
	Task       string            // the task it belongs to (its actions may share a connection)
}

// Upload is a file an action puts on its target.
type Upload struct {
	Destination string // absolute path
	Content     []byte
	Mode        os.FileMode // permission bits; zero means 0644
}

// uploadMode is the file mode an upload gets.
func (u *Upload) mode() os.FileMode {
	if u.Mode == 0 {
		return 0o644
	}
	return u.Mode.Perm()
}

// Result is how an action ended.
type Result struct {
	Status   string // one of the Status constants
	ExitCode int    // -1 when the process did not exit on its own
	Error    string // why, for anything but success
}

// Executor runs actions.
//
// Execute runs a to completion, writing its output to stdout and stderr as
// it comes, and returns how it ended. It must stop the action (and
// everything it started) when ctx ends or a.Timeout passes, and return
// promptly after. Execute is safe for concurrent use.
type Executor interface {
	Execute(ctx context.Context, a Action, stdout, stderr io.Writer) Result
}

// specDuration reads a duration spec key, def when unset.
func specDuration(spec map[string]string, key string, def time.Duration) (time.Duration, error) {
	v := spec[key]
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("spec.%s must be a positive duration such as 10s, got %q", key, v)
	}
	return d, nil
}
