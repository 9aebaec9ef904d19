package inventory

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

//go:embed migrations
var migrationsDir embed.FS

// Migrations returns the inventory schema migrations for store.DB.Migrate.
func Migrations() fs.FS { return store.MustSub(migrationsDir, "migrations") }

// Schema is the name of the inventory's schema.
const Schema = "inventory"

// Sources of hosts and groups.
const (
	SourceAPI  = "api"
	SourceSync = "sync"
)

// Host is a stored host.
type Host struct {
	Name, Address        string
	Port                 int32
	Transport, User      string
	Credential           string
	Labels               map[string]string
	Groups               []string
	Source               string
	CreatedAt, UpdatedAt time.Time
}

// Group is a stored group.
type Group struct {
	Name, Description    string
	Labels               map[string]string
	Source               string
	HostCount            int
	CreatedAt, UpdatedAt time.Time
}

// SyncState is the last import of the external inventory.
type SyncState struct {
	LastAttempt, LastSuccess *time.Time
	LastError                string
	Hosts                    int
	Skipped                  []string
}

// ErrInUse refuses deleting a group that still has hosts.
var ErrInUse = errors.New("group still has hosts")

// Store keeps the inventory in its schema.
type Store struct {
	db *store.DB
}

// NewStore wraps a migrated inventory database.
func NewStore(db *store.DB) *Store { return &Store{db: db} }

func encodeLabels(m map[string]string) string {
	if m == nil {
		m = map[string]string{}
	}
	raw, _ := json.Marshal(m)
	return string(raw)
}

func decodeLabels(s string) (map[string]string, error) {
	m := map[string]string{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("decode labels: %w", err)
	}
	return m, nil
}

type change struct {
	Name   string `json:"name"`
	Source string `json:"source,omitempty"`
}

// HostCreate stores a new host; store.ErrConflict when the name is taken,
// store.ErrNotFound when a group it names does not exist.
func (s *Store) HostCreate(ctx context.Context, h Host) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		if err := insertHost(ctx, tx, h); err != nil {
			return err
		}
		_, err := outbox.Append(ctx, tx, "inventory.host.created", h.Name, 0, change{Name: h.Name, Source: h.Source})
		return err
	})
}

func insertHost(ctx context.Context, tx *store.Tx, h Host) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO hosts (name, address, port, transport, user_name, credential, labels, source, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`, h.Name, h.Address, h.Port, h.Transport, h.User, h.Credential, encodeLabels(h.Labels),
		h.Source, h.CreatedAt.UTC(), h.UpdatedAt.UTC()); err != nil {
		return fmt.Errorf("insert host %s: %w", h.Name, store.Translate(err))
	}
	return setGroups(ctx, tx, h.Name, h.Groups)
}

func setGroups(ctx context.Context, tx *store.Tx, host string, groups []string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM host_groups WHERE host_name = $1`, host); err != nil {
		return fmt.Errorf("clear groups of host %s: %w", host, err)
	}
	for _, g := range groups {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM groups WHERE name = $1`, g).Scan(&one); errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("group %q: %w", g, store.ErrNotFound)
		} else if err != nil {
			return fmt.Errorf("find group %s: %w", g, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO host_groups (group_name, host_name) VALUES ($1, $2)`, g, host); err != nil {
			return fmt.Errorf("add host %s to group %s: %w", host, g, store.Translate(err))
		}
	}
	return nil
}

// HostUpdate replaces a host's fields (not its source or creation time).
func (s *Store) HostUpdate(ctx context.Context, h Host) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE hosts SET address = $1, port = $2, transport = $3, user_name = $4, credential = $5, labels = $6, updated_at = $7
			WHERE name = $8`, h.Address, h.Port, h.Transport, h.User, h.Credential, encodeLabels(h.Labels), h.UpdatedAt.UTC(), h.Name)
		if err != nil {
			return fmt.Errorf("update host %s: %w", h.Name, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("host %s: %w", h.Name, store.ErrNotFound)
		}
		if err := setGroups(ctx, tx, h.Name, h.Groups); err != nil {
			return err
		}
		_, err = outbox.Append(ctx, tx, "inventory.host.updated", h.Name, 0, change{Name: h.Name})
		return err
	})
}

// HostDelete removes a host.
func (s *Store) HostDelete(ctx context.Context, name string) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM host_groups WHERE host_name = $1`, name); err != nil {
			return fmt.Errorf("delete host %s: %w", name, err)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM hosts WHERE name = $1`, name)
		if err != nil {
			return fmt.Errorf("delete host %s: %w", name, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("host %s: %w", name, store.ErrNotFound)
		}
		_, err = outbox.Append(ctx, tx, "inventory.host.deleted", name, 0, change{Name: name})
		return err
	})
}

const hostColumns = `SELECT name, address, port, transport, user_name, credential, labels, source, created_at, updated_at FROM hosts`

// hosts runs a host query and fills in each host's groups.
func (s *Store) hosts(ctx context.Context, where string, args ...any) ([]Host, error) {
	rows, err := s.db.QueryContext(ctx, hostColumns+" "+where+" ORDER BY name", args...)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	var out []Host
	for rows.Next() {
		var h Host
		var labels string
		if err := rows.Scan(&h.Name, &h.Address, &h.Port, &h.Transport, &h.User, &h.Credential, &labels, &h.Source, &h.CreatedAt, &h.UpdatedAt); err != nil {
			rows.Close()
			return nil, err
		}
		if h.Labels, err = decodeLabels(labels); err != nil {
			rows.Close()
			return nil, err
		}
		h.CreatedAt, h.UpdatedAt = h.CreatedAt.UTC(), h.UpdatedAt.UTC()
		out = append(out, h)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	groups, err := s.memberships(ctx)
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i].Groups = groups[out[i].Name]
	}
	return out, nil
}

// memberships maps each host to its groups, sorted.
func (s *Store) memberships(ctx context.Context) (map[string][]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT host_name, group_name FROM host_groups ORDER BY host_name, group_name`)
	if err != nil {
		return nil, fmt.Errorf("list group memberships: %w", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var h, g string
		if err := rows.Scan(&h, &g); err != nil {
			return nil, err
		}
		out[h] = append(out[h], g)
	}
	return out, rows.Err()
}

