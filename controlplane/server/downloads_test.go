package server

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opsconductor/opsconductor/controlplane/config"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

// TestDownloads: the installers are served; of --dist-dir only the files
// SHA256SUMS names are, and no path leads outside it; without --dist-dir
// the answer says how to get binaries.
func TestDownloads(t *testing.T) {
	dist := t.TempDir()
	for name, body := range map[string]string{"opsconductor-agent-linux-amd64": "binary", "private.key": "secret",
		"SHA256SUMS": "abc  opsconductor-agent-linux-amd64\n"} {
		if err := os.WriteFile(filepath.Join(dist, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := startApp(t, store.SQLite, func(c *config.Config) { c.DistDir = dist })
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for path, want := range map[string]struct {
		code int
		body string
	}{
		"/install.sh":  {200, "#!/bin/sh"},
		"/install.ps1": {200, "# OpsConductor agent installer for Windows"},
		"/downloads/opsconductor-agent-linux-amd64": {200, "binary"},
		"/downloads/SHA256SUMS":                     {200, "abc  opsconductor-agent-linux-amd64"},
		"/downloads/private.key":                    {404, "no such download"},
		"/downloads/..%2fSHA256SUMS":                {404, ""},
		"/downloads/%2e%2e%2f%2e%2e%2fetc%2fpasswd": {404, ""},
	} {
		code, body := get(path)
		if code != want.code || !strings.HasPrefix(body, want.body) {
			t.Errorf("GET %s: %d %.60q, want %d %q", path, code, body, want.code, want.body)
		}
	}
	bare := startApp(t, store.SQLite)
	resp, err := http.Get(bare.url + "/downloads/SHA256SUMS")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.Contains(string(body), "--dist-dir") {
		t.Fatalf("without --dist-dir: %d %s", resp.StatusCode, body)
	}
}
