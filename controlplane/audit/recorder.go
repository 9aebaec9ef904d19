package audit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/correlation"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// Recorder is the interceptor that writes the audit log: one record per
// call to an RPC whose access option says it mutates (unless its audit
// mode is events-only) and one per refused call, with who called, the
// outcome and a summary of the request in which secret values appear
// only as keyed hashes (HMAC-SHA256).
//
// It fails closed: before a mutating call runs, the audit store must
// answer, or the call is refused (unavailable) without running; and a
// call whose record then cannot be written fails, saying that it was
// carried out but could not be audited.
//
// It sits outside the authorization interceptor (so it sees refusals)
// and learns the caller from auth's caller note.
type Recorder struct {
	log    CallLog
	key    []byte
	logger *zap.Logger
}

// NewRecorder builds the recorder; key keys the hashes of secret values.
func NewRecorder(log CallLog, key []byte, logger *zap.Logger) *Recorder {
	return &Recorder{log: log, key: key, logger: logger.Named("audit")}
}

var _ connect.Interceptor = (*Recorder)(nil)

// accessOf is the RPC's access option (nil when it has none: the
// authorization interceptor refuses those).
func accessOf(spec connect.Spec) *opsconductorv1.Access {
	md, _ := spec.Schema.(protoreflect.MethodDescriptor)
	acc, _ := auth.AccessOf(md)
	return acc
}

// recorded says whether a call is written to the log, given its error.
func recorded(acc *opsconductorv1.Access, err error) bool {
	if refused(err) {
		return true
	}
	return acc != nil && acc.GetMutates() && acc.GetAudit() != opsconductorv1.AuditMode_AUDIT_MODE_EVENTS_ONLY
}

func refused(err error) bool {
	if err == nil {
		return false
	}
	cerr, _ := apperr.ToConnect(err)
	return cerr.Code() == connect.CodeUnauthenticated || cerr.Code() == connect.CodePermissionDenied
}

// gate refuses a mutating call while the audit store does not answer.
func (r *Recorder) gate(ctx context.Context, acc *opsconductorv1.Access) error {
	if !recorded(acc, nil) {
		return nil
	}
	if err := r.log.Ping(ctx); err != nil {
		r.logger.Error("audit log unavailable: refusing a call that changes state", zap.Error(err))
		return connect.NewError(connect.CodeUnavailable, errors.New("the audit log cannot be written, so calls that change state are refused; try again later"))
	}
	return nil
}

// write appends the record of a call; a failure fails the call.
func (r *Recorder) write(ctx context.Context, spec connect.Spec, header interface{ Get(string) string }, peer string, msg any, note *auth.CallerNote, callErr error) error {
	acc := accessOf(spec)
	if !recorded(acc, callErr) {
		return callErr
	}
	rec := Record{Action: spec.Procedure, Outcome: "ok", Peer: peer, UserAgent: header.Get("User-Agent"), CorrelationID: correlation.ID(ctx)}
	if p, ok := note.Caller(); ok {
		rec.Actor, rec.Roles = p.Name, strings.Join(p.Roles, ",")
		rec.ActorKind = "user"
		if p.Method == "api_token" {
			rec.ActorKind = "token"
		}
	} else if acc != nil && acc.GetCaller() == opsconductorv1.Caller_CALLER_AGENT {
		rec.ActorKind = "agent"
	} else if acc != nil && acc.GetCaller() == opsconductorv1.Caller_CALLER_SERVICE {
		rec.ActorKind = "service"
	} else {
		rec.ActorKind = "anonymous"
	}
	if m, ok := msg.(proto.Message); ok {
		rec.Request, rec.Resource = r.summary(m)
		// An agent's id in the request is only its claim: it names the
		// actor when the gateway accepted the call, not when it refused it.
		if rec.ActorKind == "agent" && rec.Actor == "" && callErr == nil {
			rec.Actor = stringField(m, "agent_id")
		}
	}
	if callErr != nil {
		cerr, _ := apperr.ToConnect(callErr)
		rec.Outcome, rec.Reason = cerr.Code().String(), cerr.Message()
	}
	// Written even if the caller went away: the change may have happened.
	if _, err := r.log.Append(context.WithoutCancel(ctx), rec); err != nil {
		r.logger.Error("audit record not written", zap.String("procedure", spec.Procedure), zap.String("outcome", rec.Outcome), zap.Error(err))
		if callErr != nil {
			return callErr
		}
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("the call was carried out, but its audit record could not be written (see the server log, correlation id %s)", rec.CorrelationID))
	}
	return callErr
}

