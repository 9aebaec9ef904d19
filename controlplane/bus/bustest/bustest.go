// Package bustest is the contract every bus.Bus passes: the same tests
// run against the in-process bus and each broker, on the real broker.
package bustest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/bus"
)

// Groups are the consumer groups the contract uses (for a broker whose
// test removes them afterwards).
var Groups = []string{"all", "exec", "workers", "flaky", "audit", "g"}

// Open returns a fresh bus (its own streams, queues and groups) with the
// options; it is closed when the test ends.
type Open func(t *testing.T, opts bus.Options) bus.Bus

// Run runs the contract against the buses open makes.
func Run(t *testing.T, open Open) {
	t.Run("EveryGroupGetsItsFamiliesOnce", func(t *testing.T) { everyGroupOnce(t, open) })
	t.Run("CompetingConsumersShareAGroup", func(t *testing.T) { competing(t, open) })
	t.Run("FailedDeliveryIsRetried", func(t *testing.T) { retried(t, open) })
	t.Run("DeadLetterAndReplay", func(t *testing.T) { deadLetter(t, open) })
	t.Run("UnacknowledgedGoesToAnotherConsumer", func(t *testing.T) { unacknowledged(t, open) })
}

// Events makes n events of a family with ids prefix-0..n-1.
func Events(family, prefix string, n int) []bus.Event {
	out := make([]bus.Event, n)
	for i := range out {
		out[i] = bus.Event{ID: fmt.Sprintf("%s-%d", prefix, i), Type: family + ".happened", Source: "bustest", Subject: "s",
			Time: time.Now().UTC(), Version: 1, Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
	}
	return out
}

// Tally counts handled events by id.
type Tally struct {
	mu    sync.Mutex
	seen  map[string]int
	order []string
	more  chan struct{}
}

// NewTally returns an empty tally.
func NewTally() *Tally { return &Tally{seen: map[string]int{}, more: make(chan struct{}, 1)} }

// Add counts an event.
func (c *Tally) Add(id string) {
	c.mu.Lock()
	c.seen[id]++
	c.order = append(c.order, id)
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

// WaitFor waits until n distinct events were counted, failing the test
// after the timeout.
func (c *Tally) WaitFor(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		c.mu.Lock()
		got := len(c.seen)
		c.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-c.more:
		case <-deadline:
			t.Fatalf("%d of %d events handled after %s", got, n, timeout)
		}
	}
}

// Count is how many times id was handled.
func (c *Tally) Count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id]
}

// Duplicates lists the ids handled more than once.
func (c *Tally) Duplicates() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for id, n := range c.seen {
		if n > 1 {
			out = append(out, id)
		}
	}
	return out
}

// consume declares the group and runs a consumer until the test ends.
func consume(t *testing.T, b bus.Bus, group string, families []string, h bus.Handler) context.CancelFunc {
	t.Helper()
	if err := b.Declare(context.Background(), group, families); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Consume(ctx, group, families, h) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consumer of %s: %v", group, err)
		}
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(stop) })
	return func() { once.Do(stop) }
}

func publish(t *testing.T, b bus.Bus, events []bus.Event) {
	t.Helper()
	if err := b.Publish(context.Background(), events...); err != nil {
		t.Fatal(err)
	}
}

func everyGroupOnce(t *testing.T, open Open) {
	b := open(t, bus.Options{RetryAfter: time.Second})
	jobs, execs := Events("job", "j", 50), Events("execution", "e", 50)
	// Published after the groups are declared, before any consumer runs.
	for group, families := range map[string][]string{"all": {"job", "execution"}, "exec": {"execution"}} {
		if err := b.Declare(context.Background(), group, families); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, b, jobs[:20])
	all, onlyExec := NewTally(), NewTally()
	consume(t, b, "all", []string{"job", "execution"}, func(_ context.Context, e bus.Event) error { all.Add(e.ID); return nil })
	consume(t, b, "exec", []string{"execution"}, func(_ context.Context, e bus.Event) error {
		if e.Family() != "execution" {
			t.Errorf("group exec got %s", e.Type)
		}
		onlyExec.Add(e.ID)
		return nil
	})
	publish(t, b, jobs[20:])
	publish(t, b, execs)
	all.WaitFor(t, 100, 20*time.Second)
	onlyExec.WaitFor(t, 50, 20*time.Second)
	// Let a late duplicate show itself.
	time.Sleep(300 * time.Millisecond)
	if d := append(all.Duplicates(), onlyExec.Duplicates()...); len(d) > 0 {
		t.Fatalf("delivered more than once: %v", d)
	}
	// Within a family, in the order published.
	all.mu.Lock()
	defer all.mu.Unlock()
	last := -1
	for _, id := range all.order {
		var n int
		if _, err := fmt.Sscanf(id, "j-%d", &n); err == nil {
			if n <= last {
				t.Fatalf("job events out of order: %v", all.order)
			}
			last = n
		}
	}
}

