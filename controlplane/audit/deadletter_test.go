package audit

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// TestDeadLetterAPI: an event the audit group keeps failing on shows in
// ListDeadLetters with its error; ReplayDeadLetter delivers it once more
// to the (fixed) group; an unknown group or ref is refused.
func TestDeadLetterAPI(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	b := bus.NewMemory(bus.Options{MaxDeliveries: 2, RetryAfter: 20 * time.Millisecond})
	svc := NewService(nil, nil, b, MetricSources{}, nil, zaptest.NewLogger(t))
	var broken atomic.Bool
	broken.Store(true)
	var stored atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Consume(ctx, Group, Families, func(context.Context, bus.Event) error {
			if broken.Load() {
				return errors.New("the audit store is full")
			}
			stored.Add(1)
			return nil
		})
	}()
	defer func() { cancel(); <-done }()
	if err := b.Publish(ctx, bus.Event{ID: "jobs-9", Type: "job.deleted", Source: "jobs", Subject: "j", Time: time.Now(), Version: 1}); err != nil {
		t.Fatal(err)
	}
	var ref string
	cptest.Eventually(t, 10*time.Second, func() error {
		resp, err := svc.ListDeadLetters(ctx, connect.NewRequest(&opsconductorv1.ListDeadLettersRequest{}))
		if err != nil {
			return err
		}
		if len(resp.Msg.GetDeadLetters()) != 1 {
			return errors.New("no dead letter yet")
		}
		d := resp.Msg.GetDeadLetters()[0]
		if d.GetEvent().GetId() != "jobs-9" || d.GetDeliveries() != 2 || d.GetLastError() != "the audit store is full" {
			t.Fatalf("dead letter: %+v", d)
		}
		ref = d.GetRef()
		return nil
	})
	if _, err := svc.ListDeadLetters(ctx, connect.NewRequest(&opsconductorv1.ListDeadLettersRequest{Group: "nobody"})); err == nil {
		t.Fatal("an unknown group was accepted")
	}
	if _, err := svc.ReplayDeadLetter(ctx, connect.NewRequest(&opsconductorv1.ReplayDeadLetterRequest{Ref: "nope"})); !isNotFound(err) {
		t.Fatalf("replay of an unknown ref: %v", err)
	}
	broken.Store(false)
	if _, err := svc.ReplayDeadLetter(ctx, connect.NewRequest(&opsconductorv1.ReplayDeadLetterRequest{Ref: ref})); err != nil {
		t.Fatal(err)
	}
	cptest.Eventually(t, 10*time.Second, func() error {
		if stored.Load() != 1 {
			return errors.New("not stored yet")
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond)
	if stored.Load() != 1 {
		t.Fatalf("the replayed event was handled %d times", stored.Load())
	}
}

func isNotFound(err error) bool {
	cerr, _ := apperr.ToConnect(err)
	return err != nil && cerr.Code() == connect.CodeNotFound
}
