package inventory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// SyncConfig says where the external inventory is.
type SyncConfig struct {
	// URL answers GET with an InventoryDocument as JSON.
	URL string
	// Interval between imports (default 5m).
	Interval time.Duration
	// Token, when set, is sent as a bearer token.
	Token string
	// MaxBytes bounds the document (default 32 MiB).
	MaxBytes int64
}

// Syncer imports the external inventory.
type Syncer struct {
	store  *Store
	cfg    SyncConfig
	client *http.Client
	logger *zap.Logger
}

// NewSyncer builds a syncer; client nil means a client with a 30s timeout.
func NewSyncer(st *Store, cfg SyncConfig, client *http.Client, logger *zap.Logger) *Syncer {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Minute
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 32 << 20
	}
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	return &Syncer{store: st, cfg: cfg, client: client, logger: logger.Named("inventory-sync")}
}

// RedactURL hides what a URL may carry of secrets (user info, query) for
// logs and the status.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User != nil {
		u.User = url.User("…")
	}
	if u.RawQuery != "" {
		u.RawQuery = "…"
	}
	return u.String()
}

// Loop imports at once and then every interval until ctx ends.
func (y *Syncer) Loop(ctx context.Context) error {
	t := time.NewTicker(y.cfg.Interval)
	defer t.Stop()
	for {
		_ = y.Run(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Run imports once. On any failure the inventory is left as the last good
// import, and the failure is recorded in the sync status and returned.
func (y *Syncer) Run(ctx context.Context) error {
	at := time.Now().UTC().Truncate(time.Microsecond)
	hosts, groups, err := y.fetch(ctx)
	if err == nil {
		var skipped []string
		if skipped, err = y.store.ReplaceSynced(ctx, hosts, groups, at); err == nil {
			y.logger.Info("external inventory imported", zap.Int("hosts", len(hosts)-len(skipped)), zap.Strings("skipped", skipped))
			return nil
		}
	}
	y.logger.Warn("external inventory import failed; keeping the last good one", zap.String("url", RedactURL(y.cfg.URL)), zap.Error(err))
	if rerr := y.store.SyncFailed(context.WithoutCancel(ctx), at, err.Error()); rerr != nil {
		y.logger.Error("record failed import", zap.Error(rerr))
	}
	return err
}

// fetch reads and checks the document: every host valid, names unique.
func (y *Syncer) fetch(ctx context.Context) ([]Host, []Group, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, y.cfg.URL, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("inventory url: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if y.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+y.cfg.Token)
	}
	resp, err := y.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // its text repeats the whole URL
		}
		return nil, nil, fmt.Errorf("fetch %s: %w", RedactURL(y.cfg.URL), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("fetch %s: HTTP %d", RedactURL(y.cfg.URL), resp.StatusCode)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, y.cfg.MaxBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", RedactURL(y.cfg.URL), err)
	}
	if int64(len(raw)) > y.cfg.MaxBytes {
		return nil, nil, fmt.Errorf("%s: the document is larger than %d bytes", RedactURL(y.cfg.URL), y.cfg.MaxBytes)
	}
	var doc opsconductorv1.InventoryDocument
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, &doc); err != nil {
		return nil, nil, fmt.Errorf("%s: not an inventory document: %w", RedactURL(y.cfg.URL), err)
	}
	var hosts []Host
	seen := map[string]bool{}
	groupSet := map[string]Group{}
	for i, g := range doc.GetGroups() {
		if vs := validateGroup(fmt.Sprintf("groups[%d]", i), g); len(vs) > 0 {
			return nil, nil, fmt.Errorf("%s: %s %s", RedactURL(y.cfg.URL), vs[0].Field, vs[0].Description)
		}
		groupSet[g.GetName()] = Group{Name: g.GetName(), Description: g.GetDescription(), Labels: g.GetLabels(), Source: SourceSync}
	}
	for i, h := range doc.GetHosts() {
		field := fmt.Sprintf("hosts[%d]", i)
		if vs := validateHost(field, h); len(vs) > 0 {
			return nil, nil, fmt.Errorf("%s: %s %s", RedactURL(y.cfg.URL), vs[0].Field, vs[0].Description)
		}
		if seen[h.GetName()] {
			return nil, nil, fmt.Errorf("%s: %s.name %q appears twice", RedactURL(y.cfg.URL), field, h.GetName())
		}
		seen[h.GetName()] = true
		rec := fromHostProto(h, SourceSync, time.Time{})
		for _, g := range rec.Groups {
			if _, ok := groupSet[g]; !ok {
				groupSet[g] = Group{Name: g, Labels: map[string]string{}, Source: SourceSync}
			}
		}
		hosts = append(hosts, rec)
	}
	groups := make([]Group, 0, len(groupSet))
	for _, g := range groupSet {
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(a, b Group) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return hosts, groups, nil
}
