package audit

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/secretbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Webhook states.
const (
	WebhookActive   = "active"
	WebhookDisabled = "disabled"
)

// Delivery states.
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	DeliveryFailed    = "failed"
)

// NotifyGroup is the notifier's consumer group on the bus.
const NotifyGroup = "notifications"

// Webhook is a subscription: events of its types are POSTed to its URL.
type Webhook struct {
	ID, Name, URL string
	// EventTypes are exact types (execution.completed), families
	// (execution.*) or "*".
	EventTypes     []string
	State          string
	Failures       int // failed deliveries in a row
	DisabledReason string
	CreatedBy      string
	CreatedAt      time.Time
}

// Matches reports whether the webhook wants events of type t.
func (w Webhook) Matches(t string) bool {
	for _, p := range w.EventTypes {
		if family, ok := strings.CutSuffix(p, ".*"); ok && strings.HasPrefix(t, family+".") || p == "*" || p == t {
			return true
		}
	}
	return false
}

// NotifierConfig tunes deliveries. Zero values take the defaults.
type NotifierConfig struct {
	// Attempts per event before it is given up (default 8); the delay
	// before attempt n+1 is BaseDelay·2^(n-1), at most MaxDelay (defaults
	// 1s and 10m: about 2 minutes over all eight).
	Attempts  int
	BaseDelay time.Duration
	MaxDelay  time.Duration
	// DisableAfter: a webhook is disabled after this many events in a row
	// it failed to take (default 5).
	DisableAfter int
	// Poll is how often due deliveries are looked for (default 1s);
	// Timeout bounds one attempt (default 10s).
	Poll    time.Duration
	Timeout time.Duration
}

// Notifier keeps the webhook subscriptions and delivers events to them.
type Notifier struct {
	db     *store.DB
	box    *secretbox.Box
	client *http.Client
	cfg    NotifierConfig
	logger *zap.Logger
	now    func() time.Time
}

