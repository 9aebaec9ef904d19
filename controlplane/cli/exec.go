package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func newExecCmd(g *globals) *cobra.Command {
	var on, allowDangerous, maxParallel string
	var agents []string
	var timeout time.Duration
	var plan bool
	cmd := &cobra.Command{
		Use:   "exec --on SELECTOR -- COMMAND...",
		Short: "Run one command on matching agents now, without defining a job",
		Long: `Run one command on every agent matching --on (or named by --agent), through
the same engine as jobs: safety checks, audit, live output, results.

  opsconductor exec --on role=web -- uptime
  opsconductor exec --on env=prod --max-parallel 25% -- systemctl restart nginx
  opsconductor exec --on role=web --plan -- df -h     # show what would run, run nothing`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if on == "" && len(agents) == 0 {
				return fmt.Errorf("say where: --on SELECTOR (e.g. role=web) or --agent ID")
			}
			job := &opsconductorv1.Job{Name: "adhoc", Actions: []*opsconductorv1.Action{{Name: "exec", Command: strings.Join(args, " ")}}}
			if timeout > 0 {
				job.Actions[0].Timeout = durationpb.New(timeout)
			}
			if on != "" {
				job.Targets = append(job.Targets, &opsconductorv1.Target{Selector: on})
			}
			for _, id := range agents {
				job.Targets = append(job.Targets, &opsconductorv1.Target{AgentId: id})
			}
			req := &opsconductorv1.CreateExecutionRequest{InlineJob: job, DryRun: plan}
			if maxParallel != "" {
				req.Policy = &opsconductorv1.ExecutionPolicy{MaxParallel: maxParallel}
			}
			if allowDangerous != "" {
				req.DangerousOverride = &opsconductorv1.DangerousOverride{Allow: true, Reason: allowDangerous}
			}
			resp, err := g.executions().CreateExecution(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if plan {
				return g.printPlan(resp.Msg.GetPlan())
			}
			e := resp.Msg.GetExecution()
			fmt.Fprintf(g.stdout, "execution %s of %q on %d targets\n", e.GetId(), job.Actions[0].GetCommand(), len(e.GetTasks()))
			followErr := followExecution(cmd.Context(), g, e.GetId())
			res, err := g.executions().GetExecutionResults(cmd.Context(), connect.NewRequest(&opsconductorv1.GetExecutionResultsRequest{Id: e.GetId()}))
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout)
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TARGET\tSTATUS\tEXIT\tOUTPUT")
			for _, r := range res.Msg.GetResults() {
				exit, output := "-", ""
				if acts := r.GetActions(); len(acts) > 0 {
					exit = fmt.Sprint(acts[0].GetExitCode())
					output = firstLine(acts[0].GetStdout() + acts[0].GetStderr())
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.GetTask().GetAgentName(), r.GetTask().GetStatus(), exit, output)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			return followErr
		},
	}
	cmd.Flags().StringVar(&on, "on", "", "label selector of the agents to run on, e.g. role=web,env=prod")
	cmd.Flags().StringSliceVar(&agents, "agent", nil, "agent id to run on (repeat)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "kill the command after this long (default 1h)")
	cmd.Flags().StringVar(&maxParallel, "max-parallel", "", "targets at once: a number or a percentage")
	cmd.Flags().BoolVar(&plan, "plan", false, "show the targets and the command as they would run; run nothing")
	cmd.Flags().StringVar(&allowDangerous, "allow-dangerous", "", "run a command the safety checker blocks; the value is the audited reason")
	return cmd
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// printPlan shows a dry run: batches of targets, actions, safety findings.
func (g *globals) printPlan(p *opsconductorv1.ExecutionPlan) error {
	if g.output == "json" {
		return g.printJSON(p)
	}
	total := 0
	for _, b := range p.GetBatches() {
		total += len(b.GetAgents())
	}
	fmt.Fprintf(g.stdout, "plan for %s: %d targets in %d batches (nothing was run)\n", p.GetJobName(), total, len(p.GetBatches()))
	if mp := p.GetPolicy().GetMaxParallel(); mp != "" {
		fmt.Fprintf(g.stdout, "at most %s at once\n", mp)
	}
	for _, b := range p.GetBatches() {
		names := make([]string, len(b.GetAgents()))
		for i, a := range b.GetAgents() {
			names[i] = a.GetName()
			if !a.GetOnline() {
				names[i] += " (offline)"
			}
		}
		fmt.Fprintf(g.stdout, "batch %d: %s\n", b.GetNumber(), strings.Join(names, ", "))
	}
	for i, a := range p.GetActions() {
		text := a.GetCommand()
		if text == "" {
			text = a.GetScript()
		}
		fmt.Fprintf(g.stdout, "action %d (%s):\n", i+1, a.GetName())
		printIndented(g.stdout, "  | ", text)
	}
	printFindings(g.stdout, p.GetSafetyFindings())
	return nil
}

func printFindings(w io.Writer, fs []*opsconductorv1.SafetyFinding) {
	for _, f := range fs {
		fmt.Fprintf(w, "blocked without an override: %s: %s (rule %s)\n", f.GetField(), f.GetReason(), f.GetRule())
	}
}
