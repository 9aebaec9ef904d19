package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsconductor/opsconductor/agent/executor"
)

// B2: dispatch latency, from the API call that creates an execution to
// its task reaching the agent's executor, with 1,000 and 5,000 idle agents
// long-polling one control plane on PostgreSQL; each execution targets
// one agent picked at random. Under a steady trickle and under bursts.
// The floor, measured in the same run, is what any design pays: one
// PostgreSQL commit plus a loopback HTTP round trip (the wake-up hop is
// in-process with one replica).

// receipts is the executor of B2's agents: it notes when each action
// arrives (its command is "b2-SEQ") and succeeds at once.
type receipts struct {
	mu   sync.Mutex
	seen map[int]time.Time
}

func (r *receipts) Execute(_ context.Context, a executor.Action, _, _ io.Writer) executor.Result {
	now := time.Now()
	if n, err := strconv.Atoi(strings.TrimPrefix(a.Command, "b2-")); err == nil {
		r.mu.Lock()
		r.seen[n] = now
		r.mu.Unlock()
	}
	return executor.Result{Status: executor.StatusSucceeded}
}

func (r *receipts) at(seq int) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.seen[seq]
	return t, ok
}

// dispatchOnce creates an execution of an inline job on agent slot and
// returns when the request was sent.
func dispatchOnce(url, admin string, seq, slot int) (time.Time, error) {
	target := []map[string]any{{"selector": fmt.Sprintf("slot=%d", slot)}}
	body := map[string]any{
		"inlineJob": map[string]any{"name": "b2", "targets": target, "actions": []map[string]any{{"command": fmt.Sprintf("b2-%d", seq)}}},
	}
	sent := time.Now()
	return sent, apiJSON("POST", url+"/api/v1/executions", admin, body, nil)
}