// HostGet returns one host; store.ErrNotFound when there is none.
func (s *Store) HostGet(ctx context.Context, name string) (Host, error) {
	hs, err := s.hosts(ctx, "WHERE name = $1", name)
	if err != nil {
		return Host{}, err
	}
	if len(hs) == 0 {
		return Host{}, fmt.Errorf("host %s: %w", name, store.ErrNotFound)
	}
	return hs[0], nil
}

// HostList returns every host, or those in group.
func (s *Store) HostList(ctx context.Context, group string) ([]Host, error) {
	if group == "" {
		return s.hosts(ctx, "")
	}
	return s.hosts(ctx, "WHERE name IN (SELECT host_name FROM host_groups WHERE group_name = $1)", group)
}

// GroupCreate stores a new group; store.ErrConflict when the name is taken.
func (s *Store) GroupCreate(ctx context.Context, g Group) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO groups (name, description, labels, source, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)`,
			g.Name, g.Description, encodeLabels(g.Labels), g.Source, g.CreatedAt.UTC(), g.UpdatedAt.UTC()); err != nil {
			return fmt.Errorf("insert group %s: %w", g.Name, store.Translate(err))
		}
		_, err := outbox.Append(ctx, tx, "inventory.group.created", g.Name, 0, change{Name: g.Name, Source: g.Source})
		return err
	})
}

// GroupUpdate replaces a group's description and labels.
func (s *Store) GroupUpdate(ctx context.Context, g Group) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE groups SET description = $1, labels = $2, updated_at = $3 WHERE name = $4`,
			g.Description, encodeLabels(g.Labels), g.UpdatedAt.UTC(), g.Name)
		if err != nil {
			return fmt.Errorf("update group %s: %w", g.Name, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("group %s: %w", g.Name, store.ErrNotFound)
		}
		_, err = outbox.Append(ctx, tx, "inventory.group.updated", g.Name, 0, change{Name: g.Name})
		return err
	})
}

// GroupDelete removes an empty group; ErrInUse while it has hosts.
func (s *Store) GroupDelete(ctx context.Context, name string) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM host_groups WHERE group_name = $1`, name).Scan(&n); err != nil {
			return fmt.Errorf("count hosts of group %s: %w", name, err)
		}
		if n > 0 {
			return fmt.Errorf("group %s has %d hosts: %w", name, n, ErrInUse)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM groups WHERE name = $1`, name)
		if err != nil {
			return fmt.Errorf("delete group %s: %w", name, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("group %s: %w", name, store.ErrNotFound)
		}
		_, err = outbox.Append(ctx, tx, "inventory.group.deleted", name, 0, change{Name: name})
		return err
	})
}

// GroupList returns every group with its host count.
func (s *Store) GroupList(ctx context.Context) ([]Group, error) {
	return s.groups(ctx, "")
}

// GroupGet returns one group; store.ErrNotFound when there is none.
func (s *Store) GroupGet(ctx context.Context, name string) (Group, error) {
	gs, err := s.groups(ctx, "WHERE g.name = $1", name)
	if err != nil {
		return Group{}, err
	}
	if len(gs) == 0 {
		return Group{}, fmt.Errorf("group %s: %w", name, store.ErrNotFound)
	}
	return gs[0], nil
}

