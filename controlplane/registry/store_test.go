package registry

import (
	"context"
	"crypto/ed25519"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/agent/identity"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func TestStoreContract(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			st := NewStore(storetest.Open(t, d, Schema, Migrations()))
			ctx := context.Background()
			now := time.Now().UTC().Truncate(time.Microsecond)
			agent := func(id, name string, labels map[string]string) AgentRecord {
				return AgentRecord{ID: id, Name: name, Labels: labels, Hostname: "h-" + name, OS: "linux", Arch: "amd64",
					AgentVersion: "v1", PublicKey: []byte("key-" + id), EnrolledAt: now, LastSeenAt: now}
			}

			if err := st.TokenCreate(ctx, TokenRecord{ID: "t1", TokenHash: "th1", MaxUses: 2, CreatedAt: now, ExpiresAt: now.Add(time.Hour), Labels: map[string]string{"zone": "a"}}); err != nil {
				t.Fatal(err)
			}
			if err := st.TokenCreate(ctx, TokenRecord{ID: "t2", TokenHash: "th1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); !errors.Is(err, store.ErrConflict) {
				t.Fatalf("duplicate token hash: %v", err)
			}
			if err := st.TokenCreate(ctx, TokenRecord{ID: "t3", TokenHash: "expired", CreatedAt: now, ExpiresAt: now.Add(-time.Second)}); err != nil {
				t.Fatal(err)
			}

			t.Run("enroll spends token uses", func(t *testing.T) {
				got, err := st.AgentEnroll(ctx, "th1", agent("a1", "web-1", map[string]string{"role": "web", "zone": "mine"}), now)
				if err != nil {
					t.Fatal(err)
				}
				if got.Labels["zone"] != "a" || got.Labels["role"] != "web" || got.TokenLabels["zone"] != "a" {
					t.Fatalf("labels = %v (token %v), want the token's zone=a over the agent's own", got.Labels, got.TokenLabels)
				}
				if _, err := st.AgentEnroll(ctx, "th1", agent("a2", "db-1", map[string]string{"role": "db"}), now); err != nil {
					t.Fatal(err)
				}
				if _, err := st.AgentEnroll(ctx, "th1", agent("a3", "x", nil), now); !errors.Is(err, ErrTokenUnusable) {
					t.Fatalf("third use of a 2-use token: %v", err)
				}
				if _, err := st.AgentEnroll(ctx, "expired", agent("a4", "x", nil), now); !errors.Is(err, ErrTokenUnusable) {
					t.Fatalf("expired token: %v", err)
				}
				if _, err := st.AgentEnroll(ctx, "unknown", agent("a5", "x", nil), now); !errors.Is(err, ErrTokenUnusable) {
					t.Fatalf("unknown token: %v", err)
				}
			})
			t.Run("get and list", func(t *testing.T) {
				a, err := st.AgentGet(ctx, "a1")
				if err != nil {
					t.Fatal(err)
				}
				if a.Name != "web-1" || a.Labels["role"] != "web" || string(a.PublicKey) != "key-a1" || !a.EnrolledAt.Equal(now) || a.Revoked {
					t.Fatalf("agent = %+v", a)
				}
				if _, err := st.AgentGet(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("unknown agent: %v", err)
				}
				all, err := st.AgentList(ctx)
				if err != nil || len(all) != 2 || all[0].Name != "db-1" {
					t.Fatalf("list = %+v, %v", all, err)
				}
			})
			t.Run("rotate and revoke", func(t *testing.T) {
				grace := now.Add(time.Minute)
				if err := st.AgentRotateKey(ctx, "a2", []byte("key-a2-new"), grace); err != nil {
					t.Fatal(err)
				}
				got, _ := st.AgentGet(ctx, "a2")
				if string(got.PublicKey) != "key-a2-new" || string(got.PreviousPublicKey) != "key-a2" || got.PreviousKeyExpiresAt == nil || !got.PreviousKeyExpiresAt.Equal(grace) {
					t.Fatalf("after rotation = %+v", got)
				}
				if err := st.AgentRotateKey(ctx, "nope", []byte("k"), grace); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("rotate unknown: %v", err)
				}
				if err := st.AgentRevoke(ctx, "a2", "test", now); err != nil {
					t.Fatal(err)
				}
				if err := st.AgentRevoke(ctx, "a2", "again", now); err != nil {
					t.Fatalf("second revoke: %v", err)
				}
				got, _ = st.AgentGet(ctx, "a2")
				if !got.Revoked || got.RevokedAt == nil {
					t.Fatalf("after revoke = %+v", got)
				}
				if err := st.AgentRotateKey(ctx, "a2", []byte("k"), grace); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("a revoked agent rotated its key: %v", err)
				}
				all, _ := st.AgentList(ctx)
				for _, a := range all {
					if a.ID == "a2" {
						t.Fatal("a revoked agent is still listed")
					}
				}
				if err := st.AgentRevoke(ctx, "nope", "", now); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("revoke unknown: %v", err)
				}
			})
			t.Run("update facts and touch", func(t *testing.T) {
				a := agent("a1", "web-1b", map[string]string{"role": "web", "zone": "b", "new": "yes"})
				a.TokenLabels = map[string]string{"zone": "a"}
				a.LastSeenAt = now.Add(time.Minute)
				a.Plugins = []string{"shell", "ssh", "upper"}
				if err := st.AgentUpdateFacts(ctx, a); err != nil {
					t.Fatal(err)
				}
				if got, _ := st.AgentGet(ctx, "a1"); strings.Join(got.Plugins, ",") != "shell,ssh,upper" {
					t.Fatalf("plugins = %v, want shell, ssh, upper", got.Plugins)
				}
				if err := st.AgentUpdateFacts(ctx, agent("nope", "x", nil)); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("update unknown: %v", err)
				}
				got, _ := st.AgentGet(ctx, "a1")
				if got.Name != "web-1b" || got.Labels["zone"] != "a" || got.Labels["new"] != "yes" || !got.LastSeenAt.Equal(now.Add(time.Minute)) {
					t.Fatalf("after update = %+v", got)
				}
				// Within the granularity nothing is written; past it, it is.
				if err := st.AgentTouch(ctx, "a1", now.Add(time.Minute+2*time.Second), 5*time.Second); err != nil {
					t.Fatal(err)
				}
				got, _ = st.AgentGet(ctx, "a1")
				if !got.LastSeenAt.Equal(now.Add(time.Minute)) {
					t.Fatalf("touch within granularity wrote %v", got.LastSeenAt)
				}
				later := now.Add(2 * time.Minute)
				if err := st.AgentTouch(ctx, "a1", later, 5*time.Second); err != nil {
					t.Fatal(err)
				}
				got, _ = st.AgentGet(ctx, "a1")
				if !got.LastSeenAt.Equal(later) {
					t.Fatalf("touch wrote %v, want %v", got.LastSeenAt, later)
				}
			})
		})
	}
}

