package policy

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func TestAmount(t *testing.T) {
	tests := []struct {
		in      string
		total   int
		want    int
		wantErr bool
	}{
		{"3", 10, 3, false},
		{"25%", 10, 3, false},
		{"1%", 10, 1, false},
		{"100%", 7, 7, false},
		{"0", 10, 0, true},
		{"-1", 10, 0, true},
		{"101%", 10, 0, true},
		{"x", 10, 0, true},
	}
	for _, tt := range tests {
		a, err := parseAmount(tt.in, false)
		if (err != nil) != tt.wantErr {
			t.Fatalf("%q: err %v", tt.in, err)
		}
		if err == nil && a.Of(tt.total) != tt.want {
			t.Fatalf("%q of %d = %d, want %d", tt.in, tt.total, a.Of(tt.total), tt.want)
		}
	}
}

func TestResolve(t *testing.T) {
	job := &opsconductorv1.ExecutionPolicy{MaxParallel: "3", Concurrency: "skip", BatchSize: 2}
	over := &opsconductorv1.ExecutionPolicy{MaxParallel: "50%", QueueTimeout: durationpb.New(time.Minute)}
	p, merged, vs := Resolve("policy", job, over)
	if len(vs) != 0 {
		t.Fatal(vs)
	}
	if p.MaxParallel.Percent != 50 || p.Concurrency != Skip || p.BatchSize != 2 || p.QueueTimeout != time.Minute || merged.GetMaxParallel() != "50%" {
		t.Fatalf("resolved %+v / %v", p, merged)
	}
	if p, _, _ := Resolve("policy", &opsconductorv1.ExecutionPolicy{MaxFailures: "0"}, nil); !p.MaxFailures.Set() || p.MaxFailures.Of(10) != 0 {
		t.Fatalf("max_failures 0 = %+v, want set to zero", p.MaxFailures)
	}
	p, _, _ = Resolve("policy", nil, nil)
	if p.Concurrency != Allow || p.QueueTimeout != DefaultQueueTimeout || p.MaxFailures.Set() {
		t.Fatalf("defaults %+v", p)
	}
	bad := &opsconductorv1.ExecutionPolicy{MaxParallel: "0", MaxFailures: "200%", BatchSize: -1, Concurrency: "sometimes",
		QueueTimeout: durationpb.New(-time.Second)}
	vs = Validate("job.policy", bad)
	var fields []string
	for _, v := range vs {
		fields = append(fields, v.Field)
	}
	want := "job.policy.max_parallel job.policy.max_failures job.policy.batch_size job.policy.concurrency job.policy.queue_timeout"
	if strings.Join(fields, " ") != want {
		t.Fatalf("fields %v, want %s", fields, want)
	}
}
