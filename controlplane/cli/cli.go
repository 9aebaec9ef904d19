// Package cli holds the subcommands of the opsconductor binary: the server,
// the dev playground and the operator commands that wrap the API. It builds
// each command's configuration and wires its dependencies explicitly.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/opsconductor/opsconductor/agent/transport"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
	"github.com/opsconductor/opsconductor/proto/protocol"
)

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

// Main runs the CLI and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, "error:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "error:", describe(err))
	return 1
}

// describe turns a Connect error into something an operator can act on.
func describe(err error) string {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return err.Error()
	}
	msg := cerr.Message()
	switch cerr.Code() {
	case connect.CodeUnavailable:
		return "cannot reach the control plane (" + msg + "); is it running, and is --server right?"
	case connect.CodeInvalidArgument:
		return "refused: " + strings.ReplaceAll(msg, "; ", "\n  ")
	case connect.CodeUnauthenticated:
		return msg + " (set --token or OPSCONDUCTOR_TOKEN; `opsconductor dev` prints one)"
	case connect.CodePermissionDenied:
		return "permission denied: " + msg
	}
	return fmt.Sprintf("%s (%s)", msg, cerr.Code())
}

// globals are the flags every operator command shares.
type globals struct {
	server string
	token  string
	caFile string
	pin    string
	client *http.Client
	output string
	stdout io.Writer
	stderr io.Writer
}

// withToken sends the operator's token with every call.
func (g *globals) withToken() connect.ClientOption {
	return connect.WithInterceptors(bearerToken(g.token))
}

func (g *globals) jobs() opsconductorv1connect.JobServiceClient {
	return opsconductorv1connect.NewJobServiceClient(g.client, g.server, g.withToken())
}

func (g *globals) executions() opsconductorv1connect.ExecutionServiceClient {
	return opsconductorv1connect.NewExecutionServiceClient(g.client, g.server, g.withToken())
}

func (g *globals) agents() opsconductorv1connect.AgentRegistryServiceClient {
	return opsconductorv1connect.NewAgentRegistryServiceClient(g.client, g.server, g.withToken())
}

func (g *globals) safety() opsconductorv1connect.SafetyServiceClient {
	return opsconductorv1connect.NewSafetyServiceClient(g.client, g.server, g.withToken())
}

func (g *globals) auth() opsconductorv1connect.AuthServiceClient {
	return opsconductorv1connect.NewAuthServiceClient(g.client, g.server, g.withToken())
}

// printJSON writes m as indented protobuf JSON. protojson varies its
// whitespace on purpose; re-indenting gives scripts a stable layout.
func (g *globals) printJSON(m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return err
	}
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return err
	}
	_, err = fmt.Fprintln(g.stdout, out.String())
	return err
}

func (g *globals) validate() error {
	if g.output != "table" && g.output != "json" {
		return fmt.Errorf("--output must be table or json, not %q", g.output)
	}
	g.server = strings.TrimRight(g.server, "/")
	if g.token == "" {
		g.token = os.Getenv("OPSCONDUCTOR_TOKEN")
	}
	if path := os.Getenv("OPSCONDUCTOR_TOKEN_FILE"); g.token == "" && path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("OPSCONDUCTOR_TOKEN_FILE: %w", err)
		}
		g.token = strings.TrimSpace(string(raw))
	}
	client, err := transport.NewHTTPClient(transport.Options{CAFile: g.caFile, PinSHA256: g.pin})
	if err != nil {
		return err
	}
	g.client = client
	return nil
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	def := os.Getenv("OPSCONDUCTOR_SERVER")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	root := &cobra.Command{
		Use:   "opsconductor",
		Short: "Define operational jobs and run them on fleets of hosts",
		Long: `OpsConductor runs operational jobs (ordered shell actions) on fleets of hosts
through agents that poll a control plane.

Start a playground with one local agent:    opsconductor dev
Define a job from YAML:                     opsconductor job apply -f docs/examples/hello.yaml
Run it and watch every target live:         opsconductor run hello --follow
See what it did:                            opsconductor execution results EXECUTION_ID`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       fmt.Sprintf("%s (agent protocol %d)", protocol.Version, protocol.AgentProtocolVersion),
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.validate()
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.server, "server", def, "control plane URL (env OPSCONDUCTOR_SERVER)")
	root.PersistentFlags().StringVar(&g.token, "token", "", "API token or JWT (env OPSCONDUCTOR_TOKEN, or a file in OPSCONDUCTOR_TOKEN_FILE)")
	root.PersistentFlags().StringVar(&g.caFile, "ca-file", os.Getenv("OPSCONDUCTOR_CA_FILE"), "PEM CA bundle for an HTTPS server (env OPSCONDUCTOR_CA_FILE)")
	root.PersistentFlags().StringVar(&g.pin, "server-fingerprint", os.Getenv("OPSCONDUCTOR_SERVER_FINGERPRINT"), "hex SHA-256 of the server certificate to pin (env OPSCONDUCTOR_SERVER_FINGERPRINT)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(newServerCmd(), newMigrateCmd(), newHealthCmd(g), newStoreCmd(g), newGatewayCmd(), newDevCmd(g), newJobCmd(g), newRunCmd(g), newExecutionCmd(g), newAgentCmd(g), newTokenCmd(g), newWhoAmICmd(g), newSafetyCmd(g), newRoleCmd(g), newUserCmd(g), newExecCmd(g), newScheduleCmd(g), newAuditCmd(g), newEventsCmd(g))
	return root
}