func (s *Store) groups(ctx context.Context, where string, args ...any) ([]Group, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT g.name, g.description, g.labels, g.source, g.created_at, g.updated_at,
		(SELECT COUNT(*) FROM host_groups m WHERE m.group_name = g.name) FROM groups g `+where+` ORDER BY g.name`, args...)
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	defer rows.Close()
	var out []Group
	for rows.Next() {
		var g Group
		var labels string
		if err := rows.Scan(&g.Name, &g.Description, &labels, &g.Source, &g.CreatedAt, &g.UpdatedAt, &g.HostCount); err != nil {
			return nil, err
		}
		if g.Labels, err = decodeLabels(labels); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// ReplaceSynced makes the imported part of the inventory exactly hosts
// and groups, in one transaction: imported hosts and groups not in them
// go, the others are written. Imported hosts whose name a host made
// through the API holds are skipped and returned.
func (s *Store) ReplaceSynced(ctx context.Context, hosts []Host, groups []Group, at time.Time) ([]string, error) {
	var skipped []string
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		if tx.Dialect() == store.Postgres {
			// Every replica imports; one at a time.
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext('opsconductor.inventory.sync'))`); err != nil {
				return fmt.Errorf("lock the import: %w", err)
			}
		}
		// The import replaces the imported part wholesale.
		if _, err := tx.ExecContext(ctx, `DELETE FROM host_groups WHERE host_name IN (SELECT name FROM hosts WHERE source = $1)`, SourceSync); err != nil {
			return fmt.Errorf("clear imported memberships: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM hosts WHERE source = $1`, SourceSync); err != nil {
			return fmt.Errorf("clear imported hosts: %w", err)
		}
		keep := map[string]bool{}
		for _, g := range groups {
			keep[g.Name] = true
		}
		var existing []string
		rows, err := tx.QueryContext(ctx, `SELECT name FROM groups WHERE source = $1`, SourceSync)
		if err != nil {
			return fmt.Errorf("list imported groups: %w", err)
		}
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				rows.Close()
				return err
			}
			existing = append(existing, n)
		}
		rows.Close()
		for _, n := range existing {
			if keep[n] {
				continue
			}
			// A group the API still uses for its own hosts stays.
			if _, err := tx.ExecContext(ctx, `DELETE FROM groups WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM host_groups WHERE group_name = $1)`, n); err != nil {
				return fmt.Errorf("remove imported group %s: %w", n, err)
			}
		}
		for _, g := range groups {
			// An API group of the same name keeps its own fields.
			if _, err := tx.ExecContext(ctx, `INSERT INTO groups (name, description, labels, source, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)
				ON CONFLICT (name) DO UPDATE SET description = excluded.description, labels = excluded.labels, updated_at = excluded.updated_at
				WHERE groups.source = $4`, g.Name, g.Description, encodeLabels(g.Labels), SourceSync, at.UTC()); err != nil {
				return fmt.Errorf("write imported group %s: %w", g.Name, err)
			}
		}
		for _, h := range hosts {
			var one int
			if err := tx.QueryRowContext(ctx, `SELECT 1 FROM hosts WHERE name = $1`, h.Name).Scan(&one); err == nil {
				skipped = append(skipped, h.Name)
				continue
			} else if !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("find host %s: %w", h.Name, err)
			}
			h.Source, h.CreatedAt, h.UpdatedAt = SourceSync, at, at
			if err := insertHost(ctx, tx, h); err != nil {
				return err
			}
		}
		slices.Sort(skipped)
		raw, _ := json.Marshal(nonNil(skipped))
		if _, err := tx.ExecContext(ctx, `UPDATE sync_status SET last_attempt_at = $1, last_success_at = $1, last_error = '', hosts = $2, skipped = $3 WHERE id = 1`,
			at.UTC(), len(hosts)-len(skipped), string(raw)); err != nil {
			return fmt.Errorf("record import: %w", err)
		}
		_, err = outbox.Append(ctx, tx, "inventory.synced", "sync", 0, map[string]any{"hosts": len(hosts) - len(skipped), "skipped": len(skipped)})
		return err
	})
	return skipped, err
}

// SyncFailed records a failed import; the inventory stays as it was.
func (s *Store) SyncFailed(ctx context.Context, at time.Time, reason string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE sync_status SET last_attempt_at = $1, last_error = $2 WHERE id = 1`, at.UTC(), reason)
	if err != nil {
		return fmt.Errorf("record failed import: %w", err)
	}
	return nil
}

// SyncState returns the last import's outcome.
func (s *Store) SyncState(ctx context.Context) (SyncState, error) {
	var st SyncState
	var attempt, success sql.NullTime
	var skipped string
	if err := s.db.QueryRowContext(ctx, `SELECT last_attempt_at, last_success_at, last_error, hosts, skipped FROM sync_status WHERE id = 1`).
		Scan(&attempt, &success, &st.LastError, &st.Hosts, &skipped); err != nil {
		return st, fmt.Errorf("read sync status: %w", err)
	}
	if attempt.Valid {
		t := attempt.Time.UTC()
		st.LastAttempt = &t
	}
	if success.Valid {
		t := success.Time.UTC()
		st.LastSuccess = &t
	}
	_ = json.Unmarshal([]byte(skipped), &st.Skipped)
	return st, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
