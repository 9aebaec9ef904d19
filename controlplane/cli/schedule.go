package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

func (g *globals) schedules() opsconductorv1connect.ScheduleServiceClient {
	return opsconductorv1connect.NewScheduleServiceClient(g.client, g.server, g.withToken())
}

// timing is the flags that say when a schedule fires.
type timing struct {
	cron, zone       string
	every, jitter    time.Duration
	at, anchor       string
	start, end       string
	misfire, overlap string
	misfireGrace     time.Duration
	params           []string
}

func (t *timing) flags(cmd *cobra.Command, policies bool) {
	f := cmd.Flags()
	f.StringVar(&t.cron, "cron", "", `cron expression: 5 fields, 6 with seconds, or @hourly, @daily, "@every 90s", ...`)
	f.DurationVar(&t.every, "every", 0, "fire every this long (an interval schedule)")
	f.StringVar(&t.anchor, "anchor", "", "RFC 3339 instant an interval counts from (default: --start, else the epoch)")
	f.StringVar(&t.at, "at", "", "RFC 3339 instant to fire once")
	f.StringVar(&t.zone, "zone", "", "IANA time zone the cron fields are read in (default UTC)")
	f.StringVar(&t.start, "start", "", "RFC 3339 instant before which it does not fire")
	f.StringVar(&t.end, "end", "", "RFC 3339 instant after which it does not fire")
	if policies {
		f.DurationVar(&t.jitter, "jitter", 0, "delay each fire by up to this much")
		f.StringArrayVar(&t.params, "param", nil, "parameter value NAME=VALUE (repeat)")
		f.StringVar(&t.misfire, "misfire", "", "skip (default) or run_once: what a fire missed during downtime does")
		f.DurationVar(&t.misfireGrace, "misfire-grace", 0, "how late a fire may still run (default 60s)")
		f.StringVar(&t.overlap, "overlap", "", "allow, skip (default) or queue: when the previous run still runs")
	}
}

func instant(flag, s string) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, fmt.Errorf("--%s: want an RFC 3339 instant such as 2026-12-24T18:00:00+01:00, got %q", flag, s)
	}
	return timestamppb.New(t), nil
}

// schedule builds the Schedule the flags describe.
func (t *timing) schedule() (*opsconductorv1.Schedule, error) {
	sc := &opsconductorv1.Schedule{Cron: t.cron, TimeZone: t.zone, MisfirePolicy: t.misfire, OverlapPolicy: t.overlap}
	kinds := 0
	if t.cron != "" {
		sc.Kind, kinds = "cron", kinds+1
	}
	if t.every != 0 {
		sc.Kind, sc.Every, kinds = "interval", durationpb.New(t.every), kinds+1
	}
	if t.at != "" {
		sc.Kind, kinds = "once", kinds+1
	}
	if kinds != 1 {
		return nil, fmt.Errorf("give exactly one of --cron, --every and --at")
	}
	var err error
	for _, f := range []struct {
		name, value string
		into        **timestamppb.Timestamp
	}{{"at", t.at, &sc.At}, {"anchor", t.anchor, &sc.Anchor}, {"start", t.start, &sc.StartTime}, {"end", t.end, &sc.EndTime}} {
		if *f.into, err = instant(f.name, f.value); err != nil {
			return nil, err
		}
	}
	if t.jitter != 0 {
		sc.Jitter = durationpb.New(t.jitter)
	}
	if t.misfireGrace != 0 {
		sc.MisfireGrace = durationpb.New(t.misfireGrace)
	}
	for _, p := range t.params {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--param %q: want NAME=VALUE", p)
		}
		if sc.Parameters == nil {
			sc.Parameters = map[string]string{}
		}
		sc.Parameters[k] = v
	}
	return sc, nil
}

func newScheduleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "schedule", Short: "Run jobs on a clock: create, list, preview, pause, resume, delete schedules"}
	cmd.AddCommand(newScheduleCreateCmd(g), newScheduleListCmd(g), newSchedulePreviewCmd(g), newScheduleFiresCmd(g),
		&cobra.Command{
			Use: "get ID", Short: "Show a schedule as JSON", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				resp, err := g.schedules().GetSchedule(cmd.Context(), connect.NewRequest(&opsconductorv1.GetScheduleRequest{Id: args[0]}))
				if err != nil {
					return err
				}
				return g.printJSON(resp.Msg.GetSchedule())
			},
		},
		&cobra.Command{
			Use: "pause ID", Short: "Stop a schedule from firing until resumed", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if _, err := g.schedules().PauseSchedule(cmd.Context(), connect.NewRequest(&opsconductorv1.PauseScheduleRequest{Id: args[0]})); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "schedule %s paused\n", args[0])
				return nil
			},
		},
		&cobra.Command{
			Use: "resume ID", Short: "Let a paused schedule fire again, from now on", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				resp, err := g.schedules().ResumeSchedule(cmd.Context(), connect.NewRequest(&opsconductorv1.ResumeScheduleRequest{Id: args[0]}))
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "schedule %s resumed; next fire %s\n", args[0], when(resp.Msg.GetSchedule().GetNextFireTime()))
				return nil
			},
		},
		&cobra.Command{
			Use: "delete ID", Short: "Delete a schedule (its fires and executions stay)", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if _, err := g.schedules().DeleteSchedule(cmd.Context(), connect.NewRequest(&opsconductorv1.DeleteScheduleRequest{Id: args[0]})); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "schedule %s deleted\n", args[0])
				return nil
			},
		})
	return cmd
}

