package server

import (
	"context"
	"crypto/subtle"
	"net/http"
	"net/url"
	"slices"
	"strings"

	connectcors "connectrpc.com/cors"
	"github.com/rs/cors"
)

// securityHeaders sets the headers every API answer carries: no sniffing,
// no framing, no referrer, nothing cached, and HSTS over TLS.
func securityHeaders(tls bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
		h.Set("Cache-Control", "no-store")
		if tls {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}

// requireToken guards h with a static bearer token; an empty token leaves
// it open.
func requireToken(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "metrics need the metrics token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// limitBody caps request bodies; a larger one fails to read, which the
// handlers report as a bad request.
func limitBody(max int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > max {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, max)
		next.ServeHTTP(w, r)
	})
}

// withCORS lets browsers on the allowed origins (the dashboard's) call the
// API with Connect, gRPC-Web or REST, and refuses cross-origin requests
// from anywhere else with 403. Requests without an Origin header (CLI,
// agents, scripts) and same-origin ones pass untouched.
func withCORS(allowed []string, next http.Handler) http.Handler {
	c := cors.New(cors.Options{
		AllowedOrigins: allowed,
		AllowedMethods: connectcors.AllowedMethods(),
		AllowedHeaders: append(connectcors.AllowedHeaders(), "Authorization", "X-Request-ID"),
		ExposedHeaders: append(connectcors.ExposedHeaders(), "X-Request-ID", "Retry-After"),
		MaxAge:         7200,
	})
	withHeaders := c.Handler(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" || sameOrigin(origin, r) || slices.Contains(allowed, "*") || slices.Contains(allowed, origin) {
			withHeaders.ServeHTTP(w, r)
			return
		}
		http.Error(w, "origin "+origin+" is not allowed (see --cors-origins)", http.StatusForbidden)
	})
}

func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

type clientCertKey struct{}

// withClientCert notes in the request context whether the caller presented
// a client certificate that verified against the client CA.
func withClientCert(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		verified := r.TLS != nil && len(r.TLS.VerifiedChains) > 0
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), clientCertKey{}, verified)))
	})
}

// hasClientCert reports what withClientCert noted.
func hasClientCert(ctx context.Context) bool {
	v, _ := ctx.Value(clientCertKey{}).(bool)
	return v
}
