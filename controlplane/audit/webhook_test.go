package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/secretbox"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// receiver is a webhook endpoint on loopback: it checks every signature
// and answers with fail until it has failed that many times.
type receiver struct {
	t      *testing.T
	secret string
	fail   int

	mu       sync.Mutex
	attempts []time.Time
	got      map[string]int // event id -> deliveries it accepted
	bad      []string
}

func newReceiver(t *testing.T, secret string, fail int) (*receiver, string) {
	r := &receiver{t: t, secret: secret, fail: fail, got: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.attempts = append(r.attempts, time.Now())
		if err := VerifySignature(r.secret, req.Header.Get("X-OpsConductor-Signature"), body, time.Now(), 5*time.Minute); err != nil {
			r.bad = append(r.bad, err.Error())
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if len(r.attempts) <= r.fail {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var e bus.Event
		if err := json.Unmarshal(body, &e); err != nil || e.ID != req.Header.Get("X-OpsConductor-Delivery") {
			r.bad = append(r.bad, "body and delivery header disagree")
		}
		r.got[e.ID]++
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return r, srv.URL
}

func (r *receiver) snapshot() ([]time.Time, map[string]int, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := map[string]int{}
	for k, v := range r.got {
		got[k] = v
	}
	return append([]time.Time(nil), r.attempts...), got, append([]string(nil), r.bad...)
}

// TestWebhooks: a receiver gets signed deliveries it can verify; one that
// fails three times then succeeds gets the event once, after growing
// waits, with every attempt in the delivery log; one that never succeeds
// is disabled; a filter on another family gets nothing.
func TestWebhooks(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			db := storetest.Open(t, d, Schema, Migrations())
			box, err := secretbox.New(secretbox.NewKey())
			if err != nil {
				t.Fatal(err)
			}
			base := 200 * time.Millisecond
			n := NewNotifier(db, box, zaptest.NewLogger(t), NotifierConfig{Attempts: 5, BaseDelay: base, DisableAfter: 1, Poll: 20 * time.Millisecond, Timeout: 5 * time.Second})
			ok, okURL := newReceiver(t, "secret-of-the-first-hook", 0)
			flaky, flakyURL := newReceiver(t, "secret-of-the-flaky-hook", 3)
			dead, deadURL := newReceiver(t, "secret-of-the-dead-hook", 1000)
			other, otherURL := newReceiver(t, "secret-of-the-other-hook", 0)
			var flakyID, deadID string
			for _, h := range []struct {
				name, url, secret string
				types             []string
				id                *string
			}{
				{"first", okURL, "secret-of-the-first-hook", []string{"job.*"}, nil},
				{"flaky", flakyURL, "secret-of-the-flaky-hook", []string{"job.created"}, &flakyID},
				{"dead", deadURL, "secret-of-the-dead-hook", []string{"*"}, &deadID},
				{"other", otherURL, "secret-of-the-other-hook", []string{"schedule.*"}, nil},
			} {
				w, err := n.CreateWebhook(ctx, h.name, h.url, h.types, h.secret, "tester")
				if err != nil {
					t.Fatal(err)
				}
				if h.id != nil {
					*h.id = w.ID
				}
			}
			if _, err := n.CreateWebhook(ctx, "bad", "ftp://x", []string{"job.Created!"}, "short", "tester"); err == nil {
				t.Fatal("a bad webhook was accepted")
			}

			b := bus.NewMemory(bus.Options{})
			if err := n.Declare(ctx, b); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); _ = n.Consume(ctx, b) }()
			go func() { defer wg.Done(); _ = n.Run(ctx) }()
			defer func() { cancel(); wg.Wait() }()
			event := bus.Event{ID: "jobs-1", Type: "job.created", Source: "jobs", Subject: "job-1", Time: time.Now().UTC(), Version: 1, Payload: []byte(`{"name":"x"}`)}
			// Delivered twice by the bus (a redelivery): queued once.
			for range 2 {
				if err := b.Publish(ctx, event); err != nil {
					t.Fatal(err)
				}
			}

			cptest.Eventually(t, 20*time.Second, func() error {
				_, got, _ := flaky.snapshot()
				ws, err := n.Webhooks(ctx)
				if err != nil {
					return err
				}
				for _, w := range ws {
					if w.Name == "dead" && w.State != WebhookDisabled {
						return fmt.Errorf("the dead hook is still %s", w.State)
					}
				}
				if got["jobs-1"] != 1 {
					return fmt.Errorf("flaky receiver accepted %d", got["jobs-1"])
				}
				return nil
			})
			attempts, got, bad := ok.snapshot()
			if len(bad) > 0 || got["jobs-1"] != 1 || len(attempts) != 1 {
				t.Fatalf("first receiver: %d attempts, got %v, bad %v", len(attempts), got, bad)
			}
			attempts, got, bad = flaky.snapshot()
			if len(bad) > 0 || got["jobs-1"] != 1 || len(attempts) != 4 {
				t.Fatalf("flaky receiver: %d attempts, got %v, bad %v", len(attempts), got, bad)
			}
			// Waits of base, 2·base and 4·base between the attempts.
			for i := 1; i < 4; i++ {
				want := base << (i - 1)
				if gap := attempts[i].Sub(attempts[i-1]); gap < want*9/10 {
					t.Fatalf("attempt %d came %s after the one before, want at least %s", i+1, gap, want)
				}
			}
			log, err := n.Attempts(ctx, flakyID, 10)
			if err != nil || len(log) != 4 || log[0].StatusCode != 204 || log[0].State != DeliveryDelivered || log[3].StatusCode != 500 || log[3].Error == "" {
				t.Fatalf("flaky delivery log: %+v (%v)", log, err)
			}
			if attempts, _, _ := other.snapshot(); len(attempts) != 0 {
				t.Fatalf("the schedule.* hook got %d deliveries", len(attempts))
			}
			if attempts, _, _ := dead.snapshot(); len(attempts) != 5 {
				t.Fatalf("the dead hook was tried %d times, want 5", len(attempts))
			}
			if log, _ := n.Attempts(ctx, deadID, 10); len(log) != 5 || log[0].State != DeliveryFailed {
				t.Fatalf("dead delivery log: %+v", log)
			}
		})
	}
}
