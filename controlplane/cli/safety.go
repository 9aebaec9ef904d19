package cli

import (
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/opsconductor/opsconductor/agent/safety"
	cpsafety "github.com/opsconductor/opsconductor/controlplane/safety"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func newSafetyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "safety", Short: "Ask the dangerous-command checker about a command"}
	var language, rules string
	var local bool
	check := &cobra.Command{
		Use:   "check [--language shell|powershell|cmd] -- COMMAND...",
		Short: "Explain whether a command would be blocked; exit 3 when it would",
		Long: `Check a command (or a script, quoted) against the dangerous-command rules
and say which rule matched and why. The exit status is 0 when the command
would run, 3 when an execution would be refused without an override, so
scripts and CI can use it:

  opsconductor safety check -- 'rm -rf "$DIR"/'
  opsconductor safety check --local -- sudo dd if=/dev/zero of=/dev/sda

By default the control plane answers (with its configured rules); --local
checks here with the built-in rules (plus --rules FILE), no server needed.
It is a safety net, not a security boundary (see docs/safety.md).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			command := strings.Join(args, " ")
			var resp *opsconductorv1.CheckCommandResponse
			if local {
				cfg, err := cpsafety.LoadConfig(rules)
				if err != nil {
					return err
				}
				checker, err := safety.New(cfg)
				if err != nil {
					return err
				}
				r, err := cpsafety.NewService(checker).CheckCommand(cmd.Context(), connect.NewRequest(&opsconductorv1.CheckCommandRequest{Language: language, Command: command}))
				if err != nil {
					return err
				}
				resp = r.Msg
			} else {
				r, err := g.safety().CheckCommand(cmd.Context(), connect.NewRequest(&opsconductorv1.CheckCommandRequest{Language: language, Command: command}))
				if err != nil {
					return err
				}
				resp = r.Msg
			}
			if g.output == "json" {
				if err := g.printJSON(resp); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(g.stdout, "verdict: %s\n", resp.GetVerdict())
				for _, f := range resp.GetFindings() {
					fmt.Fprintf(g.stdout, "  %s [%s, %s]: %s\n    in: %s\n", f.GetRule(), f.GetSeverity(), f.GetVerdict(), f.GetReason(), f.GetSnippet())
				}
			}
			if resp.GetBlocked() {
				return &exitError{code: 3, err: fmt.Errorf("blocked: an execution would need an override (permission executions:dangerous and a reason)")}
			}
			return nil
		},
	}
	check.Flags().StringVar(&language, "language", "shell", "shell, powershell or cmd")
	check.Flags().BoolVar(&local, "local", false, "check here with the built-in rules instead of asking the server")
	check.Flags().StringVar(&rules, "rules", "", "with --local: extra rules and allow-lists (YAML/JSON)")
	cmd.AddCommand(check)
	return cmd
}
