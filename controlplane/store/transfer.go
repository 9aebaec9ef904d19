package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file moves a service's rows between engines (opsconductor store
// export|import, e.g. from the embedded SQLite to PostgreSQL). Values are
// read as the source driver gives them, written to a portable form (see
// Value), and converted on import to the type of the target column.

// Column is a table's column as the engine declares it.
type Column struct {
	Name string
	Type string // lower case: "text", "bigint", "timestamp with time zone", "integer", "blob", ...
}

// Table is a table with its columns in their declared order.
type Table struct {
	Name    string
	Columns []Column
	// refs are the tables its foreign keys point at.
	refs []string
}

// MigrationVersion is the highest migration applied to the schema q is
// in (0: none).
func MigrationVersion(ctx context.Context, q Querier) (int, error) {
	var v sql.NullInt64
	if err := q.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read the migration version: %w", err)
	}
	return int(v.Int64), nil
}

// InReadTx runs fn in a transaction that sees one snapshot of the
// schema (REPEATABLE READ on Postgres; on SQLite the transaction holds
// the database's lock), so what fn reads holds together.
func (db *DB) InReadTx(ctx context.Context, fn func(tx *Tx) error) error {
	opts := &sql.TxOptions{}
	if db.dialect == Postgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	sqlTx, err := db.sql.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer func() { _ = sqlTx.Rollback() }() // read only: nothing to commit
	return fn(&Tx{tx: sqlTx, dialect: db.dialect})
}