func when(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

func newScheduleCreateCmd(g *globals) *cobra.Command {
	var t timing
	var jobRef, name string
	cmd := &cobra.Command{
		Use:   "create --job JOB (--cron EXPR | --every DURATION | --at INSTANT) [flags]",
		Short: "Create a schedule for a job (by id or name)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if jobRef == "" {
				return fmt.Errorf("--job is required")
			}
			sc, err := t.schedule()
			if err != nil {
				return err
			}
			j, err := resolveJob(cmd.Context(), g, jobRef)
			if err != nil {
				return err
			}
			sc.JobId, sc.Name = j.GetId(), name
			resp, err := g.schedules().CreateSchedule(cmd.Context(), connect.NewRequest(&opsconductorv1.CreateScheduleRequest{Schedule: sc}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg.GetSchedule())
			}
			fmt.Fprintf(g.stdout, "schedule %s created for job %s; next fire %s\n", resp.Msg.GetSchedule().GetId(), j.GetName(), when(resp.Msg.GetSchedule().GetNextFireTime()))
			return nil
		},
	}
	cmd.Flags().StringVar(&jobRef, "job", "", "the job to run (id or name)")
	cmd.Flags().StringVar(&name, "name", "", "a name for the schedule")
	t.flags(cmd, true)
	return cmd
}

func newScheduleListCmd(g *globals) *cobra.Command {
	var jobRef, state string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List schedules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &opsconductorv1.ListSchedulesRequest{State: state}
			if jobRef != "" {
				j, err := resolveJob(cmd.Context(), g, jobRef)
				if err != nil {
					return err
				}
				req.JobId = j.GetId()
			}
			resp, err := g.schedules().ListSchedules(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tJOB\tWHEN\tZONE\tSTATE\tNEXT FIRE (UTC)")
			for _, s := range resp.Msg.GetSchedules() {
				what := s.GetCron()
				switch s.GetKind() {
				case "interval":
					what = "every " + s.GetEvery().AsDuration().String()
				case "once":
					what = "at " + when(s.GetAt())
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.GetId(), orDash(s.GetName()), s.GetJobId(), what, orDash(s.GetTimeZone()), s.GetState(), when(s.GetNextFireTime()))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&jobRef, "job", "", "only the schedules of this job (id or name)")
	cmd.Flags().StringVar(&state, "state", "", "only active, paused or completed ones")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newSchedulePreviewCmd(g *globals) *cobra.Command {
	var t timing
	var count int32
	cmd := &cobra.Command{
		Use:   "preview (--cron EXPR | --every DURATION | --at INSTANT) [--zone ZONE] [--count N]",
		Short: "Show when a schedule would fire, in its zone and in UTC, saving nothing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sc, err := t.schedule()
			if err != nil {
				return err
			}
			resp, err := g.schedules().ValidateSchedule(cmd.Context(), connect.NewRequest(&opsconductorv1.ValidateScheduleRequest{Schedule: sc, Count: count}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LOCAL\tUTC")
			for _, f := range resp.Msg.GetNext() {
				fmt.Fprintf(tw, "%s\t%s\n", f.GetLocal(), when(f.GetUtc()))
			}
			return tw.Flush()
		},
	}
	t.flags(cmd, false)
	cmd.Flags().Int32Var(&count, "count", 5, "how many fire times")
	return cmd
}

func newScheduleFiresCmd(g *globals) *cobra.Command {
	var limit int32
	cmd := &cobra.Command{
		Use:   "fires ID",
		Short: "Show a schedule's fires, newest first: fired, skipped, missed or failed, and why",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.schedules().ListScheduleFires(cmd.Context(), connect.NewRequest(&opsconductorv1.ListScheduleFiresRequest{Id: args[0], Limit: limit}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SCHEDULED FOR (UTC)\tOUTCOME\tLATENESS\tEXECUTION\tREASON")
			for _, f := range resp.Msg.GetFires() {
				late := "-"
				if f.GetLateness() != nil {
					late = f.GetLateness().AsDuration().Round(time.Millisecond).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", when(f.GetScheduledFor()), f.GetOutcome(), late, orDash(f.GetExecutionId()), orDash(f.GetReason()))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().Int32Var(&limit, "limit", 20, "how many fires")
	return cmd
}
