// Package store opens the databases the control-plane services keep their
// state in, applies each service's embedded migrations and gives services
// one small query API over the two supported engines: PostgreSQL (through
// pgx, one schema per service) and SQLite (pure Go, one file per service),
// the embedded default.
//
// Services write their SQL once, with $1-style placeholders and portable
// types; the few places where the engines differ (row locking) are asked of
// the DB (see SkipLocked). One contract test suite per service runs every
// store method against both engines.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialect names a database engine.
type Dialect string

const (
	Postgres Dialect = "postgres"
	SQLite   Dialect = "sqlite"
)

var (
	// ErrNotFound means the row asked for does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict means a unique constraint refused the write.
	ErrConflict = errors.New("already exists")
)

// Querier is what DB and Tx have in common, so store methods can run inside
// or outside a transaction.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	Dialect() Dialect
}

// DB is one service's database handle.
type DB struct {
	sql     *sql.DB
	dialect Dialect
	schema  string
}

// Options tune Open. Zero values take defaults.
type Options struct {
	// MaxConns caps the Postgres pool (default 20). SQLite always uses one
	// connection: it has a single writer anyway, and one connection never
	// sees SQLITE_BUSY.
	MaxConns int
}

// Open connects to url for the service whose schema is named schema.
//
// url is either a PostgreSQL URL (postgres://...), where the service's
// tables live in the schema of that name, or "sqlite:DIR", where they live
// in DIR/<schema>.db. Open does not migrate; call Migrate.
func Open(ctx context.Context, url, schema string, opts Options) (*DB, error) {
	switch {
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return openPostgres(ctx, url, schema, opts)
	case strings.HasPrefix(url, "sqlite:"):
		return openSQLite(ctx, strings.TrimPrefix(url, "sqlite:"), schema)
	default:
		return nil, fmt.Errorf("database url %q: want postgres://... or sqlite:DIR", redactURL(url))
	}
}

func openPostgres(ctx context.Context, url, schema string, opts Options) (*DB, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	// Each service sees only its own schema; its SQL is unqualified.
	cfg.RuntimeParams["search_path"] = schema
	db := stdlib.OpenDB(*cfg)
	maxConns := opts.MaxConns
	if maxConns <= 0 {
		maxConns = 20
	}
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("connect to postgres (%s): %w", redactURL(url), err)
	}
	return &DB{sql: db, dialect: Postgres, schema: schema}, nil
}

func openSQLite(ctx context.Context, dir, schema string) (*DB, error) {
	if dir == "" {
		return nil, errors.New("sqlite url needs a directory: sqlite:DIR")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	path := filepath.Join(dir, schema+".db")
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)" +
		"&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	return &DB{sql: db, dialect: SQLite, schema: schema}, nil
}

// Close releases the connections.
func (db *DB) Close() error { return db.sql.Close() }

// Dialect reports the engine.
func (db *DB) Dialect() Dialect { return db.dialect }

// Schema is the service schema this handle is for.
func (db *DB) Schema() string { return db.schema }

// Ping checks the database answers.
func (db *DB) Ping(ctx context.Context) error { return db.sql.PingContext(ctx) }

func (db *DB) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return db.sql.ExecContext(ctx, rebind(db.dialect, q), args...)
}

func (db *DB) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return db.sql.QueryContext(ctx, rebind(db.dialect, q), args...)
}

func (db *DB) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return db.sql.QueryRowContext(ctx, rebind(db.dialect, q), args...)
}

// Tx is a transaction; see DB.InTx.
type Tx struct {
	tx      *sql.Tx
	dialect Dialect
	after   []func()
}

func (tx *Tx) Dialect() Dialect { return tx.dialect }

func (tx *Tx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return tx.tx.ExecContext(ctx, rebind(tx.dialect, q), args...)
}

func (tx *Tx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return tx.tx.QueryContext(ctx, rebind(tx.dialect, q), args...)
}

func (tx *Tx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return tx.tx.QueryRowContext(ctx, rebind(tx.dialect, q), args...)
}

// AfterCommit registers fn to run once the transaction has committed, e.g.
// to wake waiters about the rows it wrote. It does not run on rollback.
func (tx *Tx) AfterCommit(fn func()) { tx.after = append(tx.after, fn) }

// Stats is the connection pool's state, for Prometheus.
func (db *DB) Stats() sql.DBStats { return db.sql.Stats() }

// InTx runs fn in a transaction, committing when fn returns nil and rolling
// back otherwise. On SQLite the transaction takes the write lock at once.
func (db *DB) InTx(ctx context.Context, fn func(tx *Tx) error) error {
	sqlTx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	tx := &Tx{tx: sqlTx, dialect: db.dialect}
	if err := fn(tx); err != nil {
		_ = sqlTx.Rollback()
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", Translate(err))
	}
	for _, f := range tx.after {
		f()
	}
	return nil
}

// SkipLocked is the row-locking clause a claim query appends to its inner
// SELECT, locking the rows of table (an alias; the query may join others):
// FOR UPDATE OF table SKIP LOCKED on Postgres; nothing on SQLite, whose
// single writer already serialises claims.
func SkipLocked(q Querier, table string) string {
	if q.Dialect() == Postgres {
		return " FOR UPDATE OF " + table + " SKIP LOCKED"
	}
	return ""
}

// ForUpdate is the row-locking clause of a SELECT that must hold its rows
// until commit: FOR UPDATE on Postgres; nothing on SQLite, whose
// transactions hold the write lock from their start.
func ForUpdate(q Querier) string {
	if q.Dialect() == Postgres {
		return " FOR UPDATE"
	}
	return ""
}

var placeholder = regexp.MustCompile(`\$(\d+)`)

// rebind turns $N placeholders into SQLite's numbered ?N form, so the same
// SQL text serves both engines even when a parameter repeats.
func rebind(d Dialect, q string) string {
	if d != SQLite {
		return q
	}
	return placeholder.ReplaceAllString(q, "?$1")
}

// Translate maps driver errors to the package's sentinel errors, keeping the
// original in the chain.
func Translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return fmt.Errorf("%w: %s", ErrConflict, pgErr.ConstraintName)
	}
	var liteErr *sqlite.Error
	if errors.As(err, &liteErr) {
		switch liteErr.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("%w: %s", ErrConflict, liteErr.Error())
		}
	}
	return err
}

// redactURL hides a password in a database URL for error messages.
func redactURL(url string) string {
	at := strings.LastIndex(url, "@")
	scheme := strings.Index(url, "://")
	if at < 0 || scheme < 0 {
		return url
	}
	userinfo := url[scheme+3 : at]
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		return url[:scheme+3] + user + ":xxxxx" + url[at:]
	}
	return url
}
