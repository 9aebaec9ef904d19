// Command river is the River (riverqueue/river) baseline of the
// benchmark harness (bench/cmd/bench, docs/benchmarks.md): no-op jobs on
// a PostgreSQL database, with the fetch tuning River's own `river bench`
// uses (FetchCooldown 2 ms, FetchPollInterval 20 ms). It is a module of
// its own so that the main module does not depend on River.
//
// It runs River's migrations on the database it is given (use an empty
// one: the harness makes a fresh database for each run), then measures
// one of:
//
//	-mode throughput -jobs N -workers W
//	    N no-op jobs inserted beforehand (InsertMany), then the client
//	    started; jobs/s from the start to the last completion (counted,
//	    as `river bench` does, from the completion events, which come
//	    once the completer has recorded the job completed)
//	-mode latency -rate R -count C -workers W
//	    C jobs inserted one at a time at a steady R a second (each insert
//	    on its own goroutine, so a slow commit does not hold the next), each
//	    carrying the time its insert was called; insert-to-Work latency
//	    p50, p99 and max
//
// and prints one JSON object on standard output.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// noopArgs is a job that does nothing; At is when its insert was called
// (latency mode).
type noopArgs struct {
	At time.Time `json:"at,omitzero"`
}

func (noopArgs) Kind() string { return "bench_noop" }

// noopWorker works a job by noting when it started, if asked to.
type noopWorker struct {
	river.WorkerDefaults[noopArgs]
	started func(j *river.Job[noopArgs])
}

func (w *noopWorker) Work(_ context.Context, j *river.Job[noopArgs]) error {
	if w.started != nil {
		w.started(j)
	}
	return nil
}

// throughputResult is what -mode throughput prints.
type throughputResult struct {
	Mode          string  `json:"mode"`
	Jobs          int     `json:"jobs"`
	Workers       int     `json:"workers"`
	Tuned         bool    `json:"tuned"`
	InsertSeconds float64 `json:"insertSeconds"`
	Seconds       float64 `json:"seconds"`
	JobsPerSecond float64 `json:"jobsPerSecond"`
}

// latencyResult is what -mode latency prints (milliseconds).
type latencyResult struct {
	Mode     string  `json:"mode"`
	Rate     int     `json:"rate"`
	Count    int     `json:"count"`
	Workers  int     `json:"workers"`
	Tuned    bool    `json:"tuned"`
	Received int     `json:"received"`
	P50      float64 `json:"p50Ms"`
	P99      float64 `json:"p99Ms"`
	Max      float64 `json:"maxMs"`
	// How long an Insert call took (the commit included), and the rate
	// the inserts were really started at.
	InsertP50  float64 `json:"insertP50Ms"`
	InsertP99  float64 `json:"insertP99Ms"`
	InsertRate float64 `json:"insertRate"`
}

