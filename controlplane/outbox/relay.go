package outbox

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/store"
)

// RelayConfig tunes a Relay. Zero values take defaults.
type RelayConfig struct {
	// PollInterval is how often the outbox is read without a Nudge
	// (default 500ms). Events written by other replicas arrive this way.
	PollInterval time.Duration
	// GapTimeout is how long a missing sequence number may hold back the
	// events after it (default 5s). Postgres hands out sequence numbers
	// before commit, so a later number can commit first; a number that
	// stays missing belongs to a rolled-back transaction.
	GapTimeout time.Duration
	// Batch is how many events one read takes (default 500).
	Batch int
}

func (cfg RelayConfig) withDefaults() RelayConfig {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 500 * time.Millisecond
	}
	if cfg.GapTimeout <= 0 {
		cfg.GapTimeout = 5 * time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	return cfg
}

// Handler receives events in sequence order. It runs on the relay's
// goroutine: it must be quick and must not block (hand work off instead).
type Handler func(Event)

// Relay reads one service's outbox in sequence order and hands each
// committed event to every subscriber, in order, once per relay. It starts
// at the end of the outbox: subscribers see events committed after Run
// began. Every replica runs its own relay over the shared table.
type Relay struct {
	db     *store.DB
	cfg    RelayConfig
	logger *zap.Logger
	nudge  chan struct{}
	ready  chan struct{}

	mu       sync.Mutex
	handlers []Handler
}

// DB is the database whose outbox the relay reads.
func (r *Relay) DB() *store.DB { return r.db }

// NewRelay builds a relay over db's outbox table.
func NewRelay(db *store.DB, logger *zap.Logger, cfg RelayConfig) *Relay {
	cfg = cfg.withDefaults()
	return &Relay{db: db, cfg: cfg, logger: logger.Named("outbox").With(zap.String("schema", db.Schema())), nudge: make(chan struct{}, 1), ready: make(chan struct{})}
}

// Subscribe adds a handler. Call it before Run.
func (r *Relay) Subscribe(h Handler) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.handlers = append(r.handlers, h)
}

// Nudge makes the relay read the outbox now; call it after a commit that
// wrote events. It never blocks.
func (r *Relay) Nudge() {
	select {
	case r.nudge <- struct{}{}:
	default:
	}
}

// Ready is closed once Run has taken its start position: events committed
// after that reach the subscribers.
func (r *Relay) Ready() <-chan struct{} { return r.ready }

// Run relays events until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	cursor, err := MaxSeq(ctx, r.db)
	for err != nil {
		if ctx.Err() != nil {
			return nil
		}
		r.logger.Warn("read outbox position; retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.cfg.PollInterval):
		}
		cursor, err = MaxSeq(ctx, r.db)
	}
	close(r.ready)
	var gapSince time.Time // when the event after cursor was first found missing
	tick := time.NewTicker(r.cfg.PollInterval)
	defer tick.Stop()
	for {
		cursor, gapSince = r.deliver(ctx, cursor, gapSince)
		select {
		case <-ctx.Done():
			return nil
		case <-r.nudge:
		case <-tick.C:
		}
	}
}

// deliver hands out every event it can after cursor and returns the new
// cursor and gap state.
func (r *Relay) deliver(ctx context.Context, cursor int64, gapSince time.Time) (int64, time.Time) {
	for {
		events, err := ListAfter(ctx, r.db, cursor, r.cfg.Batch)
		if err != nil {
			if ctx.Err() == nil {
				r.logger.Warn("read outbox", zap.Error(err))
			}
			return cursor, gapSince
		}
		if len(events) == 0 {
			return cursor, time.Time{}
		}
		r.mu.Lock()
		handlers := r.handlers
		r.mu.Unlock()
		for _, e := range events {
			if e.Seq != cursor+1 {
				if gapSince.IsZero() {
					gapSince = time.Now()
				}
				if time.Since(gapSince) < r.cfg.GapTimeout {
					return cursor, gapSince // wait for the missing ones to commit
				}
				r.logger.Debug("outbox gap skipped (rolled-back transaction)", zap.Int64("after", cursor), zap.Int64("next", e.Seq))
			}
			gapSince = time.Time{}
			for _, h := range handlers {
				h(e)
			}
			cursor = e.Seq
		}
		if len(events) < r.cfg.Batch {
			return cursor, gapSince
		}
	}
}
