package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/agent/executor/sshtest"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestInventoryGroups: a remote target names an inventory group whose
// hosts come from the API and from an external inventory the server
// imports; the job runs on each through a jump agent. When the external
// inventory starts failing, the sync status says so and the last good
// hosts still run.
func TestInventoryGroups(t *testing.T) {
	t.Parallel()
	sshd := sshtest.Start(t, "127.0.0.2", "127.0.0.3")
	port, _ := strconv.Atoi(sshd.Port)
	var failing atomic.Bool
	external := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			http.Error(w, "inventory database down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, `{"hosts":[{"name":"synced-3","address":"127.0.0.3","port":%d,"groups":["lab"]}],
			"groups":[{"name":"lab","description":"the lab","labels":{"env":"lab"}}]}`, port)
	}))
	defer external.Close()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres),
		"OPSCONDUCTOR_INVENTORY_URL": external.URL, "OPSCONDUCTOR_INVENTORY_INTERVAL": "1h"})
	s.StartAgent(t, "jump-1", "role=jump")
	s.WaitAgents(t, 1)

	type syncStatus struct {
		Status struct {
			Hosts     int    `json:"hosts"`
			LastError string `json:"lastError"`
		} `json:"status"`
	}
	cptest.Eventually(t, 30*time.Second, func() error {
		var st syncStatus
		s.Do(t, "GET", "/api/v1/inventory/sync", nil, &st)
		if st.Status.Hosts != 1 {
			return fmt.Errorf("sync status = %+v", st)
		}
		return nil
	})
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/inventory/hosts", map[string]any{"host": map[string]any{
		"name": "api-1", "address": "127.0.0.1", "port": port, "groups": []string{"lab"}, "labels": map[string]string{"rack": "r1"}}}, nil))
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/inventory/hosts", map[string]any{"host": map[string]any{
		"name": "api-2", "address": "127.0.0.2", "port": port}}, nil))
	var bad struct {
		Message string `json:"message"`
	}
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/inventory/hosts", map[string]any{"host": map[string]any{
		"name": "bad", "address": "127.0.0.9", "groups": []string{"nope"}}}, &bad))
	if !strings.Contains(bad.Message, "host.groups") {
		t.Fatalf("a host in a missing group: %q", bad.Message)
	}
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "DELETE", "/api/v1/inventory/groups/lab", nil, nil))

	j := createJob(t, s, map[string]any{"name": "lab-wide", "targets": []map[string]any{{"remote": map[string]any{
		"via": "role=jump", "group": "lab", "user": "root", "credential": "agent:" + sshd.KeyFile,
		"options": map[string]string{"known_hosts": sshd.KnownHosts}}}},
		"actions": []map[string]any{{"command": "set -- $SSH_CONNECTION; echo $3"}}})
	run := func() {
		t.Helper()
		r := waitFinished(t, s, execute(t, s, j.ID).ID, 60*time.Second)
		var got []string
		for _, res := range r.Results {
			got = append(got, res.Task.Host+"="+strings.TrimSpace(res.Actions[0].Stdout))
		}
		sort.Strings(got)
		if r.Execution.Status != "succeeded" || strings.Join(got, " ") != "api-1=127.0.0.1 synced-3=127.0.0.3" {
			t.Fatalf("execution %s ran on %v, want api-1 and synced-3 (not api-2, outside the group)", r.Execution.Status, got)
		}
	}
	run()

	failing.Store(true)
	var st syncStatus
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/inventory/sync", map[string]any{}, &st))
	if !strings.Contains(st.Status.LastError, "HTTP 503") || st.Status.Hosts != 1 {
		t.Fatalf("status after a failed import = %+v", st)
	}
	run()

	// A group that does not exist is refused before anything runs.
	none := createJob(t, s, map[string]any{"name": "nowhere", "targets": []map[string]any{{"remote": map[string]any{
		"via": "role=jump", "group": "staging"}}}, "actions": []map[string]any{{"command": "true"}}})
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/jobs/"+none.ID+"/execute", map[string]any{}, &bad))
	if !strings.Contains(bad.Message, "remote.group staging does not exist") {
		t.Fatalf("missing group: %q", bad.Message)
	}
}
