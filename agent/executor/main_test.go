package executor

import (
	"os"
	"testing"

	"github.com/opsconductor/opsconductor/agent/sandbox"
)

// TestMain lets this test binary act as the sandbox helper and as the
// built-in executor plugins, as the agent binary does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == sandbox.HelperArg {
		sandbox.Main()
	}
	if len(os.Args) > 2 && os.Args[1] == BuiltinArg {
		ServeBuiltin(os.Args[2])
		return
	}
	os.Exit(m.Run())
}
