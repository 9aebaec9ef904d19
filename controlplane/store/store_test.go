package store_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

var migrations = fstest.MapFS{
	"postgres/0001_a.sql": {Data: []byte(`CREATE TABLE things (id TEXT PRIMARY KEY, n BIGINT NOT NULL)`)},
	"postgres/0002_b.sql": {Data: []byte(`ALTER TABLE things ADD COLUMN note TEXT NOT NULL DEFAULT ''`)},
	"sqlite/0001_a.sql":   {Data: []byte(`CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`)},
	"sqlite/0002_b.sql":   {Data: []byte(`ALTER TABLE things ADD COLUMN note TEXT NOT NULL DEFAULT ''`)},
}

// TestMigrateConcurrently: replicas starting at once all succeed and each
// migration is applied exactly once.
func TestMigrateConcurrently(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			url := storetest.NewURL(t, d)
			ctx := context.Background()
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for i := 0; i < 8; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					db, err := store.Open(ctx, url, "svc", store.Options{})
					if err != nil {
						errs <- err
						return
					}
					defer db.Close()
					errs <- db.Migrate(ctx, migrations)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			db := storetest.OpenURL(t, url, "svc", migrations)
			var n int
			if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 2 {
				t.Fatalf("schema_migrations has %d rows, want 2", n)
			}
		})
	}
}

// TestQueriesAndErrors: placeholders (repeated and out of order), the
// error translation and transactions behave the same on both engines.
func TestQueriesAndErrors(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := storetest.Open(t, d, "svc", migrations)
			ctx := context.Background()
			if _, err := db.ExecContext(ctx, `INSERT INTO things (n, id) VALUES ($2, $1)`, "a", 1); err != nil {
				t.Fatal(err)
			}
			var n int64
			if err := db.QueryRowContext(ctx, `SELECT n FROM things WHERE id = $1 AND n = $2 AND id = $1`, "a", 1).Scan(&n); err != nil || n != 1 {
				t.Fatalf("n = %d, %v", n, err)
			}
			_, err := db.ExecContext(ctx, `INSERT INTO things (id, n) VALUES ($1, $2)`, "a", 2)
			if !errors.Is(store.Translate(err), store.ErrConflict) {
				t.Fatalf("duplicate key: %v", err)
			}
			err = db.QueryRowContext(ctx, `SELECT n FROM things WHERE id = $1`, "zz").Scan(&n)
			if !errors.Is(store.Translate(err), store.ErrNotFound) {
				t.Fatalf("no rows: %v", err)
			}
			committed := false
			rollback := errors.New("roll back")
			err = db.InTx(ctx, func(tx *store.Tx) error {
				tx.AfterCommit(func() { committed = true })
				if _, err := tx.ExecContext(ctx, `INSERT INTO things (id, n) VALUES ($1, $2)`, "b", 2); err != nil {
					return err
				}
				return rollback
			})
			if !errors.Is(err, rollback) || committed {
				t.Fatalf("rolled-back tx: err %v, after-commit ran %v", err, committed)
			}
			if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM things`).Scan(&n); err != nil || n != 1 {
				t.Fatalf("rows after rollback = %d, %v", n, err)
			}
			if err := db.InTx(ctx, func(tx *store.Tx) error {
				tx.AfterCommit(func() { committed = true })
				_, err := tx.ExecContext(ctx, `UPDATE things SET note = $1`, "x")
				return err
			}); err != nil || !committed {
				t.Fatalf("commit: %v, after-commit ran %v", err, committed)
			}
		})
	}
}

func TestOpenRejectsUnknownURL(t *testing.T) {
	_, err := store.Open(context.Background(), "mysql://u:secret@h/db", "svc", store.Options{})
	if err == nil {
		t.Fatal("mysql url accepted")
	}
	if want := "u:xxxxx@"; !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "secret") {
		t.Fatalf("error %q should redact the password", err)
	}
}
