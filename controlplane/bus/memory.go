package bus

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Memory is the in-process bus of the embedded single node: the same
// contract as the brokers, with nothing kept across a restart (the
// outbox the events come from is, so a restarted publisher sends again
// what was not delivered).
type Memory struct {
	opts Options
	// maxLog bounds each family's log: the oldest events are dropped
	// beyond it, as a broker's stream trimming would.
	maxLog int

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever something is deliverable
	logs    map[string]*memLog
	groups  map[string]*memGroup
	seq     int64
}

type memLog struct {
	base   int // index in the family of events[0] (after trimming)
	events []Event
}

type memGroup struct {
	cursor  map[string]int         // family -> next index to deliver
	pending map[string]*memPending // event id -> unacknowledged delivery
	replay  []Event
	dead    []DeadLetter
}

type memPending struct {
	event      Event
	deliveries int
	inFlight   bool
	retryAt    time.Time
	lastError  string
}

// NewMemory returns an in-process bus.
func NewMemory(opts Options) *Memory {
	return &Memory{opts: opts.withDefaults(), maxLog: 100000, changed: make(chan struct{}),
		logs: map[string]*memLog{}, groups: map[string]*memGroup{}}
}

// wake tells waiting consumers to look again; call with mu held.
func (m *Memory) wake() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// Publish appends the events to their families' logs.
func (m *Memory) Publish(_ context.Context, events ...Event) error {
	for _, e := range events {
		if err := e.Validate(); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range events {
		l := m.logs[e.Family()]
		if l == nil {
			l = &memLog{}
			m.logs[e.Family()] = l
		}
		l.events = append(l.events, e)
		if over := len(l.events) - m.maxLog; over > 0 {
			l.events = append([]Event(nil), l.events[over:]...)
			l.base += over
		}
	}
	m.wake()
	return nil
}

func (m *Memory) group(name string) *memGroup {
	g := m.groups[name]
	if g == nil {
		g = &memGroup{cursor: map[string]int{}, pending: map[string]*memPending{}}
		m.groups[name] = g
	}
	return g
}

// next picks the group's next delivery: a replayed event, then a
// redelivery that is due, then a new event. It returns when to look
// again if there is none (zero: on the next change).
func (m *Memory) next(g *memGroup, families []string, now time.Time) (*memPending, time.Time) {
	if len(g.replay) > 0 {
		e := g.replay[0]
		g.replay = g.replay[1:]
		p := &memPending{event: e}
		g.pending[e.ID] = p
		return p, time.Time{}
	}
	var retry time.Time
	for _, p := range g.pending {
		if p.inFlight {
			continue
		}
		if !p.retryAt.After(now) {
			return p, time.Time{}
		}
		if retry.IsZero() || p.retryAt.Before(retry) {
			retry = p.retryAt
		}
	}
	for _, f := range families {
		l := m.logs[f]
		if l == nil {
			continue
		}
		i := max(g.cursor[f], l.base)
		if i-l.base < len(l.events) {
			g.cursor[f] = i + 1
			e := l.events[i-l.base]
			p := &memPending{event: e}
			g.pending[e.ID] = p
			return p, time.Time{}
		}
	}
	return nil, retry
}

// Declare creates the group if need be; a new group starts at the oldest
// event held.
func (m *Memory) Declare(_ context.Context, group string, _ []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.group(group)
	return nil
}

// Consume delivers the families' events to h as a member of group until
// ctx ends.
func (m *Memory) Consume(ctx context.Context, group string, families []string, h Handler) error {
	for {
		m.mu.Lock()
		g := m.group(group)
		p, retry := m.next(g, families, time.Now())
		changed := m.changed
		if p != nil {
			p.inFlight = true
			p.deliveries++
		}
		m.mu.Unlock()
		if p == nil {
			if !m.wait(ctx, changed, retry) {
				return nil
			}
			continue
		}
		err := h(ctx, p.event)
		m.mu.Lock()
		p.inFlight = false
		switch {
		case err == nil:
			delete(g.pending, p.event.ID)
		case p.deliveries >= m.opts.MaxDeliveries:
			delete(g.pending, p.event.ID)
			m.seq++
			g.dead = append(g.dead, DeadLetter{Ref: fmt.Sprintf("%d", m.seq), Event: p.event, Deliveries: p.deliveries,
				LastError: err.Error(), DeadAt: time.Now().UTC()})
		default:
			p.lastError, p.retryAt = err.Error(), time.Now().Add(m.opts.RetryAfter)
		}
		m.wake()
		m.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
	}
}

// wait returns when something changed or at retry (zero: no retry is
// waiting); false when ctx ended.
func (m *Memory) wait(ctx context.Context, changed <-chan struct{}, retry time.Time) bool {
	var timer <-chan time.Time
	if !retry.IsZero() {
		t := time.NewTimer(time.Until(retry))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-changed:
	case <-timer:
	}
	return true
}

// DeadLetters lists the group's dead letters, oldest first.
func (m *Memory) DeadLetters(_ context.Context, group string) ([]DeadLetter, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := append([]DeadLetter(nil), m.group(group).dead...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].DeadAt.Before(out[j].DeadAt) })
	return out, nil
}

// Replay delivers a dead letter to its group again.
func (m *Memory) Replay(_ context.Context, group, ref string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.group(group)
	for i, d := range g.dead {
		if d.Ref == ref {
			g.dead = append(g.dead[:i], g.dead[i+1:]...)
			g.replay = append(g.replay, d.Event)
			m.wake()
			return nil
		}
	}
	return fmt.Errorf("group %s, dead letter %s: %w", group, ref, ErrNoDeadLetter)
}
