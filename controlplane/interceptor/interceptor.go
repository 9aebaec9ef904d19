// Package interceptor holds the Connect interceptors every control-plane
// handler runs behind: error translation (domain errors to Connect codes,
// unknown errors to a generic Internal that is logged once with the
// correlation id), call logging and RPC metrics.
package interceptor

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/correlation"
)

// Metrics are the RPC metrics the interceptor records.
type Metrics struct {
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers the RPC metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsconductor_rpc_calls_total", Help: "RPCs handled, by procedure and result code.",
		}, []string{"procedure", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "opsconductor_rpc_duration_seconds", Help: "RPC handling time, by procedure (long-polls included).",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30, 60},
		}, []string{"procedure"}),
	}
	reg.MustRegister(m.calls, m.duration)
	return m
}

// quiet procedures are logged at debug level: they run constantly.
var quiet = map[string]bool{
	"/opsconductor.agent.v1.AgentService/Poll":         true,
	"/opsconductor.agent.v1.AgentService/ExtendLease":  true,
	"/opsconductor.agent.v1.AgentService/ReportOutput": true,
}

// Handler is the server-side interceptor: it translates errors, logs each
// call and records metrics.
type Handler struct {
	logger  *zap.Logger
	metrics *Metrics
}

var _ connect.Interceptor = (*Handler)(nil)

// New builds the interceptor. metrics may be nil.
func New(logger *zap.Logger, metrics *Metrics) *Handler {
	return &Handler{logger: logger.Named("rpc"), metrics: metrics}
}

func (h *Handler) finish(ctx context.Context, procedure string, start time.Time, err error) error {
	code := "ok"
	if err != nil {
		cerr, known := apperr.ToConnect(err)
		switch {
		case errors.Is(err, context.Canceled) && ctx.Err() != nil:
			cerr = connect.NewError(connect.CodeCanceled, errors.New("request cancelled"))
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
			cerr = connect.NewError(connect.CodeDeadlineExceeded, errors.New("request deadline exceeded"))
		case !known:
			h.logger.Error("request failed", zap.String("procedure", procedure),
				zap.String("correlation_id", correlation.ID(ctx)), zap.Error(err))
		}
		err = cerr
		code = cerr.Code().String()
	}
	elapsed := time.Since(start)
	if h.metrics != nil {
		h.metrics.calls.WithLabelValues(procedure, code).Inc()
		h.metrics.duration.WithLabelValues(procedure).Observe(elapsed.Seconds())
	}
	level := zap.InfoLevel
	if quiet[procedure] {
		level = zap.DebugLevel
	}
	if ce := h.logger.Check(level, "rpc"); ce != nil {
		ce.Write(zap.String("procedure", procedure), zap.String("code", code), zap.Duration("duration", elapsed),
			zap.String("correlation_id", correlation.ID(ctx)))
	}
	return err
}

func (h *Handler) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		resp, err := next(ctx, req)
		return resp, h.finish(ctx, req.Spec().Procedure, start, err)
	}
}

func (h *Handler) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (h *Handler) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		return h.finish(ctx, conn.Spec().Procedure, start, next(ctx, conn))
	}
}