// Tables lists the tables of the schema q is in (not schema_migrations),
// each after the tables its foreign keys point at, so rows can be
// inserted in order.
func Tables(ctx context.Context, q Querier) ([]Table, error) {
	var names []string
	var err error
	if q.Dialect() == Postgres {
		names, err = QueryStrings(ctx, q, `SELECT table_name FROM information_schema.tables
			WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`)
	} else {
		names, err = QueryStrings(ctx, q, `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	}
	if err != nil {
		return nil, fmt.Errorf("list the tables: %w", err)
	}
	var tables []Table
	for _, name := range names {
		if name == "schema_migrations" {
			continue
		}
		// The engines' catalogs answer the same two questions: the
		// columns with their types, and the tables foreign keys point at.
		columnsQ := `SELECT name, type FROM pragma_table_info($1) ORDER BY cid`
		refsQ := `SELECT DISTINCT "table" FROM pragma_foreign_key_list($1)`
		if q.Dialect() == Postgres {
			columnsQ = `SELECT column_name, data_type FROM information_schema.columns
				WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position`
			refsQ = `SELECT DISTINCT ccu.table_name FROM information_schema.table_constraints tc
				JOIN information_schema.constraint_column_usage ccu ON ccu.constraint_name = tc.constraint_name AND ccu.table_schema = tc.table_schema
				WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = current_schema() AND tc.table_name = $1`
		}
		t := Table{Name: name}
		if t.Columns, err = queryColumns(ctx, q, columnsQ, name); err != nil {
			return nil, fmt.Errorf("read the columns of %s: %w", name, err)
		}
		if t.refs, err = QueryStrings(ctx, q, refsQ, name); err != nil {
			return nil, fmt.Errorf("read the foreign keys of %s: %w", name, err)
		}
		tables = append(tables, t)
	}
	return orderByReferences(tables)
}

// queryColumns reads (name, type) rows.
func queryColumns(ctx context.Context, q Querier, query string, args ...any) ([]Column, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Column
	for rows.Next() {
		var c Column
		if err := rows.Scan(&c.Name, &c.Type); err != nil {
			return nil, err
		}
		c.Type = strings.ToLower(c.Type)
		out = append(out, c)
	}
	return out, rows.Err()
}

// QueryStrings runs a query whose rows are one text column and returns
// them.
func QueryStrings(ctx context.Context, q Querier, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// orderByReferences puts every table after the tables it refers to.
func orderByReferences(tables []Table) ([]Table, error) {
	var out []Table
	placed := map[string]bool{}
	for len(out) < len(tables) {
		progress := false
		for _, t := range tables {
			if placed[t.Name] {
				continue
			}
			ready := true
			for _, r := range t.refs {
				if r != t.Name && !placed[r] {
					ready = false
				}
			}
			if ready {
				out, placed[t.Name], progress = append(out, t), true, true
			}
		}
		if !progress {
			return nil, fmt.Errorf("the tables' foreign keys form a cycle")
		}
	}
	return out, nil
}

// EachRow calls fn with every row of table t, its values in portable
// form (see Portable).
func EachRow(ctx context.Context, q Querier, t Table, fn func(row []any) error) error {
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = quoteIdent(c.Name)
	}
	rows, err := q.QueryContext(ctx, `SELECT `+strings.Join(cols, ", ")+` FROM `+quoteIdent(t.Name))
	if err != nil {
		return fmt.Errorf("read %s: %w", t.Name, err)
	}
	defer rows.Close()
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return fmt.Errorf("read %s: %w", t.Name, err)
		}
		for i, v := range vals {
			vals[i] = Portable(v)
		}
		if err := fn(vals); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Portable is v as JSON can carry it without loss: nil, bool, int64,
// float64 and string as they are, bytes as {"b64": ...}, times as
// {"t": RFC 3339 with nanoseconds}.
func Portable(v any) any {
	switch x := v.(type) {
	case []byte:
		return map[string]string{"b64": base64.StdEncoding.EncodeToString(x)}
	case time.Time:
		return map[string]string{"t": x.UTC().Format(time.RFC3339Nano)}
	default:
		return x
	}
}

// SeededTables are the tables the migrations insert rows into (a
// singleton such as the audit log's head): right after migrating they
// are not empty, yet hold no data of anyone's.
func SeededTables(migrations fs.FS, d Dialect) ([]string, error) {
	entries, err := fs.ReadDir(migrations, string(d))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		raw, err := fs.ReadFile(migrations, path.Join(string(d), e.Name()))
		if err != nil {
			return nil, err
		}
		for _, m := range insertInto.FindAllStringSubmatch(string(raw), -1) {
			if !slices.Contains(out, m[1]) {
				out = append(out, m[1])
			}
		}
	}
	return out, nil
}

var insertInto = regexp.MustCompile(`(?i)INSERT\s+INTO\s+"?([a-z_0-9]+)"?`)

// IsEmpty reports whether every table of the schema but the seeded ones
// is empty, and if not, names one that is not.
func (db *DB) IsEmpty(ctx context.Context, seeded []string) (bool, string, error) {
	tables, err := Tables(ctx, db)
	if err != nil {
		return false, "", err
	}
	for _, t := range tables {
		if slices.Contains(seeded, t.Name) {
			continue
		}
		var one int
		err := db.QueryRowContext(ctx, `SELECT 1 FROM `+quoteIdent(t.Name)+` LIMIT 1`).Scan(&one)
		if err == nil {
			return false, t.Name, nil
		}
		if err != sql.ErrNoRows {
			return false, "", fmt.Errorf("read %s.%s: %w", db.schema, t.Name, err)
		}
	}
	return true, "", nil
}

// Inserter writes exported rows into one table of a transaction,
// converting each portable value to its target column's type.
type Inserter struct {
	tx     *Tx
	table  Table
	target []Column // the target's columns, in the order of the export's
	query  string
}

// NewInserter prepares inserts into table with the export's columns,
// which must all exist in the target (the schema versions match).
func (tx *Tx) NewInserter(target Table, columns []string) (*Inserter, error) {
	byName := map[string]Column{}
	for _, c := range target.Columns {
		byName[c.Name] = c
	}
	in := &Inserter{tx: tx, table: target}
	quoted := make([]string, len(columns))
	marks := make([]string, len(columns))
	for i, name := range columns {
		c, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("table %s has no column %s here", target.Name, name)
		}
		in.target = append(in.target, c)
		quoted[i] = quoteIdent(name)
		marks[i] = "$" + strconv.Itoa(i+1)
	}
	in.query = `INSERT INTO ` + quoteIdent(target.Name) + ` (` + strings.Join(quoted, ", ") + `) VALUES (` + strings.Join(marks, ", ") + `)`
	return in, nil
}

// Clear deletes the rows the migrations seeded into the table, before
// the export's own are written.
func (in *Inserter) Clear(ctx context.Context) error {
	if _, err := in.tx.ExecContext(ctx, `DELETE FROM `+quoteIdent(in.table.Name)); err != nil {
		return fmt.Errorf("clear %s: %w", in.table.Name, err)
	}
	return nil
}

// Insert writes one row.
func (in *Inserter) Insert(ctx context.Context, row []any) error {
	if len(row) != len(in.target) {
		return fmt.Errorf("%s: a row of %d values for %d columns", in.table.Name, len(row), len(in.target))
	}
	args := make([]any, len(row))
	for i, v := range row {
		a, err := convert(v, in.target[i].Type)
		if err != nil {
			return fmt.Errorf("%s.%s: %w", in.table.Name, in.target[i].Name, err)
		}
		args[i] = a
	}
	if _, err := in.tx.ExecContext(ctx, in.query, args...); err != nil {
		return fmt.Errorf("insert into %s: %w", in.table.Name, err)
	}
	return nil
}

// convert turns a portable value (as encoding/json decoded it, numbers as
// json.Number) into what the target column's type takes.
func convert(v any, colType string) (any, error) {
	if v == nil {
		return nil, nil
	}
	if m, ok := v.(map[string]any); ok {
		if s, ok := m["b64"].(string); ok {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return nil, err
			}
			v = b
		} else if s, ok := m["t"].(string); ok {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return nil, err
			}
			v = t
		} else {
			return nil, fmt.Errorf("unknown value %v", m)
		}
	}
	switch {
	case strings.Contains(colType, "timestamp") || colType == "datetime" || colType == "date":
		switch x := v.(type) {
		case time.Time:
			return x, nil
		case string:
			return parseTime(x)
		}
	case colType == "boolean" || colType == "bool":
		switch x := v.(type) {
		case bool:
			return x, nil
		case json.Number:
			return x.String() != "0", nil
		case string:
			return strconv.ParseBool(x)
		}
	case strings.Contains(colType, "int") || colType == "serial" || colType == "bigserial":
		switch x := v.(type) {
		case json.Number:
			return x.Int64()
		case bool:
			if x {
				return int64(1), nil
			}
			return int64(0), nil
		case string:
			return strconv.ParseInt(x, 10, 64)
		}
	case colType == "real" || colType == "double precision" || colType == "numeric" || colType == "float":
		if x, ok := v.(json.Number); ok {
			f, err := x.Float64()
			if err != nil || math.IsInf(f, 0) {
				return nil, fmt.Errorf("%q is not a number", x)
			}
			return f, nil
		}
	case colType == "bytea" || colType == "blob":
		switch x := v.(type) {
		case []byte:
			return x, nil
		case string:
			return []byte(x), nil
		}
	default: // text, jsonb, varchar and the rest take text
		switch x := v.(type) {
		case string:
			return x, nil
		case []byte:
			return string(x), nil
		case json.Number:
			return x.String(), nil
		case bool:
			return strconv.FormatBool(x), nil
		case time.Time:
			return x.UTC().Format(time.RFC3339Nano), nil
		}
	}
	return nil, fmt.Errorf("cannot store %T %v in a %s column", v, v, colType)
}

// timeLayouts are the forms SQLite keeps times in (as the driver wrote
// them, or as SQL's CURRENT_TIMESTAMP did).
var timeLayouts = []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999-07:00", "2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05", "2006-01-02"}

func parseTime(s string) (time.Time, error) {
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time", s)
}

// ResetSequences moves every serial column's sequence past the rows an
// import wrote with explicit ids (Postgres; SQLite's AUTOINCREMENT follows
// by itself).
func (tx *Tx) ResetSequences(ctx context.Context, tables []Table) error {
	if tx.Dialect() != Postgres {
		return nil
	}
	for _, t := range tables {
		for _, c := range t.Columns {
			var seq sql.NullString
			if err := tx.QueryRowContext(ctx, `SELECT pg_get_serial_sequence($1, $2)`, quoteIdent(t.Name), c.Name).Scan(&seq); err != nil {
				return fmt.Errorf("find the sequence of %s.%s: %w", t.Name, c.Name, err)
			}
			if !seq.Valid {
				continue
			}
			if _, err := tx.ExecContext(ctx, `SELECT setval($1, COALESCE((SELECT MAX(`+quoteIdent(c.Name)+`) FROM `+quoteIdent(t.Name)+`), 0) + 1, false)`, seq.String); err != nil {
				return fmt.Errorf("move the sequence of %s.%s: %w", t.Name, c.Name, err)
			}
		}
	}
	return nil
}

// TableNamed finds a table by name.
func TableNamed(tables []Table, name string) (Table, bool) {
	i := slices.IndexFunc(tables, func(t Table) bool { return t.Name == name })
	if i < 0 {
		return Table{}, false
	}
	return tables[i], true
}
