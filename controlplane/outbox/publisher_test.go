package outbox

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/bus/bustest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// flakyBus refuses the first fail publishes (the broker down), then
// passes them on.
type flakyBus struct {
	bus.Bus
	mu   sync.Mutex
	fail int
}

func (f *flakyBus) Publish(ctx context.Context, events ...bus.Event) error {
	f.mu.Lock()
	if f.fail > 0 {
		f.fail--
		f.mu.Unlock()
		return errors.New("broker down")
	}
	f.mu.Unlock()
	return f.Bus.Publish(ctx, events...)
}

func runPublisher(t *testing.T, db *store.DB, b bus.Bus) (stop func()) {
	t.Helper()
	p := NewPublisher(db, b, "tests", zaptest.NewLogger(t), RelayConfig{PollInterval: 20 * time.Millisecond, GapTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func TestPublisher(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			db := storetest.Open(t, d, "outbox_pub", testMigrations)
			mem := bus.NewMemory(bus.Options{})
			if err := mem.Declare(ctx, "audit", []string{"job"}); err != nil {
				t.Fatal(err)
			}
			tally := bustest.NewTally()
			cctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = mem.Consume(cctx, "audit", []string{"job"}, func(_ context.Context, e bus.Event) error { tally.Add(e.ID); return nil })
			}()
			defer func() { cancel(); <-done }()

			// Written before any publisher ran: a first start publishes
			// them; the broker refuses the first tries.
			for range 3 {
				appendEvent(t, db, "job.created")
			}
			stop := runPublisher(t, db, &flakyBus{Bus: mem, fail: 3})
			tally.WaitFor(t, 3, 10*time.Second)
			// A rolled-back transaction leaves a gap in the sequence: what
			// follows is held back for the gap timeout, then published.
			if err := db.InTx(ctx, func(tx *store.Tx) error {
				if _, err := Append(ctx, tx, "job.updated", "agg", 0, nil); err != nil {
					return err
				}
				return errors.New("roll back")
			}); err == nil {
				t.Fatal("the transaction did not roll back")
			}
			appendEvent(t, db, "job.deleted")
			tally.WaitFor(t, 4, 10*time.Second)
			stop()

			// A new publisher (another replica, or a restart) goes on from
			// the stored position: nothing published twice.
			appendEvent(t, db, "job.created")
			runPublisher(t, db, mem)
			tally.WaitFor(t, 5, 10*time.Second)
			time.Sleep(200 * time.Millisecond)
			if dups := tally.Duplicates(); len(dups) > 0 {
				t.Fatalf("published twice: %v", dups)
			}
			written, err := ListAfter(ctx, db, 0, 100)
			if err != nil || len(written) != 5 {
				t.Fatalf("outbox holds %d events (%v), want 5", len(written), err)
			}
			for _, e := range written {
				if n := tally.Count(EventID("tests", e.Seq)); n != 1 {
					t.Fatalf("event %d published %d times, want once", e.Seq, n)
				}
			}
		})
	}
}
