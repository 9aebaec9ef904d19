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
