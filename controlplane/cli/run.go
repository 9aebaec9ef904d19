package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func newRunCmd(g *globals) *cobra.Command {
	var follow bool
	var version int64
	var allowDangerous string
	var plan bool
	var params []string
	cmd := &cobra.Command{
		Use:   "run JOB",
		Short: "Run a job (by id or name) now",
		Long: `Run a job now on every agent its targets resolve to.

With --follow, print each target's status changes and output as they happen,
then a summary; the exit code is 0 only when every target succeeded (2 when
the execution failed).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			j, err := resolveJob(ctx, g, args[0])
			if err != nil {
				return err
			}
			req := &opsconductorv1.CreateExecutionRequest{JobId: j.GetId(), JobVersion: version, DryRun: plan, Parameters: map[string]string{}}
			for _, p := range params {
				k, v, ok := strings.Cut(p, "=")
				if !ok {
					return fmt.Errorf("--param %q: want NAME=VALUE", p)
				}
				req.Parameters[k] = v
			}
			if allowDangerous != "" {
				req.DangerousOverride = &opsconductorv1.DangerousOverride{Allow: true, Reason: allowDangerous}
			}
			resp, err := g.executions().CreateExecution(ctx, connect.NewRequest(req))
			if err != nil {
				return err
			}
			if plan {
				return g.printPlan(resp.Msg.GetPlan())
			}
			e := resp.Msg.GetExecution()
			if !follow {
				if g.output == "json" {
					return g.printJSON(e)
				}
				fmt.Fprintf(g.stdout, "execution %s of %s (version %d) %s on %d targets\n", e.GetId(), e.GetJobName(), e.GetJobVersion(), e.GetStatus(), len(e.GetTasks()))
				fmt.Fprintf(g.stdout, "follow it: opsconductor execution results %s\n", e.GetId())
				return nil
			}
			fmt.Fprintf(g.stdout, "execution %s of %s (version %d) on %d targets\n", e.GetId(), e.GetJobName(), e.GetJobVersion(), len(e.GetTasks()))
			return followExecution(ctx, g, e.GetId())
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream status and output until the execution ends")
	cmd.Flags().Int64Var(&version, "version", 0, "run an older version of the job")
	cmd.Flags().BoolVar(&plan, "plan", false, "show the targets in batch order and the actions as they would run; run nothing")
	cmd.Flags().StringArrayVarP(&params, "param", "p", nil, "parameter value NAME=VALUE (repeat)")
	cmd.Flags().StringVar(&allowDangerous, "allow-dangerous", "", "run commands the safety checker blocks; the value is the reason, which is audited (needs executions:dangerous)")
	return cmd
}

// followExecution streams an execution's events, resuming after a broken
// stream, prints them line by line, then the summary.
func followExecution(ctx context.Context, g *globals, id string) error {
	start := time.Now()
	p := newEventPrinter(g.stdout)
	if isTerminal(g.stdout) {
		if resp, err := g.executions().GetExecution(ctx, connect.NewRequest(&opsconductorv1.GetExecutionRequest{Id: id})); err == nil {
			p.progress = &progress{total: len(resp.Msg.GetExecution().GetTasks()), status: map[string]string{}}
		}
	}
	var last int64
	for attempt := 0; ; attempt++ {
		stream, err := g.executions().WatchExecution(ctx, connect.NewRequest(&opsconductorv1.WatchExecutionRequest{Id: id, AfterSequence: last}))
		if err != nil {
			return err
		}
		for stream.Receive() {
			ev := stream.Msg().GetEvent()
			last = ev.GetSequence()
			p.print(ev)
		}
		err = stream.Err()
		stream.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			break // the server ends the stream after the final event
		}
		if attempt >= 10 || connect.CodeOf(err) != connect.CodeUnavailable {
			return fmt.Errorf("watch execution %s: %w", id, err)
		}
		time.Sleep(time.Second)
	}
	p.flush()
	resp, err := g.executions().GetExecution(ctx, connect.NewRequest(&opsconductorv1.GetExecutionRequest{Id: id}))
	if err != nil {
		return err
	}
	e := resp.Msg.GetExecution()
	fmt.Fprintf(g.stdout, "\nexecution %s %s in %s: %s\n", e.GetId(), e.GetStatus(), time.Since(start).Round(10*time.Millisecond), counts(e.GetTaskCounts()))
	for _, t := range e.GetTasks() {
		if t.GetError() != "" {
			fmt.Fprintf(g.stdout, "  %s: %s: %s\n", t.GetAgentName(), t.GetStatus(), t.GetError())
		}
	}
	if e.GetStatus() != "succeeded" {
		return &exitError{code: 2, err: fmt.Errorf("execution %s %s", e.GetId(), e.GetStatus())}
	}
	return nil
}

func counts(m map[string]int32) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", m[k], k)
	}
	return strings.Join(parts, ", ")
}

// eventPrinter prints events as "[target] ..." lines, holding back partial
// output lines until they end so targets never interleave mid-line.
type eventPrinter struct {
	w       io.Writer
	partial map[string]*bytes.Buffer
	order   []string
	// progress, on a terminal, keeps a bar on the last line.
	progress *progress
}

// progress counts targets as their tasks end.
type progress struct {
	total  int
	status map[string]string // task id -> last status
}

var finalStatus = map[string]bool{"succeeded": true, "failed": true, "timed_out": true, "cancelled": true, "lost": true, "expired": true, "skipped": true, "unknown": true}

// bar renders "[#####-----] 5/10 targets done, 1 failed".
func (p *progress) bar() string {
	done, failed := 0, 0
	for _, st := range p.status {
		if finalStatus[st] {
			done++
			if st != "succeeded" {
				failed++
			}
		}
	}
	const width = 20
	filled := 0
	if p.total > 0 {
		filled = done * width / p.total
	}
	return fmt.Sprintf("[%s%s] %d/%d targets done, %d failed", strings.Repeat("#", filled), strings.Repeat("-", width-filled), done, p.total, failed)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}

func newEventPrinter(w io.Writer) *eventPrinter {
	return &eventPrinter{w: w, partial: map[string]*bytes.Buffer{}}
}

func (p *eventPrinter) print(ev *opsconductorv1.ExecutionEvent) {
	if p.progress != nil {
		fmt.Fprint(p.w, "\r\033[K") // the bar's line gives way to the event
		defer func() { fmt.Fprint(p.w, p.progress.bar()) }()
		if ev.GetType() == "task.status" {
			p.progress.status[ev.GetTaskId()] = ev.GetStatus()
		}
	}
	switch ev.GetType() {
	case "task.status":
		p.flushTask(ev.GetAgentName())
		line := fmt.Sprintf("[%s] %s", ev.GetAgentName(), ev.GetStatus())
		if ev.GetError() != "" {
			line += ": " + ev.GetError()
		}
		fmt.Fprintln(p.w, line)
	case "task.output":
		prefix := fmt.Sprintf("[%s] #%d %s| ", ev.GetAgentName(), ev.GetActionIndex()+1, streamTag(ev.GetStream()))
		key := prefix
		buf := p.partial[key]
		if buf == nil {
			buf = &bytes.Buffer{}
			p.partial[key] = buf
			p.order = append(p.order, key)
		}
		buf.Write(ev.GetData())
		for {
			line, err := buf.ReadString('\n')
			if err != nil {
				buf.Reset()
				buf.WriteString(line)
				break
			}
			fmt.Fprint(p.w, prefix+line)
		}
	}
}

func streamTag(s string) string {
	if s == "stderr" {
		return "err"
	}
	return "out"
}

func (p *eventPrinter) flushTask(agent string) {
	for _, key := range p.order {
		if strings.HasPrefix(key, "["+agent+"] ") {
			if buf := p.partial[key]; buf.Len() > 0 {
				fmt.Fprintln(p.w, key+buf.String())
				buf.Reset()
			}
		}
	}
}

func (p *eventPrinter) flush() {
	if p.progress != nil {
		fmt.Fprint(p.w, "\r\033[K")
	}
	for _, key := range p.order {
		if buf := p.partial[key]; buf.Len() > 0 {
			fmt.Fprintln(p.w, key+buf.String())
			buf.Reset()
		}
	}
}

func newExecutionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "execution", Short: "Inspect executions"}
	cmd.AddCommand(&cobra.Command{
		Use:   "get ID",
		Short: "Show an execution's status and its tasks",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.executions().GetExecution(cmd.Context(), connect.NewRequest(&opsconductorv1.GetExecutionRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			e := resp.Msg.GetExecution()
			if g.output == "json" {
				return g.printJSON(e)
			}
			fmt.Fprintf(g.stdout, "execution %s of %s (version %d): %s (%s)\n", e.GetId(), e.GetJobName(), e.GetJobVersion(), e.GetStatus(), counts(e.GetTaskCounts()))
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TARGET\tSTATUS\tERROR")
			for _, t := range e.GetTasks() {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", t.GetAgentName(), t.GetStatus(), t.GetError())
			}
			return tw.Flush()
		},
	}, newCancelCmd(g), newRetryCmd(g), newExecutionListCmd(g), &cobra.Command{
		Use:   "watch ID",
		Short: "Follow an execution live: status changes and output until it ends",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return followExecution(cmd.Context(), g, args[0])
		},
	}, &cobra.Command{
		Use:   "results ID",
		Short: "Show per-target, per-action results and output",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.executions().GetExecutionResults(cmd.Context(), connect.NewRequest(&opsconductorv1.GetExecutionResultsRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			e := resp.Msg.GetExecution()
			fmt.Fprintf(g.stdout, "execution %s of %s (version %d): %s\n", e.GetId(), e.GetJobName(), e.GetJobVersion(), e.GetStatus())
			for _, r := range resp.Msg.GetResults() {
				t := r.GetTask()
				fmt.Fprintf(g.stdout, "\n== %s: %s %s\n", t.GetAgentName(), t.GetStatus(), t.GetError())
				for _, a := range r.GetActions() {
					fmt.Fprintf(g.stdout, "-- #%d %s: %s (exit %d) %s\n", a.GetIndex()+1, a.GetName(), a.GetStatus(), a.GetExitCode(), a.GetError())
					printIndented(g.stdout, "   out| ", a.GetStdout())
					printIndented(g.stdout, "   err| ", a.GetStderr())
				}
				if r.GetOutputTruncated() {
					fmt.Fprintf(g.stdout, "   (output was cut at the per-task limit of %d bytes)\n", r.GetOutputLimitBytes())
				}
			}
			return nil
		},
	})
	return cmd
}

func printIndented(w io.Writer, prefix, text string) {
	if text == "" {
		return
	}
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fmt.Fprintln(w, prefix+line)
	}
}

func newAgentCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "agent", Short: "List agents and create join tokens"}
	var selector string
	list := &cobra.Command{
		Use:   "list",
		Short: "List enrolled agents with their labels and status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.agents().ListAgents(cmd.Context(), connect.NewRequest(&opsconductorv1.ListAgentsRequest{LabelSelector: selector}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATUS\tSTATE\tLABELS\tHOST\tOS/ARCH\tVERSION\tLAST SEEN\tID")
			for _, a := range resp.Msg.GetAgents() {
				seen := time.Since(a.GetLastSeenTime().AsTime()).Round(time.Second).String() + " ago"
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s/%s\t%s\t%s\t%s\n", a.GetName(), a.GetStatus(), a.GetState(), labels(a.GetLabels()), a.GetHostname(),
					a.GetOs(), a.GetArch(), a.GetAgentVersion(), seen, a.GetId())
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVarP(&selector, "selector", "l", "", "only agents with these labels, e.g. role=web")

	var reason string
	revoke := &cobra.Command{
		Use:   "revoke AGENT_ID",
		Short: "Revoke an agent: its next call fails, its queued and running tasks end as lost",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.agents().RevokeAgent(cmd.Context(), connect.NewRequest(&opsconductorv1.RevokeAgentRequest{Id: args[0], Reason: reason}))
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "agent %s revoked; %d of its tasks ended as lost\n", args[0], resp.Msg.GetTasksLost())
			return nil
		},
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why, for the audit trail")

	var ttl time.Duration
	var maxUses int32
	var description string
	var tokenLabels, outFile string
	token := &cobra.Command{Use: "token", Short: "Manage join tokens"}
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token that lets agents enroll",
		Long: `Create a join token. Give it to an agent's first start:

  opsconductor-agent --server URL --join-token TOKEN --labels role=web

The token is shown once; only its hash is stored.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &opsconductorv1.CreateJoinTokenRequest{MaxUses: maxUses, Description: description}
			if tokenLabels != "" {
				req.Labels = map[string]string{}
				for _, pair := range strings.Split(tokenLabels, ",") {
					k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
					if !ok {
						return fmt.Errorf("--labels: %q is not key=value", pair)
					}
					req.Labels[k] = v
				}
			}
			if ttl > 0 {
				req.Ttl = durationpbNew(ttl)
			}
			resp, err := g.agents().CreateJoinToken(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if outFile != "" {
				// For scripts and deploy steps: the token in a file only
				// its owner reads, written whole or not at all.
				if err := writeSecretFile(outFile, resp.Msg.GetToken()+"\n"); err != nil {
					return fmt.Errorf("--out: %w", err)
				}
			} else if g.output == "json" {
				return g.printJSON(resp.Msg)
			} else {
				fmt.Fprintln(g.stdout, resp.Msg.GetToken())
			}
			fmt.Fprintf(g.stderr, "join token %s expires %s; it is shown only now\n", resp.Msg.GetTokenId(), resp.Msg.GetExpireTime().AsTime().Format(time.RFC3339))
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token can be used")
	create.Flags().Int32Var(&maxUses, "max-uses", 0, "how many agents may enroll with it (0: unlimited)")
	create.Flags().StringVar(&description, "description", "", "what the token is for")
	create.Flags().StringVar(&tokenLabels, "labels", "", "labels every agent enrolled with it gets, over its own (e.g. env=prod)")
	create.Flags().StringVar(&outFile, "out", "", "write the token to this file (mode 0600) instead of standard output")
	token.AddCommand(create)
	for _, verb := range []string{"drain", "pause", "resume"} {
		cmd.AddCommand(newAgentStateCmd(g, verb))
	}
	cmd.AddCommand(list, revoke, token)
	return cmd
}

func newCancelCmd(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel an execution: queued targets at once, running ones via their agents",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.executions().CancelExecution(cmd.Context(), connect.NewRequest(&opsconductorv1.CancelExecutionRequest{Id: args[0], Reason: reason}))
			if err != nil {
				return err
			}
			e := resp.Msg.GetExecution()
			fmt.Fprintf(g.stdout, "execution %s: cancel requested (%s)\n", e.GetId(), counts(e.GetTaskCounts()))
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the record")
	return cmd
}

func newRetryCmd(g *globals) *cobra.Command {
	var all, follow bool
	cmd := &cobra.Command{
		Use:   "retry ID",
		Short: "Run a finished execution again on the targets that did not succeed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.executions().RetryExecution(cmd.Context(), connect.NewRequest(&opsconductorv1.RetryExecutionRequest{Id: args[0], AllTargets: all}))
			if err != nil {
				return err
			}
			e := resp.Msg.GetExecution()
			fmt.Fprintf(g.stdout, "execution %s of %s (version %d) on %d targets, retrying %s\n", e.GetId(), e.GetJobName(), e.GetJobVersion(), len(e.GetTasks()), args[0])
			if follow {
				return followExecution(cmd.Context(), g, e.GetId())
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "retry every target, not only those that did not succeed")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream status and output until it ends")
	return cmd
}

// newAgentStateCmd is `opsconductor agent drain|pause|resume ID`.
func newAgentStateCmd(g *globals, verb string) *cobra.Command {
	short := map[string]string{
		"drain":  "Give the agent no new tasks; its running ones finish (taking a host out)",
		"pause":  "Stop giving the agent new tasks for a while; its running ones finish",
		"resume": "Give a drained or paused agent work again",
	}[verb]
	return &cobra.Command{
		Use:   verb + " AGENT_ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			switch verb {
			case "drain":
				_, err = g.agents().DrainAgent(cmd.Context(), connect.NewRequest(&opsconductorv1.DrainAgentRequest{Id: args[0]}))
			case "pause":
				_, err = g.agents().PauseAgent(cmd.Context(), connect.NewRequest(&opsconductorv1.PauseAgentRequest{Id: args[0]}))
			default:
				_, err = g.agents().ResumeAgent(cmd.Context(), connect.NewRequest(&opsconductorv1.ResumeAgentRequest{Id: args[0]}))
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "agent %s: %s\n", args[0], map[string]string{"drain": "draining", "pause": "paused", "resume": "active"}[verb])
			return nil
		},
	}
}

func newExecutionListCmd(g *globals) *cobra.Command {
	var jobRef, status string
	var since time.Duration
	var limit int32
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List executions, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &opsconductorv1.ListExecutionsRequest{Status: status, PageSize: limit}
			if jobRef != "" {
				j, err := resolveJob(cmd.Context(), g, jobRef)
				if err != nil {
					return err
				}
				req.JobId = j.GetId()
			}
			if since > 0 {
				req.Since = timestamppb.New(time.Now().Add(-since))
			}
			resp, err := g.executions().ListExecutions(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tJOB\tSTATUS\tTARGETS\tCREATED\tBY")
			for _, e := range resp.Msg.GetExecutions() {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.GetId(), e.GetJobName(), e.GetStatus(), counts(e.GetTaskCounts()),
					e.GetCreateTime().AsTime().Local().Format(time.DateTime), e.GetCreatedBy())
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&jobRef, "job", "", "only executions of this job (id or name)")
	cmd.Flags().StringVar(&status, "status", "", "only executions in this status")
	cmd.Flags().DurationVar(&since, "since", 0, "only executions created within this long, e.g. 24h")
	cmd.Flags().Int32Var(&limit, "limit", 50, "how many")
	return cmd
}

// writeSecretFile writes body to path with mode 0600 through a new
// temporary file (0600 from the start), synced, then renamed.
func writeSecretFile(path, body string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // nothing left after the rename
	if _, err := f.WriteString(body); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
