package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func newJobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "job", Short: "Create, list, inspect and delete jobs"}
	cmd.AddCommand(newJobApplyCmd(g), newJobListCmd(g), newJobGetCmd(g), newJobDeleteCmd(g), newJobValidateCmd(g))
	return cmd
}

// ParseJobFile reads a job definition in YAML or JSON (protobuf JSON field
// names, either spelling).
func ParseJobFile(data []byte) (*opsconductorv1.Job, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	j := &opsconductorv1.Job{}
	if err := protojson.Unmarshal(js, j); err != nil {
		return nil, fmt.Errorf("not a job definition: %w", err)
	}
	return j, nil
}

func newJobApplyCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create a job from a YAML file, or update the job of that name",
		Long: `Create a job from a YAML (or JSON) file, or update the existing job with the
same name to a new version. An unchanged definition makes no new version.

Example file:

  name: hello
  description: Say hello from every dev agent
  actions:
    - name: greet
      command: echo "hello from $(hostname)"
      timeout: 30s
  targets:
    - selector: env=dev`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("-f FILE is required")
			}
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(os.Stdin)
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return err
			}
			j, err := ParseJobFile(data)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			return applyJob(cmd.Context(), g, j)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "job definition file (- for stdin)")
	return cmd
}

func applyJob(ctx context.Context, g *globals, j *opsconductorv1.Job) error {
	existing, err := findJobByName(ctx, g, j.GetName())
	if err != nil {
		return err
	}
	var out *opsconductorv1.Job
	var warnings []*opsconductorv1.SafetyFinding
	verb := "created"
	switch {
	case existing == nil:
		resp, err := g.jobs().CreateJob(ctx, connect.NewRequest(&opsconductorv1.CreateJobRequest{Job: j}))
		if err != nil {
			return err
		}
		out, warnings = resp.Msg.GetJob(), resp.Msg.GetSafetyWarnings()
	case sameDefinition(existing, j):
		out, verb = existing, "unchanged"
	default:
		j.Id, j.Version = existing.GetId(), existing.GetVersion()
		resp, err := g.jobs().UpdateJob(ctx, connect.NewRequest(&opsconductorv1.UpdateJobRequest{Job: j}))
		if err != nil {
			return err
		}
		out, verb, warnings = resp.Msg.GetJob(), "updated", resp.Msg.GetSafetyWarnings()
	}
	if g.output == "json" {
		return g.printJSON(out)
	}
	fmt.Fprintf(g.stdout, "job %s %s (id %s, version %d)\n", out.GetName(), verb, out.GetId(), out.GetVersion())
	for _, w := range warnings {
		fmt.Fprintf(g.stderr, "warning: %s: %s (rule %s); running it will need --allow-dangerous REASON\n", w.GetField(), w.GetReason(), w.GetRule())
	}
	return nil
}

func sameDefinition(a, b *opsconductorv1.Job) bool {
	strip := func(j *opsconductorv1.Job) *opsconductorv1.Job {
		c := proto.Clone(j).(*opsconductorv1.Job)
		c.Id, c.Version, c.CreateTime, c.UpdateTime = "", 0, nil, nil
		return c
	}
	return proto.Equal(strip(a), strip(b))
}

// findJobByName returns the job with exactly this name, or nil.
func findJobByName(ctx context.Context, g *globals, name string) (*opsconductorv1.Job, error) {
	token := ""
	for {
		resp, err := g.jobs().ListJobs(ctx, connect.NewRequest(&opsconductorv1.ListJobsRequest{NamePrefix: name, PageSize: 500, PageToken: token}))
		if err != nil {
			return nil, err
		}
		for _, j := range resp.Msg.GetJobs() {
			if j.GetName() == name {
				return j, nil
			}
		}
		if token = resp.Msg.GetNextPageToken(); token == "" {
			return nil, nil
		}
	}
}

