package server

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/opsconductor/opsconductor/installer"
)

// What the control plane serves its agents: the installers, and the agent
// binaries of --dist-dir (`make dist`) with their SHA256SUMS. Only files
// SHA256SUMS names are served, by their plain names: nothing else in the
// directory, and no path outside it, is reachable.

func serveScript(body []byte, contentType string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(body)
	}
}

// distFiles is the set of names SHA256SUMS lists (and SHA256SUMS itself).
func distFiles(dir string) (map[string]bool, error) {
	f, err := os.Open(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names := map[string]bool{"SHA256SUMS": true}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 {
			names[strings.TrimPrefix(fields[1], "*")] = true
		}
	}
	return names, sc.Err()
}

func serveDownloads(dir string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("file")
		if dir == "" {
			http.Error(w, "this server has no agent binaries: start it with --dist-dir (make dist builds them)", http.StatusNotFound)
			return
		}
		names, err := distFiles(dir)
		if err != nil {
			http.Error(w, "no SHA256SUMS in --dist-dir: run make dist", http.StatusNotFound)
			return
		}
		if !names[name] || strings.ContainsAny(name, `/\`) {
			http.Error(w, "no such download: "+name, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if name == "SHA256SUMS" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
		http.ServeFile(w, r, filepath.Join(dir, name))
	}
}

func mountDownloads(mux *http.ServeMux, distDir string) {
	mux.Handle("GET /install.sh", serveScript(installer.Shell, "text/x-shellscript; charset=utf-8"))
	mux.Handle("GET /install.ps1", serveScript(installer.PowerShell, "text/plain; charset=utf-8"))
	mux.Handle("GET /downloads/{file}", serveDownloads(distDir))
}