// TestJoinTokenConcurrentUse: a one-use token enrolls exactly one agent
// even when many race for it.
func TestJoinTokenConcurrentUse(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			st := NewStore(storetest.Open(t, d, Schema, Migrations()))
			now := time.Now().UTC()
			ctx := context.Background()
			if err := st.TokenCreate(ctx, TokenRecord{ID: "t", TokenHash: "h", MaxUses: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			ok := 0
			for i := 0; i < 10; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id := "agent-" + string(rune('a'+i))
					_, err := st.AgentEnroll(ctx, "h", AgentRecord{ID: id, Name: id, Labels: map[string]string{}, PublicKey: []byte("k"), EnrolledAt: now, LastSeenAt: now}, now)
					if err == nil {
						mu.Lock()
						ok++
						mu.Unlock()
					} else if !errors.Is(err, ErrTokenUnusable) {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if ok != 1 {
				t.Fatalf("%d agents enrolled with a one-use token", ok)
			}
		})
	}
}

// TestRegistry covers enrollment, agent tokens and target resolution.
func TestRegistry(t *testing.T) {
	st := NewStore(storetest.Open(t, store.SQLite, Schema, Migrations()))
	reg := New(st, nil, zaptest.NewLogger(t), Config{})
	ctx := context.Background()
	now := time.Now().UTC()
	if err := st.TokenCreate(ctx, TokenRecord{ID: "t", TokenHash: hashSecret("secret"), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	enroll := func(name string, labels map[string]string) (string, ed25519.PrivateKey) {
		key, err := identity.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		a, err := reg.Enroll(ctx, "ocj_secret", name, labels, Facts{Hostname: name}, key.Public().(ed25519.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		return a.ID, key
	}
	web1, key1 := enroll("web-1", map[string]string{"role": "web", "env": "prod"})
	web2, _ := enroll("web-2", map[string]string{"role": "web", "env": "dev"})
	db1, _ := enroll("db-1", map[string]string{"role": "db", "env": "prod"})

	if _, err := reg.Enroll(ctx, "ocj_secret", "", nil, Facts{}, make([]byte, 32)); err == nil {
		t.Fatal("enroll without a name succeeded")
	}
	if _, err := reg.Enroll(ctx, "ocj_secret", "x", map[string]string{"bad key": "v"}, Facts{}, make([]byte, 32)); err == nil {
		t.Fatal("enroll with a bad label succeeded")
	}
	if _, err := reg.Enroll(ctx, "ocj_secret", "x", nil, Facts{}, []byte("short")); err == nil {
		t.Fatal("enroll with a malformed public key succeeded")
	}

	tok, err := identity.NewSigner(web1, key1).Token()
	if err != nil {
		t.Fatal(err)
	}
	a, err := reg.Authenticate(ctx, tok)
	if err != nil || a.ID != web1 {
		t.Fatalf("authenticate = %+v, %v", a, err)
	}
	other, _ := identity.NewKey()
	forged, _ := identity.NewSigner(web1, other).Token() // web-1's id, someone else's key
	signAs := func(claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims).SignedString(key1)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	long := signAs(jwt.MapClaims{"sub": web1, "aud": AgentTokenAudience, "iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix()})
	expired := signAs(jwt.MapClaims{"sub": web1, "aud": AgentTokenAudience, "iat": now.Add(-time.Hour).Unix(), "exp": now.Add(-50 * time.Minute).Unix()})
	wrongAud := signAs(jwt.MapClaims{"sub": web1, "aud": "someone", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()})
	for name, bad := range map[string]string{"empty": "", "garbage": "garbage", "forged": forged, "long-lived": long, "expired": expired, "wrong audience": wrongAud} {
		if _, err := reg.Authenticate(ctx, bad); err == nil {
			t.Fatalf("%s agent token accepted", name)
		}
	}

	// Rotation: the new key works at once, the old one for the grace period.
	newKey, _ := identity.NewKey()
	if err := reg.RotateKey(ctx, a, newKey.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]ed25519.PrivateKey{"new": newKey, "old (in grace)": key1} {
		tok, _ := identity.NewSigner(web1, k).Token()
		if _, err := reg.Authenticate(ctx, tok); err != nil {
			t.Fatalf("%s key after rotation: %v", name, err)
		}
	}
	reg.now = func() time.Time { return time.Now().Add(time.Hour) } // past the grace
	oldTok := signAs(jwt.MapClaims{"sub": web1, "aud": AgentTokenAudience, "iat": time.Now().Add(time.Hour).Unix(), "exp": time.Now().Add(time.Hour + time.Minute).Unix()})
	if _, err := reg.Authenticate(ctx, oldTok); err == nil {
		t.Fatal("the old key still works after the grace period")
	}
	reg.now = time.Now

	tests := []struct {
		name      string
		targets   []*opsconductorv1.Target
		want      []string
		unmatched []int
	}{
		{"selector", []*opsconductorv1.Target{{Selector: "role=web"}}, []string{web1, web2}, nil},
		{"two pairs", []*opsconductorv1.Target{{Selector: "role=web,env=prod"}}, []string{web1}, nil},
		{"overlap counted once", []*opsconductorv1.Target{{Selector: "env=prod"}, {AgentId: db1}, {Selector: "role=db"}}, []string{db1, web1}, nil},
		{"unmatched", []*opsconductorv1.Target{{Selector: "role=web"}, {Selector: "role=cache"}, {AgentId: "nope"}}, []string{web1, web2}, []int{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agents, unmatched, err := reg.ResolveTargets(ctx, tt.targets)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range agents {
				got = append(got, a.GetAgentId())
				if !a.GetOnline() {
					t.Errorf("agent %s just enrolled but offline", a.GetName())
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("resolved %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("resolved %v, want %v", got, tt.want)
				}
			}
			if len(unmatched) != len(tt.unmatched) {
				t.Fatalf("unmatched %v, want %v", unmatched, tt.unmatched)
			}
		})
	}
}

// TestAgentTokenReuse: a token verified once is not verified again, but
// what may change after the first check still counts on every use: its
// expiry, the end of a key rotation's grace, revocation.
func TestAgentTokenReuse(t *testing.T) {
	st := NewStore(storetest.Open(t, store.SQLite, Schema, Migrations()))
	reg := New(st, nil, zaptest.NewLogger(t), Config{KeyGrace: time.Minute})
	ctx := context.Background()
	now := time.Now().UTC()
	if err := st.TokenCreate(ctx, TokenRecord{ID: "t", TokenHash: hashSecret("secret"), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	enroll := func(name string) (AgentRecord, string) {
		key, err := identity.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		a, err := reg.Enroll(ctx, "ocj_secret", name, nil, Facts{Hostname: name}, key.Public().(ed25519.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := identity.NewSigner(a.ID, key).Token()
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // the second use is answered from what the first found
			if got, err := reg.Authenticate(ctx, tok); err != nil || got.ID != a.ID {
				t.Fatalf("authenticate %s = %+v, %v", name, got, err)
			}
		}
		return a, tok
	}
	at := func(d time.Duration) { reg.now = func() time.Time { return time.Now().Add(d) } }
	defer func() { reg.now = time.Now }()

	expiring, expiringTok := enroll("expiring")
	at(identity.TokenLifetime + time.Minute) // past exp and the leeway
	if _, err := reg.Authenticate(ctx, expiringTok); err == nil {
		t.Fatalf("an expired token of %s was accepted again", expiring.ID)
	}
	reg.now = time.Now

	revoked, revokedTok := enroll("revoked")
	if err := st.AgentRevoke(ctx, revoked.ID, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Authenticate(ctx, revokedTok); err == nil {
		t.Fatal("a revoked agent's token was accepted again")
	}

	rotated, oldTok := enroll("rotated")
	newKey, _ := identity.NewKey()
	if err := reg.RotateKey(ctx, rotated, newKey.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	if a, err := reg.Authenticate(ctx, oldTok); err != nil || !a.SignedWithPreviousKey {
		t.Fatalf("old key in its grace = %+v, %v; want accepted, marked signed with the previous key", a, err)
	}
	at(2 * time.Minute) // past the grace, the token itself still valid
	if _, err := reg.Authenticate(ctx, oldTok); err == nil {
		t.Fatal("a token signed with the old key was accepted after the grace")
	}
}

// TestTouchFromRecord: a poll's touch is decided from the agent's record
// as the call read it; only a stale record costs a write.
func TestTouchFromRecord(t *testing.T) {
	st := NewStore(storetest.Open(t, store.SQLite, Schema, Migrations()))
	reg := New(st, nil, zaptest.NewLogger(t), Config{})
	ctx := context.Background()
	seen := time.Now().UTC().Truncate(time.Millisecond)
	if err := st.TokenCreate(ctx, TokenRecord{ID: "t", TokenHash: "h", CreatedAt: seen, ExpiresAt: seen.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AgentEnroll(ctx, "h", AgentRecord{ID: "a1", Name: "a1", Labels: map[string]string{}, PublicKey: []byte("k"), EnrolledAt: seen, LastSeenAt: seen}, seen); err != nil {
		t.Fatal(err)
	}
	later := seen.Add(time.Minute)
	reg.now = func() time.Time { return later }
	rec, _ := st.AgentGet(ctx, "a1")
	fresh := rec
	fresh.LastSeenAt = later.Add(-time.Second)
	if err := reg.Touch(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.AgentGet(ctx, "a1"); !got.LastSeenAt.Equal(seen) {
		t.Fatalf("a touch with a fresh record wrote %v", got.LastSeenAt)
	}
	if err := reg.Touch(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.AgentGet(ctx, "a1"); !got.LastSeenAt.Equal(later) {
		t.Fatalf("a touch with a stale record wrote %v, want %v", got.LastSeenAt, later)
	}
}
