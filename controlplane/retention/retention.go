// Package retention deletes what is older than the configured retention:
// finished executions with their output and events, the audit service's
// events, and outbox rows already published. It runs on one replica at a
// time (an advisory lock), in small batches with a pause between them,
// so that it never holds the database for long or blocks the API.
package retention

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Config says what to keep. A zero retention keeps everything of that
// kind.
type Config struct {
	// Executions: finished executions (with tasks, results, output and
	// their events) older than this are deleted.
	Executions time.Duration
	// Events: the audit service's events older than this.
	Events time.Duration
	// Outbox: published outbox rows older than this (the executions'
	// outbox goes with its executions instead: it is their history).
	Outbox time.Duration
	// Interval between runs (default 1h); Batch rows per transaction
	// (default 500); Pause between batches (default 50ms).
	Interval time.Duration
	Batch    int
	// LockName names the advisory lock runs take (default
	// opsconductor.retention): processes with different targets on one
	// database (split mode) each use their own.
	LockName string
	Pause    time.Duration
}

// Target is one kind of thing to purge: Purge deletes up to batch items
// older than before and says how many.
type Target struct {
	Name  string
	Keep  time.Duration
	Purge func(ctx context.Context, before time.Time, batch int) (int, error)
}

// Purger runs the targets.
type Purger struct {
	db      *store.DB // for the lock
	targets []Target
	cfg     Config
	logger  *zap.Logger
	deleted *prometheus.CounterVec
	now     func() time.Time
}

// New builds a purger; db holds its advisory lock; reg may be nil.
func New(db *store.DB, targets []Target, cfg Config, reg prometheus.Registerer, logger *zap.Logger) *Purger {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Hour
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.Pause <= 0 {
		cfg.Pause = 50 * time.Millisecond
	}
	p := &Purger{db: db, targets: targets, cfg: cfg, logger: logger.Named("retention"), now: time.Now,
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsconductor_retention_deleted_total",
			Help: "Rows deleted by the retention policy, by kind."}, []string{"what"})}
	if reg != nil {
		reg.MustRegister(p.deleted)
	}
	return p
}

// Run purges every Interval until ctx ends.
func (p *Purger) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		if err := p.Once(ctx); err != nil && ctx.Err() == nil {
			p.logger.Warn("retention run", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Once runs every target to the end if this replica holds the lock
// (another one purging meanwhile is fine: it is skipped).
func (p *Purger) Once(ctx context.Context) error {
	name := p.cfg.LockName
	if name == "" {
		name = "opsconductor.retention"
	}
	lock, ok, err := p.db.TryLock(ctx, name)
	if err != nil || !ok {
		return err
	}
	defer lock.Release()
	// A target that fails does not keep the others from their turn.
	var errs []error
	for _, t := range p.targets {
		if t.Keep <= 0 {
			continue
		}
		before := p.now().Add(-t.Keep)
		total := 0
		for {
			n, err := t.Purge(ctx, before, p.cfg.Batch)
			total += n
			p.deleted.WithLabelValues(t.Name).Add(float64(n))
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", t.Name, err))
				break
			}
			if n < p.cfg.Batch {
				break
			}
			select {
			case <-ctx.Done():
				return errors.Join(errs...)
			case <-time.After(p.cfg.Pause):
			}
		}
		if total > 0 {
			p.logger.Info("retention: deleted", zap.String("what", t.Name), zap.Int("rows", total), zap.Time("older_than", before))
		}
	}
	return errors.Join(errs...)
}
