package outbox

import (
	"context"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testMigrations = fstest.MapFS{
	"postgres/0001_outbox.sql": {Data: []byte(`CREATE TABLE outbox (seq BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, aggregate_id TEXT NOT NULL,
		aggregate_seq BIGINT NOT NULL, payload TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, correlation_id TEXT NOT NULL DEFAULT '')`)},
	"sqlite/0001_outbox.sql": {Data: []byte(`CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, aggregate_id TEXT NOT NULL,
		aggregate_seq INTEGER NOT NULL, payload TEXT NOT NULL, created_at TIMESTAMP NOT NULL, correlation_id TEXT NOT NULL DEFAULT '')`)},
}

type collector struct {
	mu     sync.Mutex
	topics []string
	seqs   []int64
	got    chan struct{}
}

func newCollector() *collector { return &collector{got: make(chan struct{}, 100)} }

func (c *collector) handle(e Event) {
	c.mu.Lock()
	c.topics = append(c.topics, e.Topic)
	c.seqs = append(c.seqs, e.Seq)
	c.mu.Unlock()
	c.got <- struct{}{}
}

func (c *collector) wait(t *testing.T, n int) []string {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-c.got:
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d events, want %d", i, n)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.topics...)
}

func startRelay(t *testing.T, db *store.DB, cfg RelayConfig) *collector {
	t.Helper()
	r := NewRelay(db, zaptest.NewLogger(t), cfg)
	c := newCollector()
	r.Subscribe(c.handle)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not start")
	}
	return c
}

func appendEvent(t *testing.T, db *store.DB, topic string) {
	t.Helper()
	if err := db.InTx(context.Background(), func(tx *store.Tx) error {
		_, err := Append(context.Background(), tx, topic, "agg", 0, map[string]string{"t": topic})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func TestRelayDeliversInOrder(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			db := storetest.Open(t, d, "relaytest", testMigrations)
			appendEvent(t, db, "before-start") // not delivered: the relay starts at the end
			c := startRelay(t, db, RelayConfig{PollInterval: 20 * time.Millisecond})
			for _, topic := range []string{"a", "b", "c"} {
				appendEvent(t, db, topic)
			}
			got := c.wait(t, 3)
			if len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "c" {
				t.Fatalf("delivered %v, want [a b c]", got)
			}
		})
	}
}

// TestRelayWaitsForGap: on Postgres a transaction can take a sequence
// number and commit after a later one; the relay holds the later event
// back until the earlier commits, so subscribers see commit-safe order.
func TestRelayWaitsForGap(t *testing.T) {
	db := storetest.Open(t, store.Postgres, "relaytest", testMigrations)
	c := startRelay(t, db, RelayConfig{PollInterval: 20 * time.Millisecond, GapTimeout: time.Minute})
	ctx := context.Background()
	slowTaken := make(chan struct{})
	release := make(chan struct{})
	slowDone := make(chan error, 1)
	go func() {
		slowDone <- db.InTx(ctx, func(tx *store.Tx) error {
			if _, err := Append(ctx, tx, "slow", "agg", 0, nil); err != nil {
				return err
			}
			close(slowTaken)
			<-release
			return nil
		})
	}()
	<-slowTaken
	appendEvent(t, db, "fast") // a later sequence number, committed first
	select {
	case <-c.got:
		t.Fatal("the later event was delivered while an earlier one was uncommitted")
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
	got := c.wait(t, 2)
	if got[len(got)-2] != "slow" || got[len(got)-1] != "fast" {
		t.Fatalf("delivered %v, want ... slow fast", got)
	}
}

// TestRelaySkipsRolledBackGap: a sequence number that never commits holds
// delivery back only for the gap timeout.
func TestRelaySkipsRolledBackGap(t *testing.T) {
	db := storetest.Open(t, store.Postgres, "relaytest", testMigrations)
	c := startRelay(t, db, RelayConfig{PollInterval: 20 * time.Millisecond, GapTimeout: 200 * time.Millisecond})
	appendEvent(t, db, "first")
	c.wait(t, 1)
	ctx := context.Background()
	_ = db.InTx(ctx, func(tx *store.Tx) error {
		_, _ = Append(ctx, tx, "rolled-back", "agg", 0, nil)
		return context.Canceled // roll back
	})
	appendEvent(t, db, "after")
	got := c.wait(t, 1)
	if got[len(got)-1] != "after" {
		t.Fatalf("delivered %v", got)
	}
}
