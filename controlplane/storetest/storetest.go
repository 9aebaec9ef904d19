// Package storetest gives tests fresh, empty databases on both engines, so
// one contract test can run every store method against Postgres and SQLite.
//
// Postgres is reached at OPSCONDUCTOR_TEST_DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable); each call
// creates its own database and drops it when the test ends.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Dialects lists the engines every contract test runs against.
func Dialects() []store.Dialect { return []store.Dialect{store.Postgres, store.SQLite} }

// AdminURL is the Postgres URL tests create their databases through.
func AdminURL() string {
	if u := os.Getenv("OPSCONDUCTOR_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// NewURL returns the URL of a fresh, empty database of dialect d, removed
// when the test ends.
func NewURL(t testing.TB, d store.Dialect) string {
	t.Helper()
	if d == store.SQLite {
		return "sqlite:" + t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("connect to test postgres: %v", err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "oc_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Errorf("connect to drop test database: %v", err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(AdminURL())
	if err != nil {
		t.Fatalf("parse admin url: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// Open opens schema on a fresh database of dialect d and applies
// migrations. The handle is closed when the test ends.
func Open(t testing.TB, d store.Dialect, schema string, migrations fs.FS) *store.DB {
	t.Helper()
	return OpenURL(t, NewURL(t, d), schema, migrations)
}

// OpenURL opens schema on url and applies migrations.
func OpenURL(t testing.TB, dbURL, schema string, migrations fs.FS) *store.DB {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, dbURL, schema, store.Options{})
	if err != nil {
		t.Fatalf("open %s store: %v", schema, err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.Migrate(ctx, migrations); err != nil {
		t.Fatalf("migrate %s: %v", schema, err)
	}
	return db
}
