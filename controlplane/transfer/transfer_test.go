package transfer

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"math"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// migrations of a test schema with every column type the services use,
// a foreign key, a serial id and a seeded singleton row.
var migrations = fstest.MapFS{
	"postgres/0001_init.sql": {Data: []byte(`
CREATE TABLE parents (id TEXT PRIMARY KEY, n BIGINT NOT NULL, ok BOOLEAN NOT NULL, at TIMESTAMPTZ, raw BYTEA, doc JSONB);
CREATE TABLE children (seq BIGSERIAL PRIMARY KEY, parent_id TEXT NOT NULL REFERENCES parents (id), note TEXT NOT NULL);
CREATE TABLE head (id INTEGER PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO head (id, n) VALUES (1, 0);`)},
	"sqlite/0001_init.sql": {Data: []byte(`
CREATE TABLE parents (id TEXT PRIMARY KEY, n INTEGER NOT NULL, ok BOOLEAN NOT NULL, at TIMESTAMP, raw BLOB, doc TEXT);
CREATE TABLE children (seq INTEGER PRIMARY KEY AUTOINCREMENT, parent_id TEXT NOT NULL REFERENCES parents (id), note TEXT NOT NULL);
CREATE TABLE head (id INTEGER PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO head (id, n) VALUES (1, 0);`)},
}

func migrator(ctx context.Context, db *store.DB, _ string) ([]string, error) {
	if err := db.Migrate(ctx, migrations); err != nil {
		return nil, err
	}
	return store.SeededTables(migrations, db.Dialect())
}

type parent struct {
	id  string
	n   int64
	ok  bool
	at  *time.Time
	raw []byte
	doc *string
}

func readAll(t *testing.T, db *store.DB) ([]parent, []string, int64) {
	t.Helper()
	ctx := context.Background()
	rows, err := db.QueryContext(ctx, `SELECT id, n, ok, at, raw, doc FROM parents ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ps []parent
	for rows.Next() {
		var p parent
		if err := rows.Scan(&p.id, &p.n, &p.ok, &p.at, &p.raw, &p.doc); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	var notes []string
	crow, err := db.QueryContext(ctx, `SELECT note FROM children ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer crow.Close()
	for crow.Next() {
		var n string
		_ = crow.Scan(&n)
		notes = append(notes, n)
	}
	var head int64
	if err := db.QueryRowContext(ctx, `SELECT n FROM head WHERE id = 1`).Scan(&head); err != nil {
		t.Fatal(err)
	}
	return ps, notes, head
}

// TestRoundTrip: rows with edge values go SQLite -> PostgreSQL -> SQLite
// unchanged (times to the microsecond PostgreSQL keeps), children after
// their parents, the serial continues, and the seeded row is replaced.
func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, from := range storetest.Dialects() {
		to := store.Postgres
		if from == store.Postgres {
			to = store.SQLite
		}
		t.Run(string(from)+"-to-"+string(to), func(t *testing.T) {
			srcURL := storetest.NewURL(t, from)
			src := storetest.OpenURL(t, srcURL, "things", migrations)
			at := time.Date(2026, 3, 29, 1, 30, 0, 123456000, time.UTC)
			doc := `{"k": "v"}`
			for _, q := range []struct {
				sql  string
				args []any
			}{
				{`INSERT INTO parents (id, n, ok, at, raw, doc) VALUES ($1, $2, $3, $4, $5, $6)`, []any{"a", int64(math.MaxInt64), true, at, []byte{0, 1, 255}, doc}},
				{`INSERT INTO parents (id, n, ok, at, raw, doc) VALUES ($1, $2, $3, $4, $5, $6)`, []any{"b ünïcode", int64(math.MinInt64), false, nil, nil, nil}},
				{`INSERT INTO children (parent_id, note) VALUES ($1, $2)`, []any{"a", "first"}},
				{`INSERT INTO children (parent_id, note) VALUES ($1, $2)`, []any{"b ünïcode", "second\nline"}},
				{`UPDATE head SET n = 42 WHERE id = 1`, nil},
			} {
				if _, err := src.ExecContext(ctx, q.sql, q.args...); err != nil {
					t.Fatal(err)
				}
			}
			var file bytes.Buffer
			if err := Export(ctx, srcURL, []string{"things"}, &file, nil); err != nil {
				t.Fatal(err)
			}
			dstURL := storetest.NewURL(t, to)
			if err := Import(ctx, dstURL, bytes.NewReader(file.Bytes()), migrator, nil); err != nil {
				t.Fatal(err)
			}
			dst := storetest.OpenURL(t, dstURL, "things", migrations)
			wantP, wantC, wantH := readAll(t, src)
			gotP, gotC, gotH := readAll(t, dst)
			if len(gotP) != 2 || gotP[0].n != math.MaxInt64 || gotP[1].n != math.MinInt64 || !gotP[0].ok || gotP[1].ok ||
				gotP[0].at == nil || !gotP[0].at.Equal(*wantP[0].at) || !bytes.Equal(gotP[0].raw, []byte{0, 1, 255}) ||
				gotP[1].at != nil || gotP[1].raw != nil || gotP[1].doc != nil || gotP[1].id != "b ünïcode" ||
				gotP[0].doc == nil || strings.ReplaceAll(*gotP[0].doc, " ", "") != `{"k":"v"}` {
				t.Fatalf("parents: got %+v, want %+v", gotP, wantP)
			}
			if strings.Join(gotC, "|") != strings.Join(wantC, "|") || gotH != wantH || gotH != 42 {
				t.Fatalf("children %q head %d, want %q and %d", gotC, gotH, wantC, wantH)
			}
			// The serial goes on after the imported ids.
			if _, err := dst.ExecContext(ctx, `INSERT INTO children (parent_id, note) VALUES ($1, $2)`, "a", "third"); err != nil {
				t.Fatalf("a new row after the import: %v", err)
			}
			// A second import is refused: the target has data now.
			err := Import(ctx, dstURL, bytes.NewReader(file.Bytes()), migrator, nil)
			if err == nil || !strings.Contains(err.Error(), "already has rows") {
				t.Fatalf("second import: %v", err)
			}
		})
	}
}

