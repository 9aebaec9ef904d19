package audit

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/correlation"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// Service serves AuditService: the events and the audit log, read; and
// external systems' events, written.
type Service struct {
	events   *Store
	log      *Log
	bus      bus.Bus
	sources  MetricSources
	notifier *Notifier
	logger   *zap.Logger
}

var _ opsconductorv1connect.AuditServiceHandler = (*Service)(nil)

// NewService builds the service; sources feed GET /api/v1/metrics,
// notifier keeps the webhooks.
func NewService(events *Store, log *Log, b bus.Bus, sources MetricSources, notifier *Notifier, logger *zap.Logger) *Service {
	return &Service{events: events, log: log, bus: b, sources: sources, notifier: notifier, logger: logger.Named("audit")}
}

func toEvent(e bus.Event) *opsconductorv1.Event {
	out := &opsconductorv1.Event{Id: e.ID, Type: e.Type, Source: e.Source, Subject: e.Subject, Time: timestamppb.New(e.Time),
		CorrelationId: e.CorrelationID, Version: int32(e.Version)}
	if len(e.Payload) > 0 {
		v := &structpb.Value{}
		if err := protojson.Unmarshal(e.Payload, v); err == nil {
			out.Payload = v
		}
	}
	return out
}

func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

// ListEvents lists events newest first.
func (s *Service) ListEvents(ctx context.Context, req *connect.Request[opsconductorv1.ListEventsRequest]) (*connect.Response[opsconductorv1.ListEventsResponse], error) {
	m := req.Msg
	if m.GetPageSize() < 0 || m.GetPageSize() > 1000 {
		return nil, apperr.InvalidField("page_size", "must be between 0 and 1000, not %d", m.GetPageSize())
	}
	f := Filter{Type: m.GetType(), Source: m.GetSource(), Subject: m.GetSubject(), CorrelationID: m.GetCorrelationId(),
		From: timeOf(m.GetStartTime()), To: timeOf(m.GetEndTime()), Limit: int(m.GetPageSize())}
	if tok := m.GetPageToken(); tok != "" {
		c, err := decodeEventCursor(tok)
		if err != nil {
			return nil, apperr.InvalidField("page_token", "is not one this server gave out")
		}
		f.Before = &c
	}
	events, next, err := s.events.List(ctx, f)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListEventsResponse{}
	for _, e := range events {
		resp.Events = append(resp.Events, toEvent(e))
	}
	if next != nil {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(next.Time.Format(time.RFC3339Nano) + "|" + next.ID))
	}
	return connect.NewResponse(resp), nil
}

func decodeEventCursor(tok string) (Cursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return Cursor{}, err
	}
	at, id, ok := strings.Cut(string(raw), "|")
	if !ok {
		return Cursor{}, fmt.Errorf("no separator")
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	return Cursor{Time: t, ID: id}, err
}

var externalType = regexp.MustCompile(`^external\.[a-z0-9_]+(\.[a-z0-9_]+)*$`)

// maxExternalPayload bounds an external event's payload (as JSON).
const maxExternalPayload = 64 << 10

// PublishEvent stores an external system's event and puts it on the bus.
func (s *Service) PublishEvent(ctx context.Context, req *connect.Request[opsconductorv1.PublishEventRequest]) (*connect.Response[opsconductorv1.PublishEventResponse], error) {
	m := req.Msg
	var vs []apperr.Violation
	if !externalType.MatchString(m.GetType()) || len(m.GetType()) > 128 {
		vs = append(vs, apperr.Violation{Field: "type", Description: fmt.Sprintf("%q must be external.WHAT (lower case, digits, underscores; at most 128 characters), e.g. external.deploy_finished: the other families are the services' own", m.GetType())})
	}
	if len(m.GetSubject()) > 256 {
		vs = append(vs, apperr.Violation{Field: "subject", Description: "is longer than 256 characters"})
	}
	if len(m.GetCorrelationId()) > 128 {
		vs = append(vs, apperr.Violation{Field: "correlation_id", Description: "is longer than 128 characters"})
	}
	payload := []byte("null")
	if m.GetPayload() != nil {
		var err error
		if payload, err = protojson.Marshal(m.GetPayload()); err != nil {
			vs = append(vs, apperr.Violation{Field: "payload", Description: "is not JSON: " + err.Error()})
		}
	}
	if len(payload) > maxExternalPayload {
		vs = append(vs, apperr.Violation{Field: "payload", Description: fmt.Sprintf("is %d bytes as JSON; at most %d", len(payload), maxExternalPayload)})
	}
	if m.GetVersion() < 0 {
		vs = append(vs, apperr.Violation{Field: "version", Description: "must not be negative"})
	}
	if len(vs) > 0 {
		return nil, apperr.Invalid("event", vs)
	}
	caller := "anonymous"
	if p, ok := auth.PrincipalFrom(ctx); ok {
		caller = p.Name
	}
	corr := m.GetCorrelationId()
	if corr == "" {
		corr = correlation.ID(ctx)
	}
	e := bus.Event{ID: "external-" + uuid.NewString(), Type: m.GetType(), Source: "external:" + caller, Subject: m.GetSubject(),
		Time: time.Now().UTC(), CorrelationID: corr, Version: max(int(m.GetVersion()), 1), Payload: json.RawMessage(payload)}
	// Stored now (listable at once) and, in the same transaction, in the
	// audit schema's outbox: its publisher puts it on the bus for the other
	// consumers (webhooks), whenever the bus is there.
	if err := s.events.RecordExternal(ctx, e); err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.PublishEventResponse{Id: e.ID}), nil
}