// latencies waits for the receipts of seqs and returns their latencies.
func latencies(r *receipts, sent map[int]time.Time, timeout time.Duration) ([]time.Duration, int) {
	deadline := time.Now().Add(timeout)
	var out []time.Duration
	missing := 0
	for seq, t0 := range sent {
		for {
			if t1, ok := r.at(seq); ok {
				out = append(out, t1.Sub(t0))
				break
			}
			if time.Now().After(deadline) {
				missing++
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	slices.Sort(out)
	return out, missing
}

// cpuTop takes the control plane's CPU profile for seconds and prints its
// top (by cumulative time) to standard error, for docs/benchmarks.md.
func cpuTop(ctx context.Context, debugURL, file string, seconds, n int) error {
	return profileTop(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", debugURL, seconds), file, []string{"-top", "-cum", "-nodecount=25"},
		fmt.Sprintf("b2: CPU of the control plane with %d agents, steady phase (go tool pprof -top -cum)", n))
}

// floor measures a PostgreSQL commit and a loopback HTTP round trip.
func floor(ctx context.Context, url string, samples int) (commit, rtt time.Duration, err error) {
	dbURL, drop, err := freshDatabase(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer drop()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE floor (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL)`); err != nil {
		return 0, 0, err
	}
	var commits, rtts []time.Duration
	for i := 0; i < samples; i++ {
		t0 := time.Now()
		if _, err := conn.Exec(ctx, `INSERT INTO floor (at) VALUES (now())`); err != nil {
			return 0, 0, err
		}
		commits = append(commits, time.Since(t0))
		t0 = time.Now()
		resp, err := http.Get(url + "/version")
		if err != nil {
			return 0, 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		rtts = append(rtts, time.Since(t0))
	}
	slices.Sort(commits)
	slices.Sort(rtts)
	return commits[len(commits)/2], rtts[len(rtts)/2], nil
}

func runB2(ctx context.Context, size string) ([]Row, error) {
	counts, trickle, rate, bursts, burst := []int{1000, 5000}, 200, 20, 3, 100
	if size == "tiny" {
		counts, trickle, rate, bursts, burst = []int{10}, 5, 20, 1, 5
	}
	dir, err := os.MkdirTemp("", "opsconductor-b2-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := buildBinaries(ctx, dir); err != nil {
		return nil, err
	}
	var rows []Row
	for _, n := range counts {
		fmt.Fprintf(os.Stderr, "bench: b2: %d agents\n", n)
		r := &receipts{seen: map[int]time.Time{}}
		f, err := startFleet(ctx, dir, dir, n, func(i int) (executor.Executor, map[string]string) {
			return r, map[string]string{"slot": strconv.Itoa(i)}
		})
		if err != nil {
			return nil, err
		}
		seq := 0
		// Warm up: one execution, so first-use costs are not measured.
		if _, err := dispatchOnce(f.url, f.admin, seq, 0); err != nil {
			f.stop()
			return nil, err
		}
		seq++
		time.Sleep(time.Second)

		// A steady trickle: rate executions a second. At the largest size
		// the control plane's CPU profile is taken meanwhile.
		var profiled sync.WaitGroup
		if n == counts[len(counts)-1] {
			profiled.Add(1)
			go func() {
				defer profiled.Done()
				seconds := max(1, trickle/rate-1)
				if err := cpuTop(ctx, f.debugURL, filepath.Join(dir, "cpu.pb.gz"), seconds, n); err != nil {
					fmt.Fprintf(os.Stderr, "bench: b2: cpu profile: %v\n", err)
				}
			}()
		}
		sent := map[int]time.Time{}
		tick := time.NewTicker(time.Second / time.Duration(rate))
		for i := 0; i < trickle; i++ {
			<-tick.C
			t0, err := dispatchOnce(f.url, f.admin, seq, rand.IntN(n))
			if err != nil {
				tick.Stop()
				f.stop()
				return nil, err
			}
			sent[seq] = t0
			seq++
		}
		tick.Stop()
		profiled.Wait()
		steady, lostSteady := latencies(r, sent, 30*time.Second)

		// Bursts: burst executions sent at once, a few times.
		var burstLat []time.Duration
		lostBurst := 0
		for b := 0; b < bursts; b++ {
			sent := map[int]time.Time{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			var firstErr error
			for i := 0; i < burst; i++ {
				wg.Add(1)
				go func(seq int) {
					defer wg.Done()
					t0, err := dispatchOnce(f.url, f.admin, seq, rand.IntN(n))
					mu.Lock()
					defer mu.Unlock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					sent[seq] = t0
				}(seq)
				seq++
			}
			wg.Wait()
			if firstErr != nil {
				f.stop()
				return nil, firstErr
			}
			l, lost := latencies(r, sent, 60*time.Second)
			burstLat, lostBurst = append(burstLat, l...), lostBurst+lost
			time.Sleep(time.Second)
		}
		slices.Sort(burstLat)
		commit, rtt, err := floor(ctx, f.url, 50)
		f.stop()
		if err != nil {
			return nil, err
		}
		fl := commit + rtt
		for _, c := range []struct {
			name string
			lat  []time.Duration
			lost int
		}{
			{fmt.Sprintf("%d agents, %d/s steady", n, rate), steady, lostSteady},
			{fmt.Sprintf("%d agents, bursts of %d", n, burst), burstLat, lostBurst},
		} {
			if len(c.lat) == 0 {
				return nil, fmt.Errorf("b2 %s: no task reached its agent", c.name)
			}
			p50, p99, max := percentile(c.lat, 0.50), percentile(c.lat, 0.99), c.lat[len(c.lat)-1]
			rows = append(rows,
				Row{Part: "b2", Case: c.name, Metric: "p50", Value: ms(p50), Unit: "ms", Note: fmt.Sprintf("%.1fx the floor; target <= 2 ms at 5,000", float64(p50)/float64(fl))},
				Row{Part: "b2", Case: c.name, Metric: "p99", Value: ms(p99), Unit: "ms", Note: "target <= 10 ms at 5,000"},
				Row{Part: "b2", Case: c.name, Metric: "max", Value: ms(max), Unit: "ms", Note: fmt.Sprintf("%d samples, %d not received", len(c.lat), c.lost)},
			)
		}
		rows = append(rows, Row{Part: "b2", Case: fmt.Sprintf("%d agents: floor", n), Metric: "commit + loopback RTT", Value: ms(fl), Unit: "ms",
			Note: fmt.Sprintf("PostgreSQL commit %.2f ms + HTTP round trip %.2f ms (medians of 50)", ms(commit), ms(rtt))})
	}
	// River's pickup latency on the same Postgres, to compare with.
	river, err := riverPickup(ctx, size)
	if err != nil {
		return nil, err
	}
	return append(rows, river...), nil
}
