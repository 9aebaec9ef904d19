package audit

import (
	"strings"
	"testing"
	"unicode/utf8"

	"go.uber.org/zap"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// TestSummaryCutsOnACharacter: a long request in non-ASCII text is cut to
// the limit on a character boundary (Postgres refuses invalid UTF-8),
// and secret fields are keyed hashes.
func TestSummaryCutsOnACharacter(t *testing.T) {
	r := NewRecorder(nil, []byte("key"), zap.NewNop())
	for pad := range 4 {
		m := &opsconductorv1.CreateCredentialRequest{Credential: &opsconductorv1.Credential{Name: "db", Description: strings.Repeat("x", pad) + strings.Repeat("é—", 2000)},
			Value: "hunter2"}
		s, resource := r.summary(m)
		if !utf8.ValidString(s) || len(s) > summaryLimit+len("…") || resource != "db" {
			t.Fatalf("pad %d: %d bytes, valid %v, resource %q", pad, len(s), utf8.ValidString(s), resource)
		}
		if strings.Contains(s, "hunter2") {
			t.Fatalf("the secret value in clear: %.200s", s)
		}
	}
	s, _ := r.summary(&opsconductorv1.CreateCredentialRequest{Credential: &opsconductorv1.Credential{Name: "db"}, Value: "hunter2"})
	if strings.Contains(s, "hunter2") || !strings.Contains(s, r.keyed("hunter2")) {
		t.Fatalf("the secret value is not a keyed hash: %s", s)
	}
}
