package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/robfig/cron/v3"
	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/schedule"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// adminURL is the Postgres the benchmarks make their databases in.
func adminURL() string {
	if u := os.Getenv("OPSCONDUCTOR_BENCH_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// freshDatabase makes an empty database and returns its URL and a func
// that drops it.
func freshDatabase(ctx context.Context) (string, func(), error) {
	admin, err := pgx.Connect(ctx, adminURL())
	if err != nil {
		return "", nil, fmt.Errorf("connect to postgres: %w", err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "oc_bench_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, err
	}
	u, _ := url.Parse(adminURL())
	u.Path = "/" + name
	drop := func() {
		ctx := context.Background()
		if a, err := pgx.Connect(ctx, adminURL()); err == nil {
			_, _ = a.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			a.Close(ctx)
		}
	}
	return u.String(), drop, nil
}

// recorder is the Firer of the benchmark: it notes when each slot fired,
// so the figure is the scheduler's own cost (finding due schedules,
// claiming, recording, advancing), not an execution's.
type recorder struct {
	mu    sync.Mutex
	fires map[string][]time.Time // "schedule/slot" -> when fired
}

func (r *recorder) FireSchedule(_ context.Context, run schedule.Run) (string, error) {
	now := time.Now()
	key := run.ScheduleID + "/" + run.Slot.Format(time.RFC3339)
	r.mu.Lock()
	r.fires[key] = append(r.fires[key], now)
	r.mu.Unlock()
	return key, nil
}
func (r *recorder) ScheduleRunning(context.Context, string) (bool, error) { return false, nil }
func (r *recorder) JobLabels(context.Context, string) (map[string]string, error) {
	return map[string]string{}, nil
}
func (r *recorder) FiredExecution(context.Context, schedule.Run) (string, error) { return "", nil }

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// runB6: N cron schedules due in the same second plus M every-second
// schedules, on Postgres, through the real scheduler (leader lock, claims,
// records, advances); lateness of the shared second's fires, missed and
// duplicate fires; then robfig/cron firing N entries in-process as the
// floor.
func runB6(ctx context.Context, size string) ([]Row, error) {
	nSame, nEvery, lead, settle := 10000, 100, 60*time.Second, 15*time.Second
	if size == "tiny" {
		nSame, nEvery, lead, settle = 50, 5, 4*time.Second, 3*time.Second
	}
	dbURL, drop, err := freshDatabase(ctx)
	if err != nil {
		return nil, err
	}
	defer drop()
	db, err := store.Open(ctx, dbURL, schedule.Schema, store.Options{})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	if err := db.Migrate(ctx, schedule.Migrations()); err != nil {
		return nil, err
	}
	st := schedule.NewStore(db)
	target := time.Now().Add(lead).Truncate(time.Second)
	same := fmt.Sprintf("%d %d %d %d %d *", target.Second(), target.Minute(), target.Hour(), target.Day(), int(target.Month()))
	create := func(i int, expr string) error {
		sc := &opsconductorv1.Schedule{JobId: "bench-job", Kind: schedule.KindCron, Cron: expr, OverlapPolicy: schedule.OverlapAllow}
		spec, vs := schedule.SpecOf("schedule", sc)
		if len(vs) > 0 {
			return fmt.Errorf("%s: %s", vs[0].Field, vs[0].Description)
		}
		next, _ := spec.Next(time.Now())
		def := []byte(`{"jobId":"bench-job","kind":"cron","cron":"` + expr + `","overlapPolicy":"allow"}`)
		now := time.Now().UTC()
		return st.Create(ctx, schedule.Record{ID: fmt.Sprintf("b6-%05d", i), JobID: "bench-job", Definition: def, State: schedule.StateActive,
			NextFireAt: &next, RunAs: []byte(`[]`), CreatedBy: "bench", CreatedAt: now, UpdatedAt: now})
	}
	for i := range nSame {
		if err := create(i, same); err != nil {
			return nil, err
		}
	}
	for i := range nEvery {
		if err := create(nSame+i, "* * * * * *"); err != nil {
			return nil, err
		}
	}
	if time.Now().After(target.Add(-time.Second)) {
		return nil, fmt.Errorf("creating %d schedules took past the target second; raise the lead", nSame+nEvery)
	}
	rec := &recorder{fires: map[string][]time.Time{}}
	sched := schedule.NewScheduler(db, st, rec, nil, zap.NewNop(), schedule.SchedulerConfig{})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = sched.Run(runCtx); close(done) }()
	defer func() { stop(); <-done }()
	time.Sleep(time.Until(target.Add(settle)))
	stop()
	<-done

	var late []time.Duration
	dups, fired := 0, 0
	var everyLate []time.Duration
	rec.mu.Lock()
	for key, times := range rec.fires {
		dups += len(times) - 1
		id, slot, _ := strings.Cut(key, "/")
		at, _ := time.Parse(time.RFC3339, slot)
		d := times[0].Sub(at)
		if id < fmt.Sprintf("b6-%05d", nSame) {
			fired++
			late = append(late, d)
		} else if !at.Before(target) && !at.After(target.Add(settle-2*time.Second)) {
			everyLate = append(everyLate, d)
		}
	}
	rec.mu.Unlock()
	slices.Sort(late)
	slices.Sort(everyLate)
	var missedRows int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schedule_executions WHERE outcome = 'missed'`).Scan(&missedRows); err != nil {
		return nil, err
	}
	c := fmt.Sprintf("%d due in one second + %d every second", nSame, nEvery)
	rows := []Row{
		{"b6", c, "fired (of the shared second)", float64(fired), "", fmt.Sprintf("of %d", nSame)},
		{"b6", c, "lateness p50", ms(percentile(late, 0.5)), "ms", "fired_at - scheduled_for"},
		{"b6", c, "lateness p99", ms(percentile(late, 0.99)), "ms", "target ≤ 100 ms"},
		{"b6", c, "lateness max", ms(percentile(late, 1)), "ms", ""},
		{"b6", c, "every-second lateness p99", ms(percentile(everyLate, 0.99)), "ms", fmt.Sprintf("%d fires around the burst", len(everyLate))},
		{"b6", c, "missed", float64(missedRows + nSame - fired), "", "target 0"},
		{"b6", c, "duplicates", float64(dups), "", "target 0"},
	}

	// Downtime: the scheduler stops, the every-second schedules keep
	// coming due, and a new scheduler (another replica, say) starts. By
	// the misfire rules, every slot of the gap but each schedule's latest
	// is recorded missed, the latest (within the grace) runs at once, and
	// firing resumes on time.
	downtime := 3 * time.Minute
	if size == "tiny" {
		downtime = 3 * time.Second
	}
	time.Sleep(downtime)
	restart := time.Now()
	runCtx, stop = context.WithCancel(ctx)
	done = make(chan struct{})
	rec.mu.Lock()
	rec.fires = map[string][]time.Time{}
	rec.mu.Unlock()
	sched = schedule.NewScheduler(db, st, rec, nil, zap.NewNop(), schedule.SchedulerConfig{})
	go func() { _ = sched.Run(runCtx); close(done) }()
	time.Sleep(5 * time.Second)
	stop()
	<-done
	var gapMissed, afterFired int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schedule_executions WHERE outcome = 'missed' AND scheduled_for > $1 AND scheduled_for < $2`,
		target.Add(settle), restart).Scan(&gapMissed); err != nil {
		return nil, err
	}
	var resumed []time.Duration
	rec.mu.Lock()
	for key, times := range rec.fires {
		_, slot, _ := strings.Cut(key, "/")
		at, _ := time.Parse(time.RFC3339, slot)
		if at.Before(restart) {
			afterFired++ // the latest slot of the gap, within the grace
			continue
		}
		resumed = append(resumed, times[0].Sub(at))
	}
	rec.mu.Unlock()
	slices.Sort(resumed)
	dc := fmt.Sprintf("%d every-second schedules, scheduler down %s", nEvery, downtime)
	rows = append(rows,
		Row{"b6", dc, "slots of the gap recorded missed", float64(gapMissed), "", fmt.Sprintf("≈ %d expected (all but the latest)", nEvery*(int(downtime/time.Second)-1))},
		Row{"b6", dc, "slots of the gap run at restart", float64(afterFired), "", fmt.Sprintf("%d expected: each schedule's latest, within the 60s grace", nEvery)},
		Row{"b6", dc, "lateness p99 once resumed", ms(percentile(resumed, 0.99)), "ms", fmt.Sprintf("%d fires in the first 5 s", len(resumed))},
	)

	// The floor: robfig/cron in-process, N entries for one second.
	floorTarget := time.Now().Add(3 * time.Second).Truncate(time.Second)
	expr := fmt.Sprintf("%d %d %d %d %d *", floorTarget.Second(), floorTarget.Minute(), floorTarget.Hour(), floorTarget.Day(), int(floorTarget.Month()))
	c2 := cron.New(cron.WithSeconds(), cron.WithLocation(time.Local))
	var mu sync.Mutex
	var floor []time.Duration
	for range nSame {
		if _, err := c2.AddFunc(expr, func() {
			d := time.Since(floorTarget)
			mu.Lock()
			floor = append(floor, d)
			mu.Unlock()
		}); err != nil {
			return nil, err
		}
	}
	c2.Start()
	time.Sleep(time.Until(floorTarget.Add(2 * time.Second)))
	c2.Stop()
	mu.Lock()
	slices.Sort(floor)
	rows = append(rows,
		Row{"b6", fmt.Sprintf("floor: robfig/cron in-process, %d entries", nSame), "lateness p50", ms(percentile(floor, 0.5)), "ms", ""},
		Row{"b6", fmt.Sprintf("floor: robfig/cron in-process, %d entries", nSame), "lateness p99", ms(percentile(floor, 0.99)), "ms", fmt.Sprintf("%d fired", len(floor))},
	)
	mu.Unlock()
	return rows, nil
}