// NewNotifier builds the notifier on the audit database; box seals the
// subscriptions' secrets.
func NewNotifier(db *store.DB, box *secretbox.Box, logger *zap.Logger, cfg NotifierConfig) *Notifier {
	if cfg.Attempts <= 0 {
		cfg.Attempts = 8
	}
	if cfg.BaseDelay <= 0 {
		cfg.BaseDelay = time.Second
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = 10 * time.Minute
	}
	if cfg.DisableAfter <= 0 {
		cfg.DisableAfter = 5
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &Notifier{db: db, box: box, client: &http.Client{Timeout: cfg.Timeout}, cfg: cfg, logger: logger.Named("webhooks"), now: time.Now}
}

const webhookColumns = `id, name, url, event_types, state, failures, disabled_reason, created_by, created_at`

func scanWebhook(row interface{ Scan(...any) error }) (Webhook, error) {
	var w Webhook
	var types string
	if err := row.Scan(&w.ID, &w.Name, &w.URL, &types, &w.State, &w.Failures, &w.DisabledReason, &w.CreatedBy, &w.CreatedAt); err != nil {
		return Webhook{}, store.Translate(err)
	}
	w.CreatedAt = w.CreatedAt.UTC()
	if err := json.Unmarshal([]byte(types), &w.EventTypes); err != nil {
		return Webhook{}, fmt.Errorf("webhook %s: event types: %w", w.ID, err)
	}
	return w, nil
}

// eventTypePattern is what a webhook may subscribe to: a type
// (execution.completed), a family (execution.*) or everything (*).
var eventTypePattern = regexp.MustCompile(`^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$`)

// CreateWebhook validates and stores a subscription.
func (n *Notifier) CreateWebhook(ctx context.Context, name, rawURL string, types []string, secret, createdBy string) (Webhook, error) {
	var vs []apperr.Violation
	if name == "" || len(name) > 100 {
		vs = append(vs, apperr.Violation{Field: "name", Description: "is required, at most 100 characters"})
	}
	if u, err := url.Parse(rawURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		vs = append(vs, apperr.Violation{Field: "url", Description: fmt.Sprintf("%q must be an http:// or https:// URL", rawURL)})
	}
	if len(types) == 0 {
		vs = append(vs, apperr.Violation{Field: "event_types", Description: "name at least one: a type (execution.completed), a family (execution.*) or *"})
	}
	for i, t := range types {
		if len(t) > 128 || !eventTypePattern.MatchString(t) {
			vs = append(vs, apperr.Violation{Field: fmt.Sprintf("event_types[%d]", i), Description: fmt.Sprintf("%q is not a type, a family.* or *", t)})
		}
	}
	if len(secret) < 16 {
		vs = append(vs, apperr.Violation{Field: "secret", Description: "must be at least 16 characters: the receiver checks signatures with it"})
	}
	if len(vs) > 0 {
		return Webhook{}, apperr.Invalid("webhook", vs)
	}
	w := Webhook{ID: uuid.NewString(), Name: name, URL: rawURL, EventTypes: types, State: WebhookActive, CreatedBy: createdBy,
		CreatedAt: n.now().UTC().Truncate(time.Microsecond)}
	typesJSON, _ := json.Marshal(types)
	_, err := n.db.ExecContext(ctx, `INSERT INTO webhooks (id, name, url, event_types, secret_sealed, state, created_by, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, w.ID, w.Name, w.URL, string(typesJSON), n.box.Seal(secret, "webhook:"+w.ID), w.State, w.CreatedBy, w.CreatedAt)
	if err != nil {
		if errors.Is(store.Translate(err), store.ErrConflict) {
			return Webhook{}, apperr.AlreadyExists("a webhook named %q exists", name)
		}
		return Webhook{}, fmt.Errorf("store webhook: %w", err)
	}
	return w, nil
}

// Webhooks lists the subscriptions by name.
func (n *Notifier) Webhooks(ctx context.Context) ([]Webhook, error) {
	rows, err := n.db.QueryContext(ctx, `SELECT `+webhookColumns+` FROM webhooks ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	defer rows.Close()
	var out []Webhook
	for rows.Next() {
		w, err := scanWebhook(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// DeleteWebhook removes a subscription and what it had left to send.
func (n *Notifier) DeleteWebhook(ctx context.Context, id string) error {
	return n.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM webhooks WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("delete webhook: %w", err)
		}
		if k, _ := res.RowsAffected(); k == 0 {
			return apperr.NotFound("webhook %s not found", id)
		}
		_, err = tx.ExecContext(ctx, `UPDATE webhook_deliveries SET state = $1 WHERE webhook_id = $2 AND state = $3`, DeliveryFailed, id, DeliveryPending)
		return err
	})
}

// EnableWebhook makes a disabled subscription active again.
func (n *Notifier) EnableWebhook(ctx context.Context, id string) error {
	res, err := n.db.ExecContext(ctx, `UPDATE webhooks SET state = $1, failures = 0, disabled_reason = '' WHERE id = $2`, WebhookActive, id)
	if err != nil {
		return fmt.Errorf("enable webhook: %w", err)
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return apperr.NotFound("webhook %s not found", id)
	}
	return nil
}

// Enqueue queues an event for every active subscription that wants it
// (once per subscription and event, however often the bus delivers it).
func (n *Notifier) Enqueue(ctx context.Context, e bus.Event) error {
	if e.Type == ForwardedTopic {
		return nil // a call record on its way to the log (split mode), not an event
	}
	hooks, err := n.Webhooks(ctx)
	if err != nil {
		return err
	}
	body, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode event %s: %w", e.ID, err)
	}
	now := n.now().UTC()
	for _, w := range hooks {
		if w.State != WebhookActive || !w.Matches(e.Type) {
			continue
		}
		if _, err := n.db.ExecContext(ctx, `INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body, state, next_attempt_at, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (webhook_id, event_id) DO NOTHING`, w.ID, e.ID, e.Type, string(body), DeliveryPending, now); err != nil {
			return fmt.Errorf("queue event %s for webhook %s: %w", e.ID, w.Name, err)
		}
	}
	return nil
}

// notifyFamilies are the services' families and external events.
func notifyFamilies() []string { return append(append([]string(nil), Families...), "external") }

// Declare makes sure the notifier's group exists before anything is
// published.
func (n *Notifier) Declare(ctx context.Context, b bus.Bus) error {
	return b.Declare(ctx, NotifyGroup, notifyFamilies())
}

// Consume queues the bus's events for the subscriptions until ctx ends.
func (n *Notifier) Consume(ctx context.Context, b bus.Bus) error {
	return b.Consume(ctx, NotifyGroup, notifyFamilies(), n.Enqueue)
}

// Signature is the value of the X-OpsConductor-Signature header: the
// time it was signed and HMAC-SHA256 over "TIME.BODY" with the
// subscription's secret. A receiver recomputes it and refuses old times
// (replays).
func Signature(secret string, at time.Time, body []byte) string {
	ts := strconv.FormatInt(at.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// VerifySignature checks a signature header against the body, refusing
// one older than maxAge.
func VerifySignature(secret, header string, body []byte, now time.Time, maxAge time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return errors.New("malformed signature header")
	}
	if age := now.Sub(time.Unix(sec, 0)); age > maxAge || age < -maxAge {
		return fmt.Errorf("signed %s ago: too old (a replay?)", age.Round(time.Second))
	}
	want := Signature(secret, time.Unix(sec, 0), body)
	if !hmac.Equal([]byte(want), []byte("t="+ts+",v1="+sig)) {
		return errors.New("signature does not match")
	}
	return nil
}

// due is a delivery taken for an attempt.
type due struct {
	id                 int64
	webhookID, eventID string
	eventType, body    string
	attempts           int
}

// Run sends due deliveries until ctx ends. Several replicas may run it: a
// delivery is taken with a lease (its next attempt pushed past the
// attempt's timeout), so one replica sends it at a time.
func (n *Notifier) Run(ctx context.Context) error {
	t := time.NewTicker(n.cfg.Poll)
	defer t.Stop()
	for {
		for {
			k, err := n.sendDue(ctx)
			if err != nil && ctx.Err() == nil {
				n.logger.Warn("send webhook deliveries", zap.Error(err))
			}
			if k == 0 || err != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// sendDue sends up to 20 due deliveries, one after the other, and
// records how each went; it returns how many it looked at. Each is leased
// just before it is sent (its next attempt pushed past the attempt's
// timeout, only if it is still due), so another replica does not send it
// too, and a lease never runs out while earlier ones are being sent.
func (n *Notifier) sendDue(ctx context.Context) (int, error) {
	now := n.now().UTC()
	rows, err := n.db.QueryContext(ctx, `SELECT id, webhook_id, event_id, event_type, body, attempts FROM webhook_deliveries
		WHERE state = $1 AND next_attempt_at <= $2 ORDER BY next_attempt_at, id LIMIT 20`, DeliveryPending, now)
	if err != nil {
		return 0, fmt.Errorf("find due deliveries: %w", err)
	}
	var batch []due
	for rows.Next() {
		var d due
		if err := rows.Scan(&d.id, &d.webhookID, &d.eventID, &d.eventType, &d.body, &d.attempts); err != nil {
			rows.Close()
			return 0, err
		}
		batch = append(batch, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, d := range batch {
		leaseAt := n.now().UTC()
		res, err := n.db.ExecContext(ctx, `UPDATE webhook_deliveries SET next_attempt_at = $1 WHERE id = $2 AND state = $3 AND attempts = $4 AND next_attempt_at <= $5`,
			leaseAt.Add(2*n.cfg.Timeout), d.id, DeliveryPending, d.attempts, leaseAt)
		if err != nil {
			return len(batch), fmt.Errorf("lease delivery %d: %w", d.id, err)
		}
		if k, _ := res.RowsAffected(); k != 1 {
			continue // another replica has it
		}
		if err := n.attempt(ctx, d); err != nil {
			return len(batch), err
		}
	}
	return len(batch), nil
}

// backoff is the wait before the attempt after the n-th failed one.
func (n *Notifier) backoff(failed int) time.Duration {
	d := n.cfg.BaseDelay
	for i := 1; i < failed && d < n.cfg.MaxDelay; i++ {
		d *= 2
	}
	return min(d, n.cfg.MaxDelay)
}

// attempt sends one delivery and records the attempt, the delivery's new
// state and, on a final failure, the webhook's.
func (n *Notifier) attempt(ctx context.Context, d due) error {
	var w Webhook
	var sealed string
	row := n.db.QueryRowContext(ctx, `SELECT `+webhookColumns+`, secret_sealed FROM webhooks WHERE id = $1`, d.webhookID)
	var types string
	err := row.Scan(&w.ID, &w.Name, &w.URL, &types, &w.State, &w.Failures, &w.DisabledReason, &w.CreatedBy, &w.CreatedAt, &sealed)
	if errors.Is(err, sql.ErrNoRows) || err == nil && w.State != WebhookActive {
		_, err = n.db.ExecContext(ctx, `UPDATE webhook_deliveries SET state = $1 WHERE id = $2`, DeliveryFailed, d.id)
		return err
	}
	if err != nil {
		return fmt.Errorf("read webhook %s: %w", d.webhookID, err)
	}
	secret, err := n.box.Open(sealed, "webhook:"+w.ID)
	if err != nil {
		return n.record(ctx, d, w, 0, "cannot open the webhook's secret (was --secret-key changed?): "+err.Error(), 0)
	}
	start := n.now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader([]byte(d.body)))
	if err != nil {
		return n.record(ctx, d, w, 0, err.Error(), 0)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "opsconductor-webhooks")
	req.Header.Set("X-OpsConductor-Event", d.eventType)
	req.Header.Set("X-OpsConductor-Delivery", d.eventID)
	req.Header.Set("X-OpsConductor-Signature", Signature(secret, start, []byte(d.body)))
	resp, err := n.client.Do(req)
	took := n.now().Sub(start)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopping: the lease runs out and the attempt is made again
		}
		return n.record(ctx, d, w, 0, err.Error(), took)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	msg := ""
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		msg = "HTTP " + resp.Status
	}
	return n.record(ctx, d, w, resp.StatusCode, msg, took)
}

// record writes an attempt's outcome (errMsg "" is a success).
func (n *Notifier) record(ctx context.Context, d due, w Webhook, code int, errMsg string, took time.Duration) error {
	now := n.now().UTC()
	attempt := d.attempts + 1
	// Recorded even when the notifier is stopping: the attempt was made.
	ctx = context.WithoutCancel(ctx)
	return n.db.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, duration_ms) VALUES ($1, $2, $3, $4, $5, $6)`,
			d.id, attempt, now, code, errMsg, took.Milliseconds()); err != nil {
			return fmt.Errorf("log attempt: %w", err)
		}
		switch {
		case errMsg == "":
			if _, err := tx.ExecContext(ctx, `UPDATE webhook_deliveries SET state = $1, attempts = $2 WHERE id = $3`, DeliveryDelivered, attempt, d.id); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `UPDATE webhooks SET failures = 0 WHERE id = $1`, w.ID)
			return err
		case attempt < n.cfg.Attempts:
			_, err := tx.ExecContext(ctx, `UPDATE webhook_deliveries SET attempts = $1, next_attempt_at = $2 WHERE id = $3`, attempt, now.Add(n.backoff(attempt)), d.id)
			return err
		}
		// The last attempt failed: the event is given up, and a webhook
		// that keeps failing is disabled.
		if _, err := tx.ExecContext(ctx, `UPDATE webhook_deliveries SET state = $1, attempts = $2 WHERE id = $3`, DeliveryFailed, attempt, d.id); err != nil {
			return err
		}
		failures := w.Failures + 1
		state, reason := WebhookActive, ""
		if failures >= n.cfg.DisableAfter {
			state, reason = WebhookDisabled, fmt.Sprintf("%d events in a row not taken after %d attempts each; last: %s", failures, n.cfg.Attempts, errMsg)
			n.logger.Warn("webhook disabled", zap.String("webhook", w.Name), zap.String("reason", reason))
		}
		_, err := tx.ExecContext(ctx, `UPDATE webhooks SET failures = $1, state = $2, disabled_reason = $3 WHERE id = $4`, failures, state, reason, w.ID)
		return err
	})
}

// Attempt is one try at a delivery, as the delivery log shows it.
type Attempt struct {
	EventID, EventType, State string
	Attempt, StatusCode       int
	At                        time.Time
	Error                     string
	Duration                  time.Duration
}

// Attempts lists a webhook's delivery log, newest first.
func (n *Notifier) Attempts(ctx context.Context, webhookID string, limit int) ([]Attempt, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	rows, err := n.db.QueryContext(ctx, `SELECT d.event_id, d.event_type, d.state, a.attempt, a.status_code, a.at, a.error, a.duration_ms
		FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = $1
		ORDER BY a.at DESC, a.attempt DESC LIMIT $2`, webhookID, limit)
	if err != nil {
		return nil, fmt.Errorf("list webhook attempts: %w", err)
	}
	defer rows.Close()
	var out []Attempt
	for rows.Next() {
		var a Attempt
		var ms int64
		if err := rows.Scan(&a.EventID, &a.EventType, &a.State, &a.Attempt, &a.StatusCode, &a.At, &a.Error, &ms); err != nil {
			return nil, err
		}
		a.At, a.Duration = a.At.UTC(), time.Duration(ms)*time.Millisecond
		out = append(out, a)
	}
	return out, rows.Err()
}
