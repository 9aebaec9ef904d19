package cli

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/audit"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

func (g *globals) audit() opsconductorv1connect.AuditServiceClient {
	return opsconductorv1connect.NewAuditServiceClient(g.client, g.server, g.withToken())
}

// window is the --since/--until flags of a listing.
type window struct {
	since, until time.Duration
	limit        int32
}

func (w *window) flags(cmd *cobra.Command) {
	cmd.Flags().DurationVar(&w.since, "since", 0, "only what happened in this last span, e.g. 24h")
	cmd.Flags().DurationVar(&w.until, "until", 0, "only what happened before this long ago")
	cmd.Flags().Int32Var(&w.limit, "limit", 50, "at most this many, newest first (1-1000)")
}

func (w *window) bounds() (*timestamppb.Timestamp, *timestamppb.Timestamp) {
	var from, to *timestamppb.Timestamp
	if w.since > 0 {
		from = timestamppb.New(time.Now().Add(-w.since))
	}
	if w.until > 0 {
		to = timestamppb.New(time.Now().Add(-w.until))
	}
	return from, to
}

func newAuditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read and verify the audit log of calls that changed something or were refused"}
	var checkpointFile, verifierKey string
	verify := &cobra.Command{
		Use:   "verify [--checkpoint FILE --verifier-key KEY]",
		Short: "Check the audit log's hash chain (and that it extends a kept checkpoint); exit 4 when it does not hold",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &opsconductorv1.VerifyAuditLogRequest{VerifierKey: verifierKey}
			if checkpointFile != "" {
				raw, err := os.ReadFile(checkpointFile)
				if err != nil {
					return err
				}
				req.Checkpoint = string(raw)
			}
			resp, err := g.audit().VerifyAuditLog(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			v := resp.Msg
			if g.output == "json" {
				if err := g.printJSON(v); err != nil {
					return err
				}
			} else if v.GetOk() {
				fmt.Fprintf(g.stdout, "audit log intact: %d records, head %s\n", v.GetRecords(), v.GetHeadHash())
				if checkpointFile != "" {
					fmt.Fprintf(g.stdout, "and it extends the checkpoint in %s\n", checkpointFile)
				}
			}
			switch {
			case v.GetProblem() != "":
				return &exitError{code: 4, err: fmt.Errorf("audit log broken at record %d: %s", v.GetBadSeq(), v.GetProblem())}
			case v.GetCheckpointProblem() != "":
				return &exitError{code: 4, err: fmt.Errorf("audit log does not hold against the checkpoint: %s", v.GetCheckpointProblem())}
			}
			return nil
		},
	}
	verify.Flags().StringVar(&checkpointFile, "checkpoint", "", "a checkpoint kept earlier (opsconductor audit checkpoint > FILE)")
	verify.Flags().StringVar(&verifierKey, "verifier-key", "", "the key the checkpoint's signature must verify with")
	checkpoint := &cobra.Command{
		Use:   "checkpoint",
		Short: "Print the newest signed checkpoint of the audit log (keep it somewhere the server cannot write)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.audit().GetAuditCheckpoint(cmd.Context(), connect.NewRequest(&opsconductorv1.GetAuditCheckpointRequest{}))
			if err != nil {
				return err
			}
			if resp.Msg.GetSize() == 0 {
				return fmt.Errorf("no checkpoint yet: the server needs --audit-signing-key, and records")
			}
			fmt.Fprint(g.stdout, resp.Msg.GetNote())
			return nil
		},
	}
	keygen := &cobra.Command{
		Use:   "keygen",
		Short: "Make a key pair for signing audit checkpoints (the signer for the server, the verifier for auditors)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			signer, verifier, err := audit.GenerateCheckpointKey()
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "signer (--audit-signing-key, keep it secret): %s\nverifier (for auditors): %s\n", signer, verifier)
			return nil
		},
	}
	var w window
	var actor, action, resource, outcome, corr string
	list := &cobra.Command{
		Use:   "list",
		Short: "List audit records, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			from, to := w.bounds()
			resp, err := g.audit().ListAuditRecords(cmd.Context(), connect.NewRequest(&opsconductorv1.ListAuditRecordsRequest{Actor: actor, Action: action,
				Resource: resource, Outcome: outcome, CorrelationId: corr, StartTime: from, EndTime: to, PageSize: w.limit}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			for _, r := range resp.Msg.GetRecords() {
				who := r.GetActor()
				if who == "" {
					who = r.GetActorKind()
				}
				fmt.Fprintf(g.stdout, "%6d  %s  %-20s %-10s %s %s\n", r.GetSeq(), r.GetTime().AsTime().Local().Format(time.DateTime), who, r.GetOutcome(),
					strings.TrimPrefix(r.GetAction(), "/opsconductor."), r.GetResource())
			}
			return nil
		},
	}
	w.flags(list)
	list.Flags().StringVar(&actor, "actor", "", "only this user, token or agent")
	list.Flags().StringVar(&action, "action", "", "only this RPC, e.g. /opsconductor.v1.JobService/CreateJob")
	list.Flags().StringVar(&resource, "resource", "", "only calls about this id or name")
	list.Flags().StringVar(&outcome, "outcome", "", "only this outcome: ok, permission_denied, ...")
	list.Flags().StringVar(&corr, "correlation-id", "", "only this request")
	var fromS, toS, format, table string
	var since time.Duration
	export := &cobra.Command{
		Use:   "export (--from TIME --to TIME | --since 720h) [--format json|csv] [--table records|executions|overrides]",
		Short: "The compliance report of a time range: audit records with the chain proof, who ran what where, dangerous overrides",
		Long: `Export what an auditor needs for a time range: every audit record in it
with the hash before the first and each record's hash (recompute them as
hash_method says), the whole log verified at export time, the newest
signed checkpoint, who ran which jobs on which targets, and every
dangerous-command override with its reason.

--format json (default) writes all of it; --format csv writes one table
(--table records, executions or overrides).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			to := time.Now()
			from := to.Add(-since)
			var err error
			if fromS != "" {
				if from, err = time.Parse(time.RFC3339, fromS); err != nil {
					return fmt.Errorf("--from: want RFC 3339 (2026-11-01T00:00:00Z): %w", err)
				}
			}
			if toS != "" {
				if to, err = time.Parse(time.RFC3339, toS); err != nil {
					return fmt.Errorf("--to: want RFC 3339: %w", err)
				}
			}
			resp, err := g.audit().ExportAudit(cmd.Context(), connect.NewRequest(&opsconductorv1.ExportAuditRequest{StartTime: timestamppb.New(from), EndTime: timestamppb.New(to)}))
			if err != nil {
				return err
			}
			x := resp.Msg
			if !x.GetChainVerified() {
				fmt.Fprintf(g.stderr, "warning: the audit log does not verify: %s\n", x.GetChainProblem())
			}
			switch format {
			case "json":
				return g.printJSON(x)
			case "csv":
			default:
				return fmt.Errorf("--format: json or csv, not %q", format)
			}
			w := csv.NewWriter(g.stdout)
			ts := func(t *timestamppb.Timestamp) string { return t.AsTime().UTC().Format(time.RFC3339Nano) }
			switch table {
			case "records":
				_ = w.Write([]string{"seq", "time", "actor", "actor_kind", "roles", "action", "resource", "outcome", "reason", "peer", "user_agent", "correlation_id", "request", "prev_hash", "hash"})
				for _, r := range x.GetRecords() {
					_ = w.Write([]string{strconv.FormatInt(r.GetSeq(), 10), ts(r.GetTime()), r.GetActor(), r.GetActorKind(), strings.Join(r.GetRoles(), ","), r.GetAction(),
						r.GetResource(), r.GetOutcome(), r.GetReason(), r.GetPeer(), r.GetUserAgent(), r.GetCorrelationId(), r.GetRequest(), r.GetPrevHash(), r.GetHash()})
				}
			case "executions":
				_ = w.Write([]string{"execution_id", "time", "job", "created_by", "status", "targets"})
				for _, e := range x.GetExecutions() {
					_ = w.Write([]string{e.GetExecutionId(), ts(e.GetCreateTime()), e.GetJobName(), e.GetCreatedBy(), e.GetStatus(), strings.Join(e.GetTargets(), " ")})
				}
			case "overrides":
				_ = w.Write([]string{"execution_id", "time", "job", "created_by", "reason"})
				for _, o := range x.GetDangerousOverrides() {
					_ = w.Write([]string{o.GetExecutionId(), ts(o.GetCreateTime()), o.GetJobName(), o.GetCreatedBy(), o.GetReason()})
				}
			default:
				return fmt.Errorf("--table: records, executions or overrides, not %q", table)
			}
			w.Flush()
			return w.Error()
		},
	}
	export.Flags().StringVar(&fromS, "from", "", "start of the range (RFC 3339)")
	export.Flags().StringVar(&toS, "to", "", "end of the range (RFC 3339; default now)")
	export.Flags().DurationVar(&since, "since", 30*24*time.Hour, "without --from: this long before --to")
	export.Flags().StringVar(&format, "format", "json", "json or csv")
	export.Flags().StringVar(&table, "table", "records", "with csv: records, executions or overrides")
	cmd.AddCommand(verify, list, checkpoint, keygen, export)
	return cmd
}

func newEventsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "events", Short: "Read the services' domain events; log an external system's"}
	var w window
	var typ, source, subject, corr string
	list := &cobra.Command{
		Use:   "list",
		Short: "List events, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			from, to := w.bounds()
			resp, err := g.audit().ListEvents(cmd.Context(), connect.NewRequest(&opsconductorv1.ListEventsRequest{Type: typ, Source: source, Subject: subject,
				CorrelationId: corr, StartTime: from, EndTime: to, PageSize: w.limit}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			for _, e := range resp.Msg.GetEvents() {
				fmt.Fprintf(g.stdout, "%s  %-28s %-12s %s\n", e.GetTime().AsTime().Local().Format(time.DateTime), e.GetType(), e.GetSource(), e.GetSubject())
			}
			return nil
		},
	}
	w.flags(list)
	list.Flags().StringVar(&typ, "type", "", "a type (execution.completed) or a family (execution.*)")
	list.Flags().StringVar(&source, "source", "", "only from this service")
	list.Flags().StringVar(&subject, "subject", "", "only about this id")
	list.Flags().StringVar(&corr, "correlation-id", "", "only this request's")
	var payload string
	publish := &cobra.Command{
		Use:   "publish TYPE [SUBJECT]",
		Short: "Log an external system's event (TYPE external.WHAT, --payload JSON)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &opsconductorv1.PublishEventRequest{Type: args[0], CorrelationId: corr}
			if len(args) == 2 {
				req.Subject = args[1]
			}
			if payload != "" {
				if !json.Valid([]byte(payload)) {
					return fmt.Errorf("--payload is not JSON")
				}
				req.Payload = &structpb.Value{}
				if err := protojson.Unmarshal([]byte(payload), req.Payload); err != nil {
					return fmt.Errorf("--payload: %w", err)
				}
			}
			resp, err := g.audit().PublishEvent(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, resp.Msg.GetId())
			return nil
		},
	}
	publish.Flags().StringVar(&payload, "payload", "", "the event's data as JSON")
	publish.Flags().StringVar(&corr, "correlation-id", "", "ties it to a change or request")
	var group string
	dead := &cobra.Command{
		Use:   "dead-letters",
		Short: "List the events a consumer group gave up on, with the last error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.audit().ListDeadLetters(cmd.Context(), connect.NewRequest(&opsconductorv1.ListDeadLettersRequest{Group: group}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			for _, d := range resp.Msg.GetDeadLetters() {
				fmt.Fprintf(g.stdout, "%s  %s %s  after %d deliveries: %s\n", d.GetRef(), d.GetEvent().GetId(), d.GetEvent().GetType(), d.GetDeliveries(), d.GetLastError())
			}
			return nil
		},
	}
	replay := &cobra.Command{
		Use:   "replay REF",
		Short: "Deliver a dead letter to its group once more (after fixing what failed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := g.audit().ReplayDeadLetter(cmd.Context(), connect.NewRequest(&opsconductorv1.ReplayDeadLetterRequest{Group: group, Ref: args[0]})); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "replayed %s\n", args[0])
			return nil
		},
	}
	for _, c := range []*cobra.Command{dead, replay} {
		c.Flags().StringVar(&group, "group", "audit", "the consumer group: audit or notifications")
	}
	cmd.AddCommand(list, publish, dead, replay)
	return cmd
}
