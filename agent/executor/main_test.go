package executor

import (
	"os"
	"testing"

	"github.com/opsconductor/opsconductor/agent/sandbox"
)

// TestMain lets this test binary act as the sandbox helper, as the agent
// binary does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == sandbox.HelperArg {
		sandbox.Main()
	}
	os.Exit(m.Run())
}
