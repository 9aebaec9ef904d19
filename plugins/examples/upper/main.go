// Command upper is the example executor plugin: it "runs" an action by
// writing its command in capitals. It is what docs/plugins.md walks
// through and what the tests build, pin and load. Spec "panic": "true"
// makes it panic, to show that a crashing plugin fails only its action.
package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/opsconductor/opsconductor/plugins/sdk"
	pluginv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/plugin/v1"
)

type upper struct{}

func (upper) Describe(context.Context) (*pluginv1.DescribeResponse, error) {
	return &pluginv1.DescribeResponse{Name: "upper", Version: "1.0.0", Kinds: []string{"command"}, Transports: []string{"local"},
		Spec: []*pluginv1.SpecKey{{Name: "suffix", Description: "text added after the shout", Default: ""}}}, nil
}

func (upper) Validate(_ context.Context, a *pluginv1.Action) []*pluginv1.Violation {
	if a.GetCommand() == "" {
		return []*pluginv1.Violation{{Field: "command", Description: "upper needs a command to shout"}}
	}
	return nil
}

func (upper) Execute(ctx context.Context, a *pluginv1.Action, _ *pluginv1.Target, stdout, _ io.Writer) sdk.Result {
	if a.GetSpec()["panic"] == "true" {
		panic("upper was asked to panic")
	}
	if d := a.GetSpec()["sleep"]; d != "" {
		wait, _ := time.ParseDuration(d)
		select {
		case <-ctx.Done():
			return sdk.Result{Status: sdk.StatusCancelled, ExitCode: -1, Error: "cancelled"}
		case <-time.After(wait):
		}
	}
	fmt.Fprintln(stdout, strings.ToUpper(a.GetCommand())+a.GetSpec()["suffix"])
	return sdk.Result{Status: sdk.StatusSucceeded}
}

func main() { sdk.Serve(upper{}) }
