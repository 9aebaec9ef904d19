package registry

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

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
					AgentVersion: "v1", CredentialHash: "hash-" + id, EnrolledAt: now, LastSeenAt: now}
			}

			if err := st.TokenCreate(ctx, TokenRecord{ID: "t1", TokenHash: "th1", MaxUses: 2, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			if err := st.TokenCreate(ctx, TokenRecord{ID: "t2", TokenHash: "th1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); !errors.Is(err, store.ErrConflict) {
				t.Fatalf("duplicate token hash: %v", err)
			}
			if err := st.TokenCreate(ctx, TokenRecord{ID: "t3", TokenHash: "expired", CreatedAt: now, ExpiresAt: now.Add(-time.Second)}); err != nil {
				t.Fatal(err)
			}

			t.Run("enroll spends token uses", func(t *testing.T) {
				if err := st.AgentEnroll(ctx, "th1", agent("a1", "web-1", map[string]string{"role": "web"}), now); err != nil {
					t.Fatal(err)
				}
				if err := st.AgentEnroll(ctx, "th1", agent("a2", "db-1", map[string]string{"role": "db"}), now); err != nil {
					t.Fatal(err)
				}
				if err := st.AgentEnroll(ctx, "th1", agent("a3", "x", nil), now); !errors.Is(err, ErrTokenUnusable) {
					t.Fatalf("third use of a 2-use token: %v", err)
				}
				if err := st.AgentEnroll(ctx, "expired", agent("a4", "x", nil), now); !errors.Is(err, ErrTokenUnusable) {
					t.Fatalf("expired token: %v", err)
				}
				if err := st.AgentEnroll(ctx, "unknown", agent("a5", "x", nil), now); !errors.Is(err, ErrTokenUnusable) {
					t.Fatalf("unknown token: %v", err)
				}
			})
			t.Run("get and list", func(t *testing.T) {
				a, err := st.AgentGet(ctx, "a1")
				if err != nil {
					t.Fatal(err)
				}
				if a.Name != "web-1" || a.Labels["role"] != "web" || a.CredentialHash != "hash-a1" || !a.EnrolledAt.Equal(now) || a.Revoked {
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
			t.Run("update facts and touch", func(t *testing.T) {
				a := agent("a1", "web-1b", map[string]string{"role": "web", "zone": "b"})
				a.LastSeenAt = now.Add(time.Minute)
				if err := st.AgentUpdateFacts(ctx, a); err != nil {
					t.Fatal(err)
				}
				if err := st.AgentUpdateFacts(ctx, agent("nope", "x", nil)); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("update unknown: %v", err)
				}
				got, _ := st.AgentGet(ctx, "a1")
				if got.Name != "web-1b" || got.Labels["zone"] != "b" || !got.LastSeenAt.Equal(now.Add(time.Minute)) {
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
					err := st.AgentEnroll(ctx, "h", AgentRecord{ID: id, Name: id, Labels: map[string]string{}, CredentialHash: "c", EnrolledAt: now, LastSeenAt: now}, now)
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

// TestRegistry covers enrollment, authentication and target resolution.
func TestRegistry(t *testing.T) {
	st := NewStore(storetest.Open(t, store.SQLite, Schema, Migrations()))
	reg := New(st, zaptest.NewLogger(t), Config{})
	ctx := context.Background()
	now := time.Now().UTC()
	if err := st.TokenCreate(ctx, TokenRecord{ID: "t", TokenHash: hashSecret("secret"), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	enroll := func(name string, labels map[string]string) (string, string) {
		id, cred, err := reg.Enroll(ctx, "ocj_secret", name, labels, Facts{Hostname: name})
		if err != nil {
			t.Fatal(err)
		}
		return id, cred
	}
	web1, cred := enroll("web-1", map[string]string{"role": "web", "env": "prod"})
	web2, _ := enroll("web-2", map[string]string{"role": "web", "env": "dev"})
	db1, _ := enroll("db-1", map[string]string{"role": "db", "env": "prod"})

	if _, _, err := reg.Enroll(ctx, "ocj_secret", "", nil, Facts{}); err == nil {
		t.Fatal("enroll without a name succeeded")
	}
	if _, _, err := reg.Enroll(ctx, "ocj_secret", "x", map[string]string{"bad key": "v"}, Facts{}); err == nil {
		t.Fatal("enroll with a bad label succeeded")
	}
	a, err := reg.Authenticate(ctx, cred)
	if err != nil || a.ID != web1 {
		t.Fatalf("authenticate = %+v, %v", a, err)
	}
	for _, bad := range []string{"", "garbage", web1 + ".wrong", "nope.secret"} {
		if _, err := reg.Authenticate(ctx, bad); err == nil {
			t.Fatalf("credential %q accepted", bad)
		}
	}

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
