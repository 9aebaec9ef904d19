// Package transfer copies a control plane's whole state between
// databases (opsconductor store export|import): typically from the
// embedded SQLite store to PostgreSQL when a lab becomes production, or
// between PostgreSQL servers. The export is one file of JSON lines,
// gzip-compressed: a header naming every schema with its migration
// version, then per schema its tables, each with its columns, rows and
// row count; each schema is read in one snapshot. Import first migrates
// every schema of the target to this binary's version and refuses an
// export of another version or a target that already holds data, before
// it writes anything; then it writes each schema in one transaction.
package transfer

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Format names the file format in its header.
const Format = "opsconductor-store-export"

// line is one line of the file; which fields are set says what it is.
type line struct {
	Format  string    `json:"format,omitempty"`  // header
	Version int       `json:"version,omitempty"` // header: format version
	Source  string    `json:"source,omitempty"`  // header: the source's engine
	Created time.Time `json:"created,omitzero"`  // header
	// header: every schema in the file with its migration version
	Schemas map[string]int `json:"schemas,omitempty"`

	Schema    string   `json:"schema,omitempty"`    // schema start, table start and end
	Migration int      `json:"migration,omitempty"` // schema start
	Table     string   `json:"table,omitempty"`     // table start and end
	Columns   []string `json:"columns,omitempty"`   // table start
	Row       []any    `json:"row,omitempty"`       // a row of the current table
	Rows      *int64   `json:"rows,omitempty"`      // table end: how many rows it had
	End       bool     `json:"end,omitempty"`       // the last line
}

// Progress receives a line per table copied.
type Progress func(schema, table string, rows int64)

// Export writes every table of each schema at dbURL to w.
func Export(ctx context.Context, dbURL string, schemas []string, w io.Writer, progress Progress) error {
	if dir, ok := strings.CutPrefix(dbURL, "sqlite:"); ok {
		if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("no embedded store at %s: %w", dir, err)
		}
	}
	dbs := map[string]*store.DB{}
	defer func() {
		for _, db := range dbs {
			db.Close()
		}
	}()
	head := line{Format: Format, Version: 1, Source: dialectOf(dbURL), Created: time.Now().UTC(), Schemas: map[string]int{}}
	for _, name := range schemas {
		db, err := store.Open(ctx, dbURL, name, store.Options{MaxConns: 2})
		if err != nil {
			return err
		}
		dbs[name] = db
		if head.Schemas[name], err = store.MigrationVersion(ctx, db); err != nil {
			return fmt.Errorf("schema %s: %w (is this an OpsConductor database, with every service in it?)", name, err)
		}
	}
	zw := gzip.NewWriter(w)
	bw := bufio.NewWriterSize(zw, 1<<16)
	enc := json.NewEncoder(bw)
	if err := enc.Encode(head); err != nil {
		return err
	}
	for _, name := range schemas {
		if err := exportSchema(ctx, dbs[name], name, head.Schemas[name], enc, progress); err != nil {
			return err
		}
	}
	if err := enc.Encode(line{End: true}); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

// exportSchema writes one schema, read in one snapshot: rows that refer
// to each other (a task and its output, the audit log and its head) are
// written as they stood together.
func exportSchema(ctx context.Context, db *store.DB, schema string, version int, enc *json.Encoder, progress Progress) error {
	return db.InReadTx(ctx, func(tx *store.Tx) error {
		if err := enc.Encode(line{Schema: schema, Migration: version}); err != nil {
			return err
		}
		tables, err := store.Tables(ctx, tx)
		if err != nil {
			return fmt.Errorf("schema %s: %w", schema, err)
		}
		for _, t := range tables {
			cols := make([]string, len(t.Columns))
			for i, c := range t.Columns {
				cols[i] = c.Name
			}
			if err := enc.Encode(line{Schema: schema, Table: t.Name, Columns: cols}); err != nil {
				return err
			}
			var n int64
			if err := store.EachRow(ctx, tx, t, func(row []any) error {
				n++
				return enc.Encode(line{Row: row})
			}); err != nil {
				return fmt.Errorf("schema %s: %w", schema, err)
			}
			if err := enc.Encode(line{Schema: schema, Table: t.Name, Rows: &n}); err != nil {
				return err
			}
			if progress != nil {
				progress(schema, t.Name, n)
			}
		}
		return nil
	})
}

func dialectOf(url string) string {
	if strings.HasPrefix(url, "sqlite:") {
		return string(store.SQLite)
	}
	return string(store.Postgres)
}

// Migrator migrates one schema of a target (the server package's list of
// every service's migrations) and returns the tables the migrations seed
// with rows of their own.
type Migrator func(ctx context.Context, db *store.DB, schema string) (seeded []string, err error)