// TestDamagedFile: a file cut short is refused and leaves the target's
// schema as the migrations made it.
func TestDamagedFile(t *testing.T) {
	ctx := context.Background()
	srcURL := storetest.NewURL(t, store.SQLite)
	src := storetest.OpenURL(t, srcURL, "things", migrations)
	for i := 0; i < 50; i++ {
		if _, err := src.ExecContext(ctx, `INSERT INTO parents (id, n, ok) VALUES ($1, $2, $3)`, strings.Repeat("x", i+1), int64(i), true); err != nil {
			t.Fatal(err)
		}
	}
	var file bytes.Buffer
	if err := Export(ctx, srcURL, []string{"things"}, &file, nil); err != nil {
		t.Fatal(err)
	}
	// Cut the uncompressed stream in the middle of the rows.
	var cut bytes.Buffer
	{
		raw := decompress(t, file.Bytes())
		recompress(t, &cut, raw[:len(raw)/2])
	}
	dstURL := storetest.NewURL(t, store.Postgres)
	if err := Import(ctx, dstURL, &cut, migrator, nil); err == nil {
		t.Fatal("a file cut short was imported")
	}
	dst := storetest.OpenURL(t, dstURL, "things", migrations)
	if ps, _, head := readAll(t, dst); len(ps) != 0 || head != 0 {
		t.Fatalf("a failed import left %d parents, head %d", len(ps), head)
	}
	if err := Import(ctx, dstURL, bytes.NewReader([]byte("not gzip")), migrator, nil); err == nil || !strings.Contains(err.Error(), "not an export file") {
		t.Fatalf("garbage: %v", err)
	}

	// A file one of whose schemas is of another version is refused before
	// any schema is written.
	raw := decompress(t, file.Bytes())
	other := bytes.Replace(raw, []byte(`"schemas":{"things":1}`), []byte(`"schemas":{"things":1,"zz_other":99}`), 1)
	if bytes.Equal(other, raw) {
		t.Fatalf("no schemas in the header: %.200s", raw)
	}
	var mixed bytes.Buffer
	recompress(t, &mixed, other)
	fresh := storetest.NewURL(t, store.Postgres)
	if err := Import(ctx, fresh, &mixed, migrator, nil); err == nil || !strings.Contains(err.Error(), "zz_other: the export is at migration 99") {
		t.Fatalf("a schema of another version: %v", err)
	}
	if ps, _, _ := readAll(t, storetest.OpenURL(t, fresh, "things", migrations)); len(ps) != 0 {
		t.Fatalf("a refused import wrote %d rows", len(ps))
	}
}

func decompress(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func recompress(t *testing.T, w io.Writer, raw []byte) {
	t.Helper()
	zw := gzip.NewWriter(w)
	if _, err := zw.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
}
