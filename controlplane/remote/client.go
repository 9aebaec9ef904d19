// Package remote connects the control plane's services when they run in
// separate processes (opsconductor server --services=...): the internal
// API each service serves to the others (handlers.go), and the clients
// that implement, over that API, the same Go interfaces the services use
// of each other in one process (adapters.go).
//
// Every call to another service carries the shared service token and the
// caller's correlation id, ends after a timeout, is retried with
// exponential backoff when it is idempotent and failed on the way
// (unavailable, timed out), and goes through a circuit breaker per
// service (github.com/sony/gobreaker/v2): after repeated failures calls
// fail at once with a clear error instead of piling up behind a dead
// service, until a trial call succeeds again.
package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/correlation"
)

// Options tune the clients of one service. Zero values take defaults.
type Options struct {
	// Token is the service token the other services accept.
	Token string
	// Timeout bounds one attempt of one call (default 10s), within the
	// caller's own deadline; Slow sets longer ones by procedure (a
	// connection check waits for its hosts).
	Timeout time.Duration
	Slow    map[string]time.Duration
	// Retries is how many times an idempotent call is tried again after a
	// failure on the way (default 3), waiting Backoff, then twice as long
	// each time (default 100ms), with jitter.
	Retries int
	Backoff time.Duration
	// Failures in a row that open the breaker (default 5); it stays open
	// OpenFor (default 10s), then lets TrialCalls calls through (default
	// 1), and closes once that many have succeeded.
	Failures   uint32
	OpenFor    time.Duration
	TrialCalls uint32
	// HTTPClient carries the calls (default: one with HTTP/1.1 and h2c
	// keep-alive suited to many small calls).
	HTTPClient connect.HTTPClient
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Retries < 0 {
		o.Retries = 0
	} else if o.Retries == 0 {
		o.Retries = 3
	}
	if o.Backoff <= 0 {
		o.Backoff = 100 * time.Millisecond
	}
	if o.Failures == 0 {
		o.Failures = 5
	}
	if o.OpenFor <= 0 {
		o.OpenFor = 10 * time.Second
	}
	if o.TrialCalls == 0 {
		o.TrialCalls = 1
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}}
	}
	return o
}

// Service is another service of the control plane, at a URL.
type Service struct {
	Name    string // jobs, executions, scheduling, audit
	URL     string
	opts    Options
	breaker *gobreaker.CircuitBreaker[any]
	logger  *zap.Logger

	mu      sync.Mutex
	lastErr error // the last failure, for the breaker's error and /health
}

// NewService describes the service name at url.
func NewService(name, url string, opts Options, logger *zap.Logger) *Service {
	s := &Service{Name: name, URL: url, opts: opts.withDefaults(), logger: logger.Named("remote").With(zap.String("service", name))}
	s.breaker = gobreaker.NewCircuitBreaker[any](gobreaker.Settings{
		Name:        name,
		MaxRequests: s.opts.TrialCalls,
		Timeout:     s.opts.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= s.opts.Failures },
		// Only failures on the way count: a NotFound is an answer, and
		// so is a caller that gave up.
		IsSuccessful: func(err error) bool {
			var gone callerGone
			return errors.As(err, &gone) || !transient(err)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			s.logger.Warn("circuit breaker changed state", zap.String("from", from.String()), zap.String("to", to.String()))
			if to == gobreaker.StateClosed {
				s.mu.Lock()
				s.lastErr = nil
				s.mu.Unlock()
			}
		},
	})
	return s
}

// State is the breaker's state: closed, half-open or open.
func (s *Service) State() string { return s.breaker.State().String() }

// LastError is the last failure on the way to the service, "" when none.
func (s *Service) LastError() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr == nil {
		return ""
	}
	return s.lastErr.Error()
}

// ClientOptions are what every Connect client of the service needs.
func (s *Service) ClientOptions() []connect.ClientOption {
	return []connect.ClientOption{connect.WithInterceptors(s)}
}

// HTTPClient is the client the calls go through.
func (s *Service) HTTPClient() connect.HTTPClient { return s.opts.HTTPClient }

// transient reports whether err is a failure on the way to the service
// (worth a retry and counted by the breaker), not an answer from it.
func transient(err error) bool {
	if err == nil {
		return false
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded:
		return true
	}
	return false
}

// callerGone wraps the error of a call whose caller went away (cancelled,
// or its own deadline passed): not the service's failure.
type callerGone struct{ err error }

