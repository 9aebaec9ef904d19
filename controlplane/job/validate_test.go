package job

import (
	"strings"
	"testing"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// TestValidateActionKinds: an action is exactly one of command, script and
// upload, and an upload names an absolute file, a bounded content and an
// octal mode; each refusal names the field.
func TestValidateActionKinds(t *testing.T) {
	tests := []struct {
		name      string
		action    *opsconductorv1.Action
		wantField string // "" means valid
	}{
		{name: "command", action: &opsconductorv1.Action{Command: "true"}},
		{name: "upload", action: &opsconductorv1.Action{Upload: &opsconductorv1.FileUpload{Destination: "/etc/app.conf", Content: "x", Mode: "0640"}}},
		{name: "nothing", action: &opsconductorv1.Action{}, wantField: "job.actions[0].command"},
		{name: "command and upload", action: &opsconductorv1.Action{Command: "true", Upload: &opsconductorv1.FileUpload{Destination: "/f"}}, wantField: "job.actions[0].command"},
		{name: "relative destination", action: &opsconductorv1.Action{Upload: &opsconductorv1.FileUpload{Destination: "etc/app.conf"}}, wantField: "job.actions[0].upload.destination"},
		{name: "directory destination", action: &opsconductorv1.Action{Upload: &opsconductorv1.FileUpload{Destination: "/etc/"}}, wantField: "job.actions[0].upload.destination"},
		{name: "no destination", action: &opsconductorv1.Action{Upload: &opsconductorv1.FileUpload{Content: "x"}}, wantField: "job.actions[0].upload.destination"},
		{name: "bad mode", action: &opsconductorv1.Action{Upload: &opsconductorv1.FileUpload{Destination: "/f", Mode: "rw-r--r--"}}, wantField: "job.actions[0].upload.mode"},
		{name: "mode too wide", action: &opsconductorv1.Action{Upload: &opsconductorv1.FileUpload{Destination: "/f", Mode: "4755"}}, wantField: "job.actions[0].upload.mode"},
		{name: "too big", action: &opsconductorv1.Action{Upload: &opsconductorv1.FileUpload{Destination: "/f", Content: strings.Repeat("x", MaxUploadBytes+1)}}, wantField: "job.actions[0].upload.content"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := &opsconductorv1.Job{Name: "j", Targets: []*opsconductorv1.Target{{Selector: "role=web"}}, Actions: []*opsconductorv1.Action{tt.action}}
			vs := Validate("job", j)
			if tt.wantField == "" {
				if len(vs) != 0 {
					t.Fatalf("valid action refused: %v", vs)
				}
				return
			}
			for _, v := range vs {
				if v.Field == tt.wantField {
					return
				}
			}
			t.Fatalf("violations %v, want one for %s", vs, tt.wantField)
		})
	}
}

// TestValidateRemoteTargets: a remote target names its jump agents and
// well-formed hosts; each refusal names the field.
func TestValidateRemoteTargets(t *testing.T) {
	host := func(addr string) []*opsconductorv1.RemoteHost { return []*opsconductorv1.RemoteHost{{Address: addr}} }
	tests := []struct {
		name      string
		target    *opsconductorv1.Target
		wantField string // "" means valid
	}{
		{name: "hosts via jump agents", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("db1.example.com"),
			Credential: "agent:/etc/opsconductor/keys/id_ed25519", Options: map[string]string{"known_hosts": "/etc/ssh/known"}}}},
		{name: "ipv6 host and port", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump",
			Hosts: []*opsconductorv1.RemoteHost{{Address: "fe80::1%eth0", Port: 2222}}}}},
		{name: "remote and selector", target: &opsconductorv1.Target{Selector: "role=web", Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("h")}}, wantField: "job.targets[0]"},
		{name: "no via", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Hosts: host("h")}}, wantField: "job.targets[0].remote.via"},
		{name: "bad via", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role", Hosts: host("h")}}, wantField: "job.targets[0].remote.via"},
		{name: "no hosts", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump"}}, wantField: "job.targets[0].remote.hosts"},
		{name: "empty address", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("")}}, wantField: "job.targets[0].remote.hosts[0].address"},
		{name: "option-like address", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("-oProxyCommand=x")}}, wantField: "job.targets[0].remote.hosts[0].address"},
		{name: "address with a space", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("a b")}}, wantField: "job.targets[0].remote.hosts[0].address"},
		{name: "port out of range", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: []*opsconductorv1.RemoteHost{{Address: "h", Port: 70000}}}}, wantField: "job.targets[0].remote.hosts[0].port"},
		{name: "unknown transport", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("h"), Transport: "telnet"}}, wantField: "job.targets[0].remote.transport"},
		{name: "stored credential", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("h"), Credential: "prod-key"}}},
		{name: "malformed credential name", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("h"), Credential: "prod key"}}, wantField: "job.targets[0].remote.credential"},
		{name: "relative key path", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("h"), Credential: "agent:keys/x"}}, wantField: "job.targets[0].remote.credential"},
		{name: "host set through options", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("h"), Options: map[string]string{"host": "other"}}}, wantField: "job.targets[0].remote.options[host]"},
		{name: "user with a host part", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: []*opsconductorv1.RemoteHost{{Address: "h", User: "root@h"}}}}, wantField: "job.targets[0].remote.hosts[0].user"},
		{name: "bad label", target: &opsconductorv1.Target{Remote: &opsconductorv1.RemoteHosts{Via: "role=jump", Hosts: host("h"), Labels: map[string]string{"": "x"}}}, wantField: "job.targets[0].remote.labels[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := &opsconductorv1.Job{Name: "j", Targets: []*opsconductorv1.Target{tt.target}, Actions: []*opsconductorv1.Action{{Command: "true"}}}
			vs := Validate("job", j)
			if tt.wantField == "" {
				if len(vs) != 0 {
					t.Fatalf("valid target refused: %v", vs)
				}
				return
			}
			for _, v := range vs {
				if v.Field == tt.wantField {
					return
				}
			}
			t.Fatalf("violations %v, want one for %s", vs, tt.wantField)
		})
	}
}
