package safety

import (
	"testing"

	"github.com/opsconductor/opsconductor/agent/safety"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// TestCheckJobUploads: an upload over a file the host needs is a finding
// on the upload's destination field; an ordinary config file is not.
func TestCheckJobUploads(t *testing.T) {
	checker, err := safety.New(safety.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s := NewService(checker)
	job := &opsconductorv1.Job{Actions: []*opsconductorv1.Action{
		{Upload: &opsconductorv1.FileUpload{Destination: "/etc/app.conf", Content: "x"}},
		{Upload: &opsconductorv1.FileUpload{Destination: "/etc/shadow", Content: "root::0:0:::::"}},
	}}
	findings := s.CheckJob(job)
	if len(findings) != 1 || findings[0].GetField() != "job.actions[1].upload.destination" {
		t.Fatalf("findings = %v, want one on job.actions[1].upload.destination", findings)
	}
}
