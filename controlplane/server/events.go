package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/correlation"
	"github.com/opsconductor/opsconductor/controlplane/execution"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// eventStream serves GET /api/v1/executions/{id}/events: the execution's
// events as Server-Sent Events, each flushed as it happens (the REST
// transcoder would buffer a stream until it ends). A client resumes with
// the Last-Event-ID header (browsers send it when reconnecting) or
// ?after=SEQUENCE; the stream ends after the final status.
func eventStream(authz *auth.Interceptor, execs *execution.Service, logger *zap.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, err := authz.Check(r.Context(), "GET /api/v1/executions/{id}/events", auth.PermExecutionsRead, r.Header, r.RemoteAddr)
		if err != nil {
			writeError(w, err, logger, r)
			return
		}
		after := int64(0)
		for _, v := range []string{r.Header.Get("Last-Event-ID"), r.URL.Query().Get("after")} {
			if v == "" {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				writeError(w, apperr.InvalidField("after", "must be a sequence number, not %q", v), logger, r)
				return
			}
			after = n
		}
		flusher, ok := w.(http.Flusher)
		if !ok {
			writeError(w, errors.New("response writer cannot flush"), logger, r)
			return
		}
		started := false
		err = execs.Watch(ctx, r.PathValue("id"), after, func(ev *opsconductorv1.ExecutionEvent) error {
			if !started {
				h := w.Header()
				h.Set("Content-Type", "text/event-stream")
				h.Set("Cache-Control", "no-store")
				h.Set("X-Accel-Buffering", "no") // tell proxies not to buffer either
				w.WriteHeader(http.StatusOK)
				started = true
			}
			data, err := protojson.Marshal(ev)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.GetSequence(), ev.GetType(), data); err != nil {
				return err
			}
			flusher.Flush()
			return nil
		})
		if err != nil && !started {
			writeError(w, err, logger, r)
		}
	}
}

// writeError answers a plain HTTP handler's failure in the same JSON shape
// and status as the RPCs.
func writeError(w http.ResponseWriter, err error, logger *zap.Logger, r *http.Request) {
	cerr, known := apperr.ToConnect(err)
	if !known {
		logger.Error("request failed", zap.String("path", r.URL.Path), zap.String("correlation_id", correlation.ID(r.Context())), zap.Error(err))
	}
	for k, vs := range cerr.Meta() {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus(cerr.Code()))
	_ = json.NewEncoder(w).Encode(map[string]any{"code": int(cerr.Code()), "message": cerr.Message()})
}

func httpStatus(c connect.Code) int {
	switch c {
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeOutOfRange:
		return http.StatusBadRequest
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeNotFound:
		return http.StatusNotFound
	case connect.CodeAlreadyExists, connect.CodeAborted:
		return http.StatusConflict
	case connect.CodeResourceExhausted:
		return http.StatusTooManyRequests
	case connect.CodeUnavailable:
		return http.StatusServiceUnavailable
	case connect.CodeDeadlineExceeded:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}
