package store

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Migrate applies the service's migrations that have not run yet. migrations
// holds one directory per dialect ("postgres", "sqlite") of files named
// NNNN_description.sql, applied in order, each once. It is safe when several
// replicas start at once: Postgres serialises them with an advisory lock,
// SQLite with its write lock.
func (db *DB) Migrate(ctx context.Context, migrations fs.FS) error {
	dir := string(db.dialect)
	entries, err := fs.ReadDir(migrations, dir)
	if err != nil {
		return fmt.Errorf("read %s migrations: %w", dir, err)
	}
	type migration struct {
		version int
		name    string
	}
	var todo []migration
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		num, _, _ := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			return fmt.Errorf("migration %s: name must start with a number", e.Name())
		}
		todo = append(todo, migration{version: v, name: e.Name()})
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i].version < todo[j].version })

	return db.InTx(ctx, func(tx *Tx) error {
		if db.dialect == Postgres {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext('opsconductor.migrate.' || $1))`, db.schema); err != nil {
				return fmt.Errorf("lock migrations: %w", err)
			}
			if _, err := tx.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS `+quoteIdent(db.schema)); err != nil {
				return fmt.Errorf("create schema %s: %w", db.schema, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version INTEGER PRIMARY KEY,
			name TEXT NOT NULL,
			applied_at TIMESTAMP NOT NULL)`); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		applied := map[int]bool{}
		rows, err := tx.QueryContext(ctx, `SELECT version FROM schema_migrations`)
		if err != nil {
			return fmt.Errorf("read applied migrations: %w", err)
		}
		for rows.Next() {
			var v int
			if err := rows.Scan(&v); err != nil {
				rows.Close()
				return err
			}
			applied[v] = true
		}
		rows.Close()
		for _, m := range todo {
			if applied[m.version] {
				continue
			}
			body, err := fs.ReadFile(migrations, path.Join(dir, m.name))
			if err != nil {
				return fmt.Errorf("read migration %s: %w", m.name, err)
			}
			if _, err := tx.ExecContext(ctx, string(body)); err != nil {
				return fmt.Errorf("apply migration %s/%s: %w", db.schema, m.name, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`,
				m.version, m.name, time.Now().UTC()); err != nil {
				return fmt.Errorf("record migration %s: %w", m.name, err)
			}
		}
		return nil
	})
}

// MustSub returns the subdirectory dir of an embedded file system. It
// panics when dir is missing: that is a build mistake, not a runtime one.
func MustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(fmt.Sprintf("embedded %s: %v", dir, err))
	}
	if _, err := fs.ReadDir(sub, "."); err != nil {
		panic(fmt.Sprintf("embedded %s: %v", dir, err))
	}
	return sub
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