func main() {
	dbURL := flag.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL URL of an empty database (default $DATABASE_URL)")
	mode := flag.String("mode", "throughput", "throughput or latency")
	jobs := flag.Int("jobs", 10000, "throughput: jobs inserted beforehand")
	workers := flag.Int("workers", 100, "the queue's MaxWorkers")
	rate := flag.Int("rate", 2000, "latency: inserts a second")
	count := flag.Int("count", 2000, "latency: jobs inserted")
	defaults := flag.Bool("defaults", false, "River's default fetch settings (FetchCooldown 100 ms, FetchPollInterval 1 s) instead of the tuned ones")
	maxConns := flag.Int("max-conns", 20, "the pgx pool's size (the control plane's default too)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	if *dbURL == "" {
		fmt.Fprintln(os.Stderr, "river: -database-url (or DATABASE_URL) is required")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var out any
	var err error
	switch *mode {
	case "throughput":
		out, err = throughput(ctx, *dbURL, *maxConns, *jobs, *workers, !*defaults)
	case "latency":
		out, err = latency(ctx, *dbURL, *maxConns, *rate, *count, *workers, !*defaults)
	default:
		err = fmt.Errorf("-mode must be throughput or latency, not %q", *mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "river: %v\n", err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

// open connects a pool of maxConns to dbURL and runs River's migrations.
func open(ctx context.Context, dbURL string, maxConns int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("parse the database url: %w", err)
	}
	cfg.MaxConns = int32(maxConns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: quiet()})
	if err != nil {
		pool.Close()
		return nil, err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		pool.Close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	return pool, nil
}

// quiet is River's logger: warnings and errors only, on standard error.
func quiet() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// newClient is a River client on pool with workers no-op workers; tuned
// sets the fetch settings of `river bench`.
func newClient(pool *pgxpool.Pool, w *noopWorker, workers int, tuned bool) (*river.Client[pgx.Tx], error) {
	ws := river.NewWorkers()
	river.AddWorker(ws, w)
	cfg := &river.Config{
		Logger:  quiet(),
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: workers}},
		Workers: ws,
	}
	if tuned {
		cfg.FetchCooldown, cfg.FetchPollInterval = 2*time.Millisecond, 20*time.Millisecond
	}
	return river.NewClient(riverpgxv5.New(pool), cfg)
}

func throughput(ctx context.Context, dbURL string, maxConns, jobs, workers int, tuned bool) (*throughputResult, error) {
	pool, err := open(ctx, dbURL, maxConns)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	client, err := newClient(pool, &noopWorker{}, workers, tuned)
	if err != nil {
		return nil, err
	}
	events, unsubscribe := client.SubscribeConfig(&river.SubscribeConfig{
		ChanSize: max(jobs, 1000), // none dropped: the count decides the end
		Kinds:    []river.EventKind{river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobCancelled},
	})
	defer unsubscribe()

	insertStart := time.Now()
	const batch = 5000
	for done := 0; done < jobs; {
		n := min(batch, jobs-done)
		params := make([]river.InsertManyParams, n)
		for i := range params {
			params[i].Args = noopArgs{}
		}
		if _, err := client.InsertMany(ctx, params); err != nil {
			return nil, fmt.Errorf("insert jobs: %w", err)
		}
		done += n
	}
	inserted := time.Since(insertStart)

	start := time.Now()
	if err := client.Start(ctx); err != nil {
		return nil, fmt.Errorf("start the client: %w", err)
	}
	defer stop(client)
	var last time.Time
	for n := 0; n < jobs; n++ {
		select {
		case e := <-events:
			if e == nil {
				return nil, errors.New("the event channel closed early")
			}
			if e.Kind != river.EventKindJobCompleted {
				return nil, fmt.Errorf("job %d ended %s", e.Job.ID, e.Kind)
			}
			last = time.Now()
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d jobs completed: %w", n, jobs, ctx.Err())
		}
	}
	elapsed := last.Sub(start)
	return &throughputResult{Mode: "throughput", Jobs: jobs, Workers: workers, Tuned: tuned, InsertSeconds: inserted.Seconds(),
		Seconds: elapsed.Seconds(), JobsPerSecond: float64(jobs) / elapsed.Seconds()}, nil
}

func latency(ctx context.Context, dbURL string, maxConns, rate, count, workers int, tuned bool) (*latencyResult, error) {
	if rate <= 0 || count <= 0 {
		return nil, errors.New("-rate and -count must be positive")
	}
	pool, err := open(ctx, dbURL, maxConns)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	var (
		mu        sync.Mutex
		lat       []time.Duration
		received  atomic.Int64
		measuring atomic.Bool
	)
	w := &noopWorker{started: func(j *river.Job[noopArgs]) {
		d := time.Since(j.Args.At)
		if measuring.Load() {
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
		}
		received.Add(1)
	}}
	client, err := newClient(pool, w, workers, tuned)
	if err != nil {
		return nil, err
	}
	if err := client.Start(ctx); err != nil {
		return nil, fmt.Errorf("start the client: %w", err)
	}
	defer stop(client)

	// Warm up: as many inserts at once as the pool has connections, a few
	// times, so first-use costs (connections, prepared statements, the
	// first fetch) are not measured.
	const rounds = 5
	for range rounds {
		var wg sync.WaitGroup
		errs := make(chan error, maxConns)
		for range maxConns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := client.Insert(ctx, noopArgs{At: time.Now()}, nil); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return nil, fmt.Errorf("insert: %w", err)
		}
	}
	if err := waitCount(ctx, &received, rounds*int64(maxConns)); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	time.Sleep(time.Second)
	received.Store(0)
	measuring.Store(true)

	// Open loop: insert i is due at start + i/rate, whatever the inserts
	// before it are doing.
	var (
		wg       sync.WaitGroup
		errMu    sync.Mutex
		firstErr error
		inserts  []time.Duration
	)
	period := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; i < count; i++ {
		if d := time.Until(start.Add(time.Duration(i) * period)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			_, err := client.Insert(ctx, noopArgs{At: t0}, nil)
			d := time.Since(t0)
			errMu.Lock()
			defer errMu.Unlock()
			firstErr = cmp.Or(firstErr, err)
			inserts = append(inserts, d)
		}()
	}
	issued := time.Since(start)
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("insert: %w", firstErr)
	}
	waitErr := waitCount(ctx, &received, int64(count))
	mu.Lock()
	defer mu.Unlock()
	if len(lat) == 0 {
		return nil, fmt.Errorf("no job was worked: %w", waitErr)
	}
	slices.Sort(lat)
	slices.Sort(inserts)
	return &latencyResult{Mode: "latency", Rate: rate, Count: count, Workers: workers, Tuned: tuned, Received: len(lat),
		P50: pct(lat, 0.50), P99: pct(lat, 0.99), Max: ms(lat[len(lat)-1]),
		InsertP50: pct(inserts, 0.50), InsertP99: pct(inserts, 0.99), InsertRate: float64(count) / issued.Seconds()}, nil
}

// waitCount waits until n jobs were worked, or 30 s.
func waitCount(ctx context.Context, worked *atomic.Int64, n int64) error {
	deadline := time.Now().Add(30 * time.Second)
	for worked.Load() < n {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%d of %d jobs worked", worked.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// stop stops the client, giving running jobs 10 s.
func stop(client *river.Client[pgx.Tx]) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = client.Stop(ctx)
}

// pct is the p-th percentile of sorted (nearest rank below), in ms.
func pct(sorted []time.Duration, p float64) float64 { return ms(sorted[int(p*float64(len(sorted)-1))]) }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
