package executor

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	pluginv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/plugin/v1"
)

// TestBuiltins: the built-in executors served as plugins by this binary
// run actions (output, exit code, timeout), describe themselves with their
// spec keys, and end tasks.
func TestBuiltins(t *testing.T) {
	b := &Builtins{Self: os.Args[0]}
	defer b.Close()
	shell := b.Executor("shell")
	var out, errOut syncBuffer
	res := shell.Execute(context.Background(), Action{Command: "echo out; echo err >&2; exit 3", Task: "t1"}, &out, &errOut)
	if res.Status != StatusFailed || res.ExitCode != 3 || out.String() != "out\n" || errOut.String() != "err\n" {
		t.Fatalf("result %+v, stdout %q, stderr %q", res, out.String(), errOut.String())
	}
	start := time.Now()
	res = shell.Execute(context.Background(), Action{Command: "sleep 30", Timeout: 500 * time.Millisecond}, &syncBuffer{}, &syncBuffer{})
	if res.Status != StatusTimedOut || time.Since(start) > 10*time.Second {
		t.Fatalf("timeout: %+v after %s", res, time.Since(start))
	}
	// The plugin's own go-plugin settings do not reach actions.
	out = syncBuffer{}
	shell.Execute(context.Background(), Action{Command: "env"}, &out, &syncBuffer{})
	if strings.Contains(out.String(), "PLUGIN_") || strings.Contains(out.String(), "OPSCONDUCTOR_PLUGIN") {
		t.Fatalf("actions see the plugin's environment:\n%s", out.String())
	}
	shell.(TaskEnder).EndTask(context.Background(), "t1")

	for _, name := range BuiltinNames {
		c, err := b.client(name)
		if err != nil {
			t.Fatal(err)
		}
		d, err := c.Describe(context.Background())
		if err != nil || d.GetName() != name || len(d.GetSpec()) == 0 {
			t.Fatalf("describe %s = %v, %v", name, d, err)
		}
		if name != "shell" && !slices.ContainsFunc(d.GetSpec(), func(k *pluginv1.SpecKey) bool { return k.GetName() == "host" && k.GetRequired() }) {
			t.Fatalf("%s does not say host is required: %v", name, d.GetSpec())
		}
	}
}
