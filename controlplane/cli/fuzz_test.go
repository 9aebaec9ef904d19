package cli

import (
	"os"
	"strings"
	"testing"

	"github.com/opsconductor/opsconductor/controlplane/job"
)

// FuzzJobDecode feeds arbitrary bytes to the job file decoder and the
// validator: neither may panic, and a job the decoder accepts gets a
// verdict from the validator.
func FuzzJobDecode(f *testing.F) {
	for _, name := range []string{"hello.yaml", "patch-lab.yaml"} {
		if seed, err := os.ReadFile("../../docs/examples/" + name); err == nil {
			f.Add(seed)
		}
	}
	f.Add([]byte(`{"name":"x","actions":[{"command":"true","timeout":"-1s"}],"targets":[{"selector":"a=b,,c"}]}`))
	f.Add([]byte("name: [unclosed"))
	f.Add([]byte("actions:\n  - env: {\"1BAD\": x}\n    plugin: telnet\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := ParseJobFile(data)
		if err != nil {
			return
		}
		_ = job.Validate("job", j)
	})
}

func TestParseJobFileExample(t *testing.T) {
	for _, name := range []string{"hello.yaml", "patch-lab.yaml"} {
		raw, err := os.ReadFile("../../docs/examples/" + name)
		if err != nil {
			t.Fatal(err)
		}
		j, err := ParseJobFile(raw)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if vs := job.Validate("job", j); len(vs) != 0 {
			t.Fatalf("the example job %s is invalid: %v", name, vs)
		}
	}
}

func TestProgressBar(t *testing.T) {
	p := &progress{total: 4, status: map[string]string{"a": "succeeded", "b": "failed", "c": "running"}}
	if got := p.bar(); got != "[##########----------] 2/4 targets done, 1 failed" {
		t.Fatalf("bar = %q", got)
	}
	if isTerminal(&strings.Builder{}) {
		t.Fatal("a buffer is not a terminal")
	}
}