func toAuditRecord(r Record) *opsconductorv1.AuditRecord {
	var roles []string
	if r.Roles != "" {
		roles = strings.Split(r.Roles, ",")
	}
	out := &opsconductorv1.AuditRecord{Seq: r.Seq, Time: timestamppb.New(r.Time), Actor: r.Actor, ActorKind: r.ActorKind,
		Roles: roles, Action: r.Action, Resource: r.Resource, Outcome: r.Outcome, Reason: r.Reason, Peer: r.Peer, UserAgent: r.UserAgent,
		CorrelationId: r.CorrelationID, Request: r.Request, PrevHash: r.PrevHash, Hash: r.Hash}
	if r.CalledAt != nil {
		out.CalledAt = timestamppb.New(*r.CalledAt)
	}
	return out
}

// ExportAudit is the compliance report of a time range.
func (s *Service) ExportAudit(ctx context.Context, req *connect.Request[opsconductorv1.ExportAuditRequest]) (*connect.Response[opsconductorv1.ExportAuditResponse], error) {
	m := req.Msg
	if m.GetStartTime() == nil || m.GetEndTime() == nil {
		return nil, apperr.InvalidField("start_time", "start_time and end_time are both required")
	}
	from, to := m.GetStartTime().AsTime(), m.GetEndTime().AsTime()
	if !from.Before(to) {
		return nil, apperr.InvalidField("start_time", "must be before end_time")
	}
	if s.sources.Runs == nil {
		return nil, apperr.FailedPrecondition("the executions are not wired on this server")
	}
	recs, prev, err := s.log.Range(ctx, from, to)
	if err != nil {
		return nil, apperr.FailedPrecondition("%v", err)
	}
	v, err := s.log.Verify(ctx)
	if err != nil {
		return nil, err
	}
	cp, err := s.log.LatestCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	runs, err := s.sources.Runs(ctx, from, to)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ExportAuditResponse{StartTime: timestamppb.New(from), EndTime: timestamppb.New(to), PrevHash: prev, HashMethod: HashMethod,
		ChainVerified: v.OK, ChainProblem: v.Problem, ChainRecords: v.Records, HeadHash: v.Head, Checkpoint: cp.Note}
	for _, r := range recs {
		resp.Records = append(resp.Records, toAuditRecord(r))
	}
	for _, r := range runs {
		resp.Executions = append(resp.Executions, &opsconductorv1.ExecutionRun{ExecutionId: r.ID, JobName: r.JobName, CreatedBy: r.CreatedBy, Status: r.Status,
			CreateTime: timestamppb.New(r.CreatedAt), Targets: r.Targets})
		if r.DangerousReason != "" {
			resp.DangerousOverrides = append(resp.DangerousOverrides, &opsconductorv1.OverrideRecord{ExecutionId: r.ID, JobName: r.JobName,
				CreatedBy: r.CreatedBy, Reason: r.DangerousReason, CreateTime: timestamppb.New(r.CreatedAt)})
		}
	}
	return connect.NewResponse(resp), nil
}

// ListAuditRecords lists the audit log newest first.
func (s *Service) ListAuditRecords(ctx context.Context, req *connect.Request[opsconductorv1.ListAuditRecordsRequest]) (*connect.Response[opsconductorv1.ListAuditRecordsResponse], error) {
	m := req.Msg
	if m.GetPageSize() < 0 || m.GetPageSize() > 1000 {
		return nil, apperr.InvalidField("page_size", "must be between 0 and 1000, not %d", m.GetPageSize())
	}
	f := LogFilter{Actor: m.GetActor(), Action: m.GetAction(), Resource: m.GetResource(), Outcome: m.GetOutcome(), CorrelationID: m.GetCorrelationId(),
		From: timeOf(m.GetStartTime()), To: timeOf(m.GetEndTime()), Limit: int(m.GetPageSize())}
	if tok := m.GetPageToken(); tok != "" {
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		seq, perr := strconv.ParseInt(string(raw), 10, 64)
		if err != nil || perr != nil || seq <= 0 {
			return nil, apperr.InvalidField("page_token", "is not one this server gave out")
		}
		f.Before = seq
	}
	recs, next, err := s.log.List(ctx, f)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListAuditRecordsResponse{}
	for _, r := range recs {
		resp.Records = append(resp.Records, toAuditRecord(r))
	}
	if next > 0 {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(next, 10)))
	}
	return connect.NewResponse(resp), nil
}