func (c callerGone) Error() string { return c.err.Error() }
func (c callerGone) Unwrap() error { return c.err }

var _ connect.Interceptor = (*Service)(nil)

// WrapUnary adds the token, the correlation id, the timeout, the retries
// and the breaker to a unary call.
func (s *Service) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+s.opts.Token)
		if id := correlation.ID(ctx); id != "" {
			req.Header().Set(correlation.Header, id)
		}
		attempts := 1
		if req.Spec().IdempotencyLevel != connect.IdempotencyUnknown {
			attempts += s.opts.Retries
		}
		timeout := s.opts.Timeout
		if d, ok := s.opts.Slow[req.Spec().Procedure]; ok {
			timeout = d
		}
		wait := s.opts.Backoff
		for attempt := 1; ; attempt++ {
			out, err := s.breaker.Execute(func() (any, error) {
				callCtx, cancel := context.WithTimeout(ctx, timeout)
				defer cancel()
				resp, err := next(callCtx, req)
				if err != nil && ctx.Err() != nil {
					return resp, callerGone{err}
				}
				return resp, err
			})
			if s.isOpen(err) {
				return nil, s.openError()
			}
			var gone callerGone
			if errors.As(err, &gone) {
				return nil, gone.err
			}
			if !transient(err) {
				resp, _ := out.(connect.AnyResponse)
				return resp, err
			}
			s.mu.Lock()
			s.lastErr = err
			s.mu.Unlock()
			if attempt >= attempts || ctx.Err() != nil {
				return nil, connect.NewError(connect.CodeOf(err), fmt.Errorf("the %s service (%s): %w", s.Name, s.URL, err))
			}
			jitter := time.Duration(rand.Int64N(int64(wait)/2 + 1))
			select {
			case <-ctx.Done():
				return nil, connect.NewError(connect.CodeOf(err), fmt.Errorf("the %s service (%s): %w", s.Name, s.URL, err))
			case <-time.After(wait + jitter):
			}
			wait *= 2
		}
	}
}

func (s *Service) isOpen(err error) bool {
	return errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests)
}

// openError is what a call gets while the breaker is open.
func (s *Service) openError() *connect.Error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf(
		"the %s service is unavailable: its circuit breaker is open after %d failed calls in a row (last: %s); calls are tried again every %s",
		s.Name, s.opts.Failures, s.LastError(), s.opts.OpenFor))
}

// Transport sends plain HTTP requests to the service through its breaker
// (the gateway's proxy): a request that cannot reach the service counts
// as a failure; any answer from it, errors included (an Unavailable the
// service returns because one of *its* dependencies is down is its
// answer), does not, nor does a caller that went away. While the breaker
// is open it fails at once with an error IsOpenError recognises. Requests
// are not retried: the gateway cannot know which are safe to send twice.
func (s *Service) Transport(base http.RoundTripper) http.RoundTripper {
	return breakerTransport{s: s, base: base}
}

type breakerTransport struct {
	s    *Service
	base http.RoundTripper
}

func (t breakerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	out, err := t.s.breaker.Execute(func() (any, error) {
		resp, err := t.base.RoundTrip(req)
		if err != nil && req.Context().Err() != nil {
			return nil, callerGone{err}
		}
		if err != nil {
			return nil, connect.NewError(connect.CodeUnavailable, err)
		}
		return resp, nil
	})
	if t.s.isOpen(err) {
		return nil, openError{cause: t.s.openError()}
	}
	var gone callerGone
	if errors.As(err, &gone) {
		return nil, gone.err
	}
	if err != nil {
		t.s.mu.Lock()
		t.s.lastErr = err
		t.s.mu.Unlock()
	}
	if resp, ok := out.(*http.Response); ok && resp != nil {
		return resp, nil // the service's own answer
	}
	return nil, err
}

// openError is the error of a request refused by an open breaker.
type openError struct{ cause *connect.Error }

func (e openError) Error() string { return e.cause.Message() }
func (e openError) Unwrap() error { return e.cause }

// IsOpenError reports whether err is a request refused by an open breaker.
func IsOpenError(err error) bool {
	var o openError
	return errors.As(err, &o)
}

// WrapStreamingClient passes streams through with the token (no internal
// call streams).
func (s *Service) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+s.opts.Token)
		return conn
	}
}

// WrapStreamingHandler is not used on the client side.
func (s *Service) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