func competing(t *testing.T, open Open) {
	b := open(t, bus.Options{RetryAfter: time.Second})
	shared := NewTally()
	var mu sync.Mutex
	by := map[int]int{}
	for c := range 2 {
		consume(t, b, "workers", []string{"task"}, func(_ context.Context, e bus.Event) error {
			mu.Lock()
			by[c]++
			mu.Unlock()
			shared.Add(e.ID)
			return nil
		})
	}
	publish(t, b, Events("task", "t", 200))
	shared.WaitFor(t, 200, 20*time.Second)
	time.Sleep(300 * time.Millisecond)
	if d := shared.Duplicates(); len(d) > 0 {
		t.Fatalf("one group, two consumers: delivered more than once: %v", d)
	}
}

func retried(t *testing.T, open Open) {
	b := open(t, bus.Options{RetryAfter: 200 * time.Millisecond, MaxDeliveries: 5})
	var mu sync.Mutex
	attempts := map[string]int{}
	ok := NewTally()
	consume(t, b, "flaky", []string{"job"}, func(_ context.Context, e bus.Event) error {
		mu.Lock()
		attempts[e.ID]++
		n := attempts[e.ID]
		mu.Unlock()
		if e.ID == "j-3" && n < 3 {
			return errors.New("not yet")
		}
		ok.Add(e.ID)
		return nil
	})
	publish(t, b, Events("job", "j", 10))
	ok.WaitFor(t, 10, 20*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if attempts["j-3"] != 3 || ok.Count("j-3") != 1 {
		t.Fatalf("j-3: %d deliveries, handled %d times; want 3 and 1", attempts["j-3"], ok.Count("j-3"))
	}
	if attempts["j-4"] != 1 {
		t.Fatalf("j-4 delivered %d times, want 1", attempts["j-4"])
	}
}

func deadLetter(t *testing.T, open Open) {
	ctx := context.Background()
	b := open(t, bus.Options{RetryAfter: 100 * time.Millisecond, MaxDeliveries: 3})
	var mu sync.Mutex
	broken := true
	deliveries := 0
	ok := NewTally()
	consume(t, b, "audit", []string{"job"}, func(_ context.Context, e bus.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if e.ID == "j-1" {
			deliveries++
			if broken {
				return errors.New("cannot store it")
			}
		}
		ok.Add(e.ID)
		return nil
	})
	publish(t, b, Events("job", "j", 3))
	var dead []bus.DeadLetter
	deadline := time.Now().Add(20 * time.Second)
	for len(dead) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the failing event never reached the dead letters")
		}
		time.Sleep(50 * time.Millisecond)
		var err error
		if dead, err = b.DeadLetters(ctx, "audit"); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	got := deliveries
	broken = false
	mu.Unlock()
	d := dead[0]
	if len(dead) != 1 || d.Event.ID != "j-1" || d.Deliveries != 3 || got != 3 || d.LastError != "cannot store it" || string(d.Event.Payload) != `{"n":1}` {
		t.Fatalf("dead letters %+v after %d deliveries; want j-1 alone, after 3, with its error and payload", dead, got)
	}
	if err := b.Replay(ctx, "audit", "no-such-ref"); !errors.Is(err, bus.ErrNoDeadLetter) {
		t.Fatalf("replay of an unknown ref: %v", err)
	}
	if err := b.Replay(ctx, "audit", d.Ref); err != nil {
		t.Fatal(err)
	}
	ok.WaitFor(t, 3, 20*time.Second)
	time.Sleep(300 * time.Millisecond)
	if n := ok.Count("j-1"); n != 1 {
		t.Fatalf("replayed event handled %d times, want 1", n)
	}
	if left, err := b.DeadLetters(ctx, "audit"); err != nil || len(left) != 0 {
		t.Fatalf("dead letters after replay: %+v (%v)", left, err)
	}
	if err := b.Replay(ctx, "audit", d.Ref); !errors.Is(err, bus.ErrNoDeadLetter) {
		t.Fatalf("a second replay of the same ref: %v, want ErrNoDeadLetter", err)
	}
}

func unacknowledged(t *testing.T, open Open) {
	b := open(t, bus.Options{RetryAfter: 300 * time.Millisecond, MaxDeliveries: 5})
	got := make(chan string, 1)
	// The first consumer takes the event and stops before acknowledging
	// it, as a crashed one would.
	stop := consume(t, b, "g", []string{"agent"}, func(ctx context.Context, e bus.Event) error {
		got <- e.ID
		<-ctx.Done()
		return ctx.Err()
	})
	publish(t, b, Events("agent", "a", 1))
	select {
	case <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("the first consumer got nothing")
	}
	stop()
	second := NewTally()
	consume(t, b, "g", []string{"agent"}, func(_ context.Context, e bus.Event) error { second.Add(e.ID); return nil })
	second.WaitFor(t, 1, 20*time.Second)
	if second.Count("a-0") != 1 {
		t.Fatal("the unacknowledged event did not reach the other consumer")
	}
}
