// Package correlation carries the correlation id of a request: taken from
// the caller's X-Request-ID header or made up, returned to the caller,
// logged with every line about the request, stored with an execution and
// handed to the agent with each of its tasks.
package correlation

import (
	"context"
	"net/http"
	"regexp"

	"github.com/google/uuid"
)

// Header is the HTTP header the id travels in.
const Header = "X-Request-ID"

type ctxKey struct{}

var valid = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// WithID returns ctx carrying id.
func WithID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// ID returns the correlation id in ctx, or "".
func ID(ctx context.Context) string {
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}

// Middleware takes the caller's X-Request-ID (when it is a sane token) or
// makes one up, puts it in the request context and echoes it in the response.
func Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(Header)
		if !valid.MatchString(id) {
			id = uuid.NewString()
		}
		w.Header().Set(Header, id)
		next.ServeHTTP(w, r.WithContext(WithID(r.Context(), id)))
	})
}