// Import reads an export from r into the database at dbURL, whose
// schemas migrate brings to this version first. Every schema of the
// target must be empty.
func Import(ctx context.Context, dbURL string, r io.Reader, migrate Migrator, progress Progress) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("not an export file (gzip): %w", err)
	}
	dec := json.NewDecoder(bufio.NewReaderSize(zr, 1<<16))
	dec.UseNumber() // ids and counts beyond 2^53 stay exact
	var head line
	if err := dec.Decode(&head); err != nil || head.Format != Format {
		return fmt.Errorf("not an export file: the first line is not an %s header (%v)", Format, err)
	}
	if head.Version != 1 || len(head.Schemas) == 0 {
		return fmt.Errorf("export format version %d with %d schemas: this binary reads version 1 files that list their schemas", head.Version, len(head.Schemas))
	}
	// Everything that can refuse the import is checked before anything
	// is written: a refusal leaves the target as it was (migrated).
	targets := map[string]*store.DB{}
	seeded := map[string][]string{}
	defer func() {
		for _, db := range targets {
			db.Close()
		}
	}()
	for schema, version := range head.Schemas {
		db, err := store.Open(ctx, dbURL, schema, store.Options{MaxConns: 2})
		if err != nil {
			return err
		}
		targets[schema] = db
		if seeded[schema], err = migrate(ctx, db, schema); err != nil {
			return err
		}
		have, err := store.MigrationVersion(ctx, db)
		if err != nil {
			return fmt.Errorf("schema %s: %w", schema, err)
		}
		if have != version {
			return fmt.Errorf("schema %s: the export is at migration %d, this binary at %d: export and import with the same OpsConductor version",
				schema, version, have)
		}
		empty, table, err := db.IsEmpty(ctx, seeded[schema])
		if err != nil {
			return err
		}
		if !empty {
			return fmt.Errorf("schema %s: table %s already has rows; import only into an empty database (before any server has started on it)", schema, table)
		}
	}
	var done []string
	next := line{}
	if err := dec.Decode(&next); err != nil {
		return fmt.Errorf("read the export: %w", err)
	}
	for !next.End {
		db, ok := targets[next.Schema]
		if next.Table != "" || !ok {
			return fmt.Errorf("read the export: expected one of the schemas its header lists, got %+v", next)
		}
		if next, err = importSchema(ctx, db, next.Schema, seeded[next.Schema], dec, progress); err != nil {
			if len(done) > 0 {
				return fmt.Errorf("%w; schemas %s were already imported: drop the database and start again", err, strings.Join(done, ", "))
			}
			return err
		}
		done = append(done, db.Schema())
	}
	return nil
}

// importSchema copies one schema in one transaction and returns the line
// after it.
func importSchema(ctx context.Context, db *store.DB, schema string, seeded []string, dec *json.Decoder, progress Progress) (line, error) {
	tables, err := store.Tables(ctx, db)
	if err != nil {
		return line{}, err
	}
	var after line
	err = db.InTx(ctx, func(tx *store.Tx) error {
		for {
			var l line
			if err := dec.Decode(&l); err != nil {
				return fmt.Errorf("read the export (schema %s): %w", schema, err)
			}
			if l.Table == "" || l.Schema != schema {
				// The next schema or the end: anything else is damage,
				// found before this schema commits.
				if !l.End && (l.Schema == "" || l.Table != "") {
					return fmt.Errorf("read the export (schema %s): unexpected %+v: the file is damaged", schema, l)
				}
				after = l
				break
			}
			target, ok := store.TableNamed(tables, l.Table)
			if !ok {
				return fmt.Errorf("schema %s: the export has a table %s this version does not", schema, l.Table)
			}
			ins, err := tx.NewInserter(target, l.Columns)
			if err != nil {
				return fmt.Errorf("schema %s: %w", schema, err)
			}
			if slices.Contains(seeded, l.Table) {
				if err := ins.Clear(ctx); err != nil {
					return err
				}
			}
			var n int64
			for {
				var r line
				if err := dec.Decode(&r); err != nil {
					return fmt.Errorf("read the export (%s.%s): %w", schema, l.Table, err)
				}
				if r.Rows != nil {
					if *r.Rows != n {
						return fmt.Errorf("%s.%s: the export says %d rows, it held %d: the file is damaged", schema, l.Table, *r.Rows, n)
					}
					break
				}
				if r.Row == nil {
					return fmt.Errorf("%s.%s: the export ends inside the table: the file is damaged", schema, l.Table)
				}
				if err := ins.Insert(ctx, r.Row); err != nil {
					return fmt.Errorf("%s.%s row %d: %w", schema, l.Table, n+1, err)
				}
				n++
			}
			if progress != nil {
				progress(schema, l.Table, n)
			}
		}
		return tx.ResetSequences(ctx, tables)
	})
	if err != nil {
		return line{}, err
	}
	return after, nil
}