// resolveJob finds a job by id or, failing that, by name.
func resolveJob(ctx context.Context, g *globals, ref string) (*opsconductorv1.Job, error) {
	resp, err := g.jobs().GetJob(ctx, connect.NewRequest(&opsconductorv1.GetJobRequest{Id: ref}))
	if err == nil {
		return resp.Msg.GetJob(), nil
	}
	if connect.CodeOf(err) != connect.CodeNotFound {
		return nil, err
	}
	j, err := findJobByName(ctx, g, ref)
	if err != nil {
		return nil, err
	}
	if j == nil {
		return nil, fmt.Errorf("no job with id or name %q (see `opsconductor job list`)", ref)
	}
	return j, nil
}

func newJobListCmd(g *globals) *cobra.Command {
	var selector, prefix string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var jobs []*opsconductorv1.Job
			token := ""
			for {
				resp, err := g.jobs().ListJobs(cmd.Context(), connect.NewRequest(&opsconductorv1.ListJobsRequest{LabelSelector: selector, NamePrefix: prefix, PageSize: 500, PageToken: token}))
				if err != nil {
					return err
				}
				jobs = append(jobs, resp.Msg.GetJobs()...)
				if token = resp.Msg.GetNextPageToken(); token == "" {
					break
				}
			}
			if g.output == "json" {
				return g.printJSON(&opsconductorv1.ListJobsResponse{Jobs: jobs})
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tACTIONS\tTARGETS\tLABELS\tID")
			for _, j := range jobs {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", j.GetName(), j.GetVersion(), len(j.GetActions()), targets(j), labels(j.GetLabels()), j.GetId())
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "only jobs with these labels, e.g. team=web")
	cmd.Flags().StringVar(&prefix, "prefix", "", "only jobs whose name starts with this")
	return cmd
}

func targets(j *opsconductorv1.Job) string {
	var parts []string
	for _, t := range j.GetTargets() {
		if t.GetAgentId() != "" {
			parts = append(parts, "agent:"+t.GetAgentId())
		} else {
			parts = append(parts, t.GetSelector())
		}
	}
	return strings.Join(parts, " | ")
}

func labels(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

func newJobGetCmd(g *globals) *cobra.Command {
	var version int64
	cmd := &cobra.Command{
		Use:   "get JOB",
		Short: "Show a job (by id or name) as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := resolveJob(cmd.Context(), g, args[0])
			if err != nil {
				return err
			}
			if version > 0 {
				resp, err := g.jobs().GetJob(cmd.Context(), connect.NewRequest(&opsconductorv1.GetJobRequest{Id: j.GetId(), Version: version}))
				if err != nil {
					return err
				}
				j = resp.Msg.GetJob()
			}
			return g.printJSON(j)
		},
	}
	cmd.Flags().Int64Var(&version, "version", 0, "an older version (default: the current one)")
	return cmd
}

func newJobDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete JOB",
		Short: "Delete a job (by id or name); its executions stay",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := resolveJob(cmd.Context(), g, args[0])
			if err != nil {
				return err
			}
			if _, err := g.jobs().DeleteJob(cmd.Context(), connect.NewRequest(&opsconductorv1.DeleteJobRequest{Id: j.GetId()})); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "job %s deleted\n", j.GetName())
			return nil
		},
	}
}

func newJobValidateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate JOB",
		Short: "Check a stored job and show which agents it would run on now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := resolveJob(cmd.Context(), g, args[0])
			if err != nil {
				return err
			}
			resp, err := g.jobs().ValidateJob(cmd.Context(), connect.NewRequest(&opsconductorv1.ValidateJobRequest{Id: j.GetId()}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			for _, v := range append(resp.Msg.GetViolations(), resp.Msg.GetUnmatchedTargets()...) {
				fmt.Fprintf(g.stdout, "problem: %s: %s\n", v.GetField(), v.GetDescription())
			}
			for _, a := range resp.Msg.GetAgents() {
				state := "online"
				if !a.GetOnline() {
					state = "offline (its task would wait)"
				}
				fmt.Fprintf(g.stdout, "runs on: %s (%s) %s\n", a.GetName(), a.GetAgentId(), state)
			}
			if !resp.Msg.GetValid() {
				return &exitError{code: 1, err: fmt.Errorf("job %s is not runnable", j.GetName())}
			}
			fmt.Fprintf(g.stdout, "job %s is valid\n", j.GetName())
			return nil
		},
	}
}
