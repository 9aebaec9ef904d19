// Package apperr holds the domain errors services return and the one table
// that maps them to Connect codes (and so to HTTP status codes through the
// REST transcoder). Anything not in the table is Internal, with a generic
// message; the real error is logged once where it is handled.
package apperr

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Kind classifies a domain error.
type Kind int

const (
	KindInvalid            Kind = iota + 1 // bad input: InvalidArgument, 400
	KindNotFound                           // NotFound, 404
	KindAlreadyExists                      // AlreadyExists, 409
	KindStale                              // stale version: Aborted, 409
	KindFailedPrecondition                 // not allowed now: FailedPrecondition, 400
	KindUnauthenticated                    // Unauthenticated, 401
	KindPermissionDenied                   // PermissionDenied, 403
	KindResourceExhausted                  // rate limited: ResourceExhausted, 429
)

var codes = map[Kind]connect.Code{
	KindInvalid:            connect.CodeInvalidArgument,
	KindNotFound:           connect.CodeNotFound,
	KindAlreadyExists:      connect.CodeAlreadyExists,
	KindStale:              connect.CodeAborted,
	KindFailedPrecondition: connect.CodeFailedPrecondition,
	KindUnauthenticated:    connect.CodeUnauthenticated,
	KindPermissionDenied:   connect.CodePermissionDenied,
	KindResourceExhausted:  connect.CodeResourceExhausted,
}

// Error is a domain error with a kind and a message fit for the caller.
type Error struct {
	Kind       Kind
	Message    string
	Violations []Violation
	// RetryAfter, when set, is sent as a Retry-After header (seconds).
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Message }

// Violation names one bad field by its path, e.g. "job.actions[1].command".
type Violation struct {
	Field       string
	Description string
}

func newf(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Message: fmt.Sprintf(format, args...)}
}

func NotFound(format string, args ...any) error      { return newf(KindNotFound, format, args...) }
func AlreadyExists(format string, args ...any) error { return newf(KindAlreadyExists, format, args...) }
func Stale(format string, args ...any) error         { return newf(KindStale, format, args...) }
func FailedPrecondition(format string, args ...any) error {
	return newf(KindFailedPrecondition, format, args...)
}
func Unauthenticated(format string, args ...any) error {
	return newf(KindUnauthenticated, format, args...)
}
func PermissionDenied(format string, args ...any) error {
	return newf(KindPermissionDenied, format, args...)
}

// RateLimited says the caller must wait retryAfter before calling again.
func RateLimited(retryAfter time.Duration, format string, args ...any) error {
	e := newf(KindResourceExhausted, format, args...)
	e.RetryAfter = retryAfter
	return e
}

// Invalid is a bad-input error listing every bad field. Its message names
// them all, so callers that only read the message still learn each one.
func Invalid(what string, violations []Violation) error {
	sorted := append([]Violation(nil), violations...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Field < sorted[j].Field })
	parts := make([]string, len(sorted))
	for i, v := range sorted {
		parts[i] = v.Field + ": " + v.Description
	}
	return &Error{Kind: KindInvalid, Message: "invalid " + what + ": " + strings.Join(parts, "; "), Violations: sorted}
}

// InvalidField is Invalid for a single field.
func InvalidField(field, format string, args ...any) error {
	return Invalid("request", []Violation{{Field: field, Description: fmt.Sprintf(format, args...)}})
}

// ToConnect converts err to a *connect.Error. known is false when err is
// not a domain error; the result is then a generic Internal error and the
// caller should log err.
func ToConnect(err error) (cerr *connect.Error, known bool) {
	if errors.As(err, &cerr) {
		return cerr, true
	}
	var e *Error
	if errors.As(err, &e) {
		cerr = connect.NewError(codes[e.Kind], errors.New(e.Message))
		if e.RetryAfter > 0 {
			cerr.Meta().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
		}
		if len(e.Violations) > 0 {
			br := &errdetails.BadRequest{}
			for _, v := range e.Violations {
				br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Description})
			}
			if d, derr := connect.NewErrorDetail(br); derr == nil {
				cerr.AddDetail(d)
			}
		}
		return cerr, true
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, errors.New("not found")), true
	case errors.Is(err, store.ErrConflict):
		return connect.NewError(connect.CodeAlreadyExists, errors.New("already exists")), true
	}
	return connect.NewError(connect.CodeInternal, errors.New("internal error; see the server log for this request's correlation id")), false
}
