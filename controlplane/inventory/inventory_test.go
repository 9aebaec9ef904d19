package inventory

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

func names(hs []Host) string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return strings.Join(out, ",")
}

func TestStoreContract(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			st := NewStore(storetest.Open(t, d, Schema, Migrations()))
			now := time.Now().UTC().Truncate(time.Microsecond)
			if err := st.GroupCreate(ctx, Group{Name: "web", Labels: map[string]string{"tier": "web"}, Source: SourceAPI, CreatedAt: now, UpdatedAt: now}); err != nil {
				t.Fatal(err)
			}
			h := Host{Name: "web-1", Address: "10.0.0.1", Labels: map[string]string{"env": "lab"}, Groups: []string{"web"}, Source: SourceAPI, CreatedAt: now, UpdatedAt: now}
			if err := st.HostCreate(ctx, h); err != nil {
				t.Fatal(err)
			}
			if err := st.HostCreate(ctx, h); !errors.Is(err, store.ErrConflict) {
				t.Fatalf("duplicate host: %v", err)
			}
			if err := st.HostCreate(ctx, Host{Name: "x", Address: "a", Groups: []string{"nope"}, Source: SourceAPI, CreatedAt: now, UpdatedAt: now}); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("host in a missing group: %v", err)
			}
			got, err := st.HostGet(ctx, "web-1")
			if err != nil || got.Address != "10.0.0.1" || got.Labels["env"] != "lab" || len(got.Groups) != 1 {
				t.Fatalf("get = %+v, %v", got, err)
			}
			if err := st.GroupDelete(ctx, "web"); !errors.Is(err, ErrInUse) {
				t.Fatalf("delete a group in use: %v", err)
			}
			h.Address, h.Groups = "10.0.0.9", nil
			if err := st.HostUpdate(ctx, h); err != nil {
				t.Fatal(err)
			}
			if hs, err := st.HostList(ctx, "web"); err != nil || len(hs) != 0 {
				t.Fatalf("web after the host left it: %v, %v", names(hs), err)
			}
			h.Groups = []string{"web"}
			if err := st.HostUpdate(ctx, h); err != nil {
				t.Fatal(err)
			}

			// An import: a new host, one clashing with the API host, a new
			// group made implicitly.
			at := now.Add(time.Minute)
			skipped, err := st.ReplaceSynced(ctx, []Host{
				{Name: "db-1", Address: "10.0.1.1", Groups: []string{"db"}},
				{Name: "web-1", Address: "10.9.9.9"},
			}, []Group{{Name: "db", Labels: map[string]string{}}}, at)
			if err != nil || len(skipped) != 1 || skipped[0] != "web-1" {
				t.Fatalf("import: skipped %v, %v", skipped, err)
			}
			if got, _ := st.HostGet(ctx, "web-1"); got.Address != "10.0.0.9" || got.Source != SourceAPI {
				t.Fatalf("the import changed an API host: %+v", got)
			}
			if hs, _ := st.HostList(ctx, "db"); names(hs) != "db-1" || hs[0].Source != SourceSync {
				t.Fatalf("db = %+v", hs)
			}
			// A failed import changes nothing but the status.
			if err := st.SyncFailed(ctx, at.Add(time.Minute), "HTTP 500"); err != nil {
				t.Fatal(err)
			}
			stt, err := st.SyncState(ctx)
			if err != nil || stt.LastError != "HTTP 500" || stt.Hosts != 1 || !stt.LastSuccess.Equal(at) || len(stt.Skipped) != 1 {
				t.Fatalf("status = %+v, %v", stt, err)
			}
			// The next good import drops what the source no longer has.
			if _, err := st.ReplaceSynced(ctx, nil, nil, at.Add(2*time.Minute)); err != nil {
				t.Fatal(err)
			}
			if hs, _ := st.HostList(ctx, ""); names(hs) != "web-1" {
				t.Fatalf("hosts after an empty import = %s", names(hs))
			}
			if _, err := st.GroupGet(ctx, "db"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("the imported group outlived its import: %v", err)
			}
			if err := st.HostDelete(ctx, "web-1"); err != nil {
				t.Fatal(err)
			}
			if err := st.GroupDelete(ctx, "web"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSyncKeepsLastGood: an import from a real HTTP endpoint replaces the
// imported hosts; an endpoint that fails, answers garbage or lists an
// invalid host leaves the last good inventory and says why.
func TestSyncKeepsLastGood(t *testing.T) {
	var mu sync.Mutex
	status, body := http.StatusOK, `{"hosts":[{"name":"a","address":"10.0.0.1","groups":["lab"]},{"name":"b","address":"10.0.0.2","port":2222}],
		"groups":[{"name":"lab","labels":{"env":"lab"}}]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer inv-token" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	set := func(s int, b string) { mu.Lock(); status, body = s, b; mu.Unlock() }
	ctx := context.Background()
	st := NewStore(storetest.Open(t, store.SQLite, Schema, Migrations()))
	y := NewSyncer(st, SyncConfig{URL: srv.URL, Token: "inv-token"}, nil, zap.NewNop())
	svc := NewService(st, y, zap.NewNop())
	if err := y.Run(ctx); err != nil {
		t.Fatal(err)
	}
	check := func(want string) {
		t.Helper()
		hs, err := st.HostList(ctx, "")
		if err != nil || names(hs) != want {
			t.Fatalf("hosts = %s (%v), want %s", names(hs), err, want)
		}
	}
	check("a,b")
	if hosts, ok, err := svc.GroupHosts(ctx, "lab"); err != nil || !ok || len(hosts) != 1 || hosts[0].GetLabels()["env"] != "lab" {
		t.Fatalf("group lab = %v, %v, %v", hosts, ok, err)
	}
	for _, bad := range []struct {
		status      int
		body, error string
	}{
		{http.StatusInternalServerError, "oops", "HTTP 500"},
		{http.StatusOK, "{not json", "not an inventory document"},
		{http.StatusOK, `{"hosts":[{"name":"c","address":"-oProxyCommand=x"}]}`, "hosts[0].address"},
		{http.StatusOK, `{"hosts":[{"name":"c","address":"h"},{"name":"c","address":"i"}]}`, "appears twice"},
	} {
		set(bad.status, bad.body)
		if err := y.Run(ctx); err == nil || !strings.Contains(err.Error(), bad.error) {
			t.Fatalf("import of %q: %v, want %q", bad.body, err, bad.error)
		}
		check("a,b")
		stt, _ := st.SyncState(ctx)
		if !strings.Contains(stt.LastError, bad.error) {
			t.Fatalf("status after a failed import = %+v", stt)
		}
	}
	set(http.StatusOK, `{"hosts":[{"name":"b","address":"10.0.0.2"}]}`)
	if err := y.Run(ctx); err != nil {
		t.Fatal(err)
	}
	check("b")
	if stt, _ := st.SyncState(ctx); stt.LastError != "" || stt.Hosts != 1 {
		t.Fatalf("status after a good import = %+v", stt)
	}
}