// WrapUnary records unary calls.
func (r *Recorder) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if err := r.gate(ctx, accessOf(req.Spec())); err != nil {
			return nil, err
		}
		ctx, note := auth.WithCallerNote(ctx)
		resp, err := next(ctx, req)
		if err = r.write(ctx, req.Spec(), req.Header(), req.Peer().Addr, req.Any(), note, err); err != nil {
			return nil, err
		}
		return resp, nil
	}
}

// WrapStreamingClient passes client streams through.
func (r *Recorder) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler records streaming calls (none of ours mutate; a
// refused one is recorded) without their messages.
func (r *Recorder) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := r.gate(ctx, accessOf(conn.Spec())); err != nil {
			return err
		}
		ctx, note := auth.WithCallerNote(ctx)
		err := next(ctx, conn)
		return r.write(ctx, conn.Spec(), conn.RequestHeader(), conn.Peer().Addr, nil, note, err)
	}
}

// summaryLimit bounds a request summary (a job's YAML can be long).
const summaryLimit = 4096

// secretNames are fields whose values are secret wherever they appear;
// every value of a parameters map is treated as secret too (whether a
// parameter is secret is the job's to say, not the request's).
var secretNames = map[string]bool{"value": true, "secret": true, "password": true, "private_key": true, "passphrase": true,
	"token": true, "join_token": true, "key": true, "credential_keys": true}

// summary is the request as JSON with secret values replaced by keyed
// hashes, cut to summaryLimit, and the resource it names.
func (r *Recorder) summary(m proto.Message) (string, string) {
	c := proto.Clone(m)
	r.redact(c.ProtoReflect())
	body, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(c)
	if err != nil {
		return "", ""
	}
	s := string(body)
	if len(s) > summaryLimit {
		// Cut on a character boundary: Postgres refuses invalid UTF-8.
		s = strings.ToValidUTF8(s[:summaryLimit], "") + "…"
	}
	return s, resourceOf(m, true)
}

// resourceOf is the id or name a request is about: a top-level field, or
// one of the message it carries (CreateJob's job.name).
func resourceOf(m proto.Message, nested bool) string {
	for _, f := range []string{"id", "job_id", "execution_id", "schedule_id", "agent_id", "name"} {
		if v := stringField(m, f); v != "" {
			return v
		}
	}
	if !nested {
		return ""
	}
	fields := m.ProtoReflect().Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() && m.ProtoReflect().Has(fd) {
			if v := resourceOf(m.ProtoReflect().Get(fd).Message().Interface(), false); v != "" {
				return v
			}
		}
	}
	return ""
}

// keyed is what a secret value becomes: an HMAC an auditor holding the
// key can match against a known value, and nobody else can reverse.
func (r *Recorder) keyed(v string) string {
	mac := hmac.New(sha256.New, r.key)
	mac.Write([]byte(v))
	return "hmac-sha256:" + hex.EncodeToString(mac.Sum(nil))
}

func (r *Recorder) redact(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(fd.Name())
		switch {
		case fd.IsMap():
			secretValues := name == "parameters" || secretNames[name]
			mp := m.Mutable(fd).Map()
			mp.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				switch {
				case fd.MapValue().Kind() == protoreflect.MessageKind:
					r.redact(mv.Message())
				case secretValues && fd.MapValue().Kind() == protoreflect.StringKind:
					mp.Set(k, protoreflect.ValueOfString(r.keyed(mv.String())))
				}
				return true
			})
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				r.redact(l.Get(i).Message())
			}
		case fd.Kind() == protoreflect.MessageKind:
			r.redact(m.Mutable(fd).Message())
		case fd.Kind() == protoreflect.StringKind && !fd.IsList() && secretNames[name] && v.String() != "":
			m.Set(fd, protoreflect.ValueOfString(r.keyed(v.String())))
		case fd.Kind() == protoreflect.BytesKind && secretNames[name]:
			m.Set(fd, protoreflect.ValueOfBytes([]byte(r.keyed(string(v.Bytes())))))
		}
		return true
	})
}

// stringField is a top-level string field of m by name ("" if none).
func stringField(m proto.Message, name string) string {
	fd := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.IsList() {
		return ""
	}
	return m.ProtoReflect().Get(fd).String()
}