// VerifyAuditLog checks the whole chain and, given a checkpoint, that the
// log still extends it.
func (s *Service) VerifyAuditLog(ctx context.Context, req *connect.Request[opsconductorv1.VerifyAuditLogRequest]) (*connect.Response[opsconductorv1.VerifyAuditLogResponse], error) {
	if req.Msg.GetCheckpoint() != "" && req.Msg.GetVerifierKey() == "" {
		return nil, apperr.InvalidField("verifier_key", "is required with a checkpoint: the key its signature must verify with")
	}
	v, err := s.log.Verify(ctx)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.VerifyAuditLogResponse{Ok: v.OK, Records: v.Records, HeadHash: v.Head, BadSeq: v.BadSeq, Problem: v.Problem}
	if req.Msg.GetCheckpoint() != "" {
		problem, err := s.log.VerifyAgainst(ctx, req.Msg.GetCheckpoint(), req.Msg.GetVerifierKey())
		if err != nil {
			return nil, apperr.InvalidField("verifier_key", "%v", err)
		}
		if resp.CheckpointProblem = problem; problem != "" {
			resp.Ok = false
		}
	}
	if !resp.Ok {
		s.logger.Error("audit log verification failed", zap.Int64("record", v.BadSeq), zap.String("problem", v.Problem),
			zap.String("checkpoint_problem", resp.CheckpointProblem))
	}
	return connect.NewResponse(resp), nil
}

// GetAuditCheckpoint returns the newest signed checkpoint.
func (s *Service) GetAuditCheckpoint(ctx context.Context, _ *connect.Request[opsconductorv1.GetAuditCheckpointRequest]) (*connect.Response[opsconductorv1.GetAuditCheckpointResponse], error) {
	cp, err := s.log.LatestCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.GetAuditCheckpointResponse{Size: cp.Size, TreeHash: cp.TreeHash, Note: cp.Note}
	if cp.Size > 0 {
		resp.Time = timestamppb.New(cp.At)
	}
	return connect.NewResponse(resp), nil
}

// groups are the consumer groups whose dead letters the API shows.
var groups = map[string]bool{Group: true, NotifyGroup: true}

func groupOf(g string) (string, error) {
	if g == "" {
		return Group, nil
	}
	if !groups[g] {
		return "", apperr.InvalidField("group", "%q is not a consumer group: audit or notifications", g)
	}
	return g, nil
}

// ListDeadLetters lists a group's dead letters.
func (s *Service) ListDeadLetters(ctx context.Context, req *connect.Request[opsconductorv1.ListDeadLettersRequest]) (*connect.Response[opsconductorv1.ListDeadLettersResponse], error) {
	g, err := groupOf(req.Msg.GetGroup())
	if err != nil {
		return nil, err
	}
	dead, err := s.bus.DeadLetters(ctx, g)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListDeadLettersResponse{}
	for _, d := range dead {
		resp.DeadLetters = append(resp.DeadLetters, &opsconductorv1.DeadLetter{Ref: d.Ref, Event: toEvent(d.Event), Deliveries: int32(d.Deliveries),
			LastError: d.LastError, DeadTime: timestamppb.New(d.DeadAt)})
	}
	return connect.NewResponse(resp), nil
}

// ReplayDeadLetter sends a dead letter to its group again.
func (s *Service) ReplayDeadLetter(ctx context.Context, req *connect.Request[opsconductorv1.ReplayDeadLetterRequest]) (*connect.Response[opsconductorv1.ReplayDeadLetterResponse], error) {
	g, err := groupOf(req.Msg.GetGroup())
	if err != nil {
		return nil, err
	}
	if err := s.bus.Replay(ctx, g, req.Msg.GetRef()); err != nil {
		if errors.Is(err, bus.ErrNoDeadLetter) {
			return nil, apperr.NotFound("group %s has no dead letter %q", g, req.Msg.GetRef())
		}
		return nil, err
	}
	s.logger.Info("dead letter replayed", zap.String("group", g), zap.String("ref", req.Msg.GetRef()))
	return connect.NewResponse(&opsconductorv1.ReplayDeadLetterResponse{}), nil
}
