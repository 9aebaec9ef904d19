package winrmtest

import (
	"strconv"
	"strings"
	"sync"
	"time"
)

type chunk struct{ stream, data string }

// command is one command "running" in the emulator.
type command struct {
	line   string
	script string // decoded PowerShell, "" for cmd

	mu         sync.Mutex
	pending    []chunk
	done       bool
	exit       int
	changed    chan struct{} // closed and replaced on every change
	terminated chan struct{}
	stopOnce   sync.Once
}

func newCommand(line string) *command {
	return &command{line: line, script: decodePowerShell(line), changed: make(chan struct{}), terminated: make(chan struct{})}
}

func (c *command) emit(stream, data string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, chunk{stream, data})
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *command) finish(exit int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	c.done, c.exit = true, exit
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *command) terminate() {
	c.stopOnce.Do(func() { close(c.terminated) })
}

// sleep waits d or until terminated; false means terminated.
func (c *command) sleep(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-c.terminated:
		return false
	}
}

// receive returns the output since the last call, waiting up to wait for
// some, and whether the command has ended (with its exit code).
func (c *command) receive(wait time.Duration) ([]chunk, bool, int) {
	deadline := time.After(wait)
	for {
		c.mu.Lock()
		if len(c.pending) > 0 || c.done {
			out, done, exit := c.pending, c.done, c.exit
			c.pending = nil
			c.mu.Unlock()
			return out, done, exit
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			return nil, false, 0
		}
	}
}

// run interprets the command line until it ends or is terminated.
func (c *command) run() {
	var exit int
	if c.script != "" {
		exit = c.runPowerShell()
	} else {
		exit = c.runCmd()
	}
	c.finish(exit)
}

func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && (s[0] == '\'' || s[0] == '"') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

func (c *command) runCmd() int {
	for _, st := range strings.Split(c.line, " & ") {
		st = strings.TrimSpace(st)
		word, rest, _ := strings.Cut(st, " ")
		switch strings.ToLower(word) {
		case "echo":
			if text, ok := strings.CutSuffix(rest, " 1>&2"); ok {
				c.emit("stderr", text+"\r\n")
			} else {
				c.emit("stdout", rest+"\r\n")
			}
		case "timeout":
			f := strings.Fields(rest)
			if len(f) < 2 || f[0] != "/t" {
				c.emit("stderr", "ERROR: Invalid syntax.\r\n")
				return 1
			}
			n, _ := strconv.Atoi(f[1])
			if !c.sleep(time.Duration(n) * time.Second) {
				return 1
			}
		case "exit":
			f := strings.Fields(rest)
			if len(f) == 2 && strings.EqualFold(f[0], "/b") {
				n, _ := strconv.Atoi(f[1])
				return n
			}
			return 0
		default:
			c.emit("stderr", "'"+word+"' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n")
			return 9009
		}
	}
	return 0
}

func (c *command) runPowerShell() int {
	statements := strings.FieldsFunc(c.script, func(r rune) bool { return r == ';' || r == '\n' })
	for _, st := range statements {
		st = strings.TrimSpace(st)
		if st == "" || strings.HasPrefix(st, "$ProgressPreference") {
			continue
		}
		word, rest, _ := strings.Cut(st, " ")
		switch strings.ToLower(word) {
		case "write-output", "write-host":
			c.emit("stdout", unquote(rest)+"\r\n")
		case "write-error":
			c.emit("stderr", unquote(rest)+"\r\n")
		case "start-sleep":
			f := strings.Fields(rest)
			if len(f) != 2 || !strings.EqualFold(f[0], "-Seconds") {
				c.emit("stderr", "Start-Sleep: the emulator knows only -Seconds N\r\n")
				return 1
			}
			n, _ := strconv.Atoi(f[1])
			if !c.sleep(time.Duration(n) * time.Second) {
				return 1
			}
		case "exit":
			n, _ := strconv.Atoi(strings.TrimSpace(rest))
			return n
		default:
			c.emit("stderr", word+" : The term '"+word+"' is not recognized as the name of a cmdlet, function, script file, or operable program.\r\n")
			return 1
		}
	}
	return 0
}
