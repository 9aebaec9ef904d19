package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

var roles = []string{"admin", "operator", "developer", "viewer", "auditor"}

// readMatrix loads testdata/rbac_matrix.txt: procedure -> role -> expectation.
func readMatrix(t *testing.T) map[string]map[string]string {
	t.Helper()
	f, err := os.Open("testdata/rbac_matrix.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 1+len(roles) {
			t.Fatalf("matrix line %q: want a procedure and %d expectations", line, len(roles))
		}
		m[fields[0]] = map[string]string{}
		for i, r := range roles {
			m[fields[0]][r] = fields[i+1]
		}
	}
	return m
}

// callConnect calls procedure over the Connect protocol with an empty JSON
// message and returns the Connect error code ("" for success).
func callConnect(t *testing.T, url, procedure, token string, streaming bool) string {
	t.Helper()
	body := []byte("{}")
	ctype := "application/json"
	if streaming {
		var env bytes.Buffer
		env.WriteByte(0)
		_ = binary.Write(&env, binary.BigEndian, uint32(len(body)))
		env.Write(body)
		body, ctype = env.Bytes(), "application/connect+json"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", url+"/"+procedure, bytes.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Connect-Protocol-Version", "1")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var e struct {
		Code  string `json:"code"`
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if !streaming {
		if resp.StatusCode == http.StatusOK {
			return ""
		}
		_ = json.Unmarshal(raw, &e)
		return e.Code
	}
	// Streaming: frames of 5-byte prefix + JSON; the end-stream frame
	// (flag 2) carries the error, if any.
	for len(raw) >= 5 {
		flags, n := raw[0], binary.BigEndian.Uint32(raw[1:5])
		msg := raw[5 : 5+n]
		raw = raw[5+n:]
		if flags&2 != 0 {
			_ = json.Unmarshal(msg, &e)
			return e.Error.Code
		}
	}
	return ""
}

var pathVar = regexp.MustCompile(`\{[^}]+\}`)

// callREST calls the RPC's REST route with an empty body and returns the
// HTTP status, or 0 when the RPC has no REST route.
func callREST(t *testing.T, url string, md protoreflect.MethodDescriptor, token string) int {
	t.Helper()
	rule, ok := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
	if !ok || rule == nil {
		return 0
	}
	var method, path string
	switch p := rule.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		method, path = "GET", p.Get
	case *annotations.HttpRule_Post:
		method, path = "POST", p.Post
	case *annotations.HttpRule_Put:
		method, path = "PUT", p.Put
	case *annotations.HttpRule_Delete:
		method, path = "DELETE", p.Delete
	default:
		t.Fatalf("%s: unexpected HTTP rule %v", md.FullName(), rule)
	}
	path = pathVar.ReplaceAllString(path, "rbac-test-id")
	var body io.Reader
	if rule.GetBody() != "" {
		body = strings.NewReader("{}")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url+path, body)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestRBACMatrix calls every RPC, as every built-in role, over Connect and
// REST, and compares the answer with the hand-written matrix.
func TestRBACMatrix(t *testing.T) {
	srv := startApp(t, store.SQLite)
	matrix := readMatrix(t)
	tokens := map[string]string{}
	for _, r := range roles {
		var out struct {
			Secret string `json:"secret"`
		}
		if code := srv.do(t, "POST", "/api/v1/tokens", map[string]any{"name": "rbac-" + r, "roles": []string{r}}, &out); code != http.StatusOK {
			t.Fatalf("create %s token: HTTP %d", r, code)
		}
		tokens[r] = out.Secret
	}

	seen := map[string]bool{}
	for _, sd := range Services() {
		methods := sd.Methods()
		for i := 0; i < methods.Len(); i++ {
			md := methods.Get(i)
			proc := string(sd.FullName()) + "/" + string(md.Name())
			seen[proc] = true
			want, ok := matrix[proc]
			if !ok {
				t.Errorf("%s is missing from testdata/rbac_matrix.txt", proc)
				continue
			}
			t.Run(proc, func(t *testing.T) {
				streaming := md.IsStreamingServer()
				if want["admin"] == "public" {
					code := callConnect(t, srv.url, proc, "", streaming)
					if code == "permission_denied" {
						t.Fatalf("public RPC refused by authorisation")
					}
					return
				}
				// Without a credential every non-public RPC is refused.
				if code := callConnect(t, srv.url, proc, "", streaming); code != "unauthenticated" {
					t.Errorf("no credential over Connect: code %q, want unauthenticated", code)
				}
				if status := callREST(t, srv.url, md, ""); status != 0 && status != http.StatusUnauthorized {
					t.Errorf("no credential over REST: HTTP %d, want 401", status)
				}
				for _, r := range roles {
					code := callConnect(t, srv.url, proc, tokens[r], streaming)
					status := callREST(t, srv.url, md, tokens[r])
					switch want[r] {
					case "allow":
						if code == "unauthenticated" || code == "permission_denied" {
							t.Errorf("%s over Connect: %s, want allowed", r, code)
						}
						if status == http.StatusUnauthorized || status == http.StatusForbidden {
							t.Errorf("%s over REST: HTTP %d, want allowed", r, status)
						}
					case "deny":
						if code != "permission_denied" {
							t.Errorf("%s over Connect: code %q, want permission_denied", r, code)
						}
						if status != 0 && status != http.StatusForbidden {
							t.Errorf("%s over REST: HTTP %d, want 403", r, status)
						}
					case "agent", "service":
						if code != "unauthenticated" {
							t.Errorf("%s (a user) calling an %s RPC: code %q, want unauthenticated", r, want[r], code)
						}
					default:
						t.Fatalf("matrix: unknown expectation %q", want[r])
					}
				}
			})
		}
	}
	for proc := range matrix {
		if !seen[proc] {
			t.Errorf("testdata/rbac_matrix.txt names %s, which the server does not serve", proc)
		}
	}
}

// TestEveryRPCDeclaresAccess: the server refuses to build without it, and
// this names any offender directly.
func TestEveryRPCDeclaresAccess(t *testing.T) {
	for _, sd := range Services() {
		for i := 0; i < sd.Methods().Len(); i++ {
			md := sd.Methods().Get(i)
			if !proto.HasExtension(md.Options(), opsconductorv1.E_Access) {
				t.Errorf("%s has no (opsconductor.v1.access) option", md.FullName())
			}
		}
	}
}
