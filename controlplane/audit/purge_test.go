package audit

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestPurgeExportsFirst: records older than the retention are written to
// an export file (whose hashes recompute and link) and then deleted; the
// chain verifies from its new floor, a checkpoint taken before still
// verifies, tampering after the floor is still caught, and without an
// export directory nothing is deleted.
func TestPurgeExportsFirst(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			db := storetest.Open(t, d, Schema, Migrations())
			log := NewLog(db)
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			for i := range 10 {
				log.now = func() time.Time { return t0.Add(time.Duration(i) * time.Hour) }
				if _, err := log.Append(ctx, Record{Actor: "alice", ActorKind: "user", Action: "/x.Y/Z", Resource: fmt.Sprint(i), Outcome: "ok"}); err != nil {
					t.Fatal(err)
				}
			}
			signer, verifier, _ := GenerateCheckpointKey()
			kept, err := log.Checkpoint(ctx, signer)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := log.PurgeBefore(ctx, t0.Add(5*time.Hour), 100, ""); err == nil {
				t.Fatal("purged without an export directory")
			}
			dir := t.TempDir()
			n, err := log.PurgeBefore(ctx, t0.Add(5*time.Hour), 3, dir) // a batch of 3, then the rest
			if err != nil || n != 3 {
				t.Fatalf("first batch: %d (%v)", n, err)
			}
			if n, err = log.PurgeBefore(ctx, t0.Add(5*time.Hour), 3, dir); err != nil || n != 2 {
				t.Fatalf("second batch: %d (%v)", n, err)
			}
			if n, _ = log.PurgeBefore(ctx, t0.Add(5*time.Hour), 3, dir); n != 0 {
				t.Fatalf("a third batch purged %d", n)
			}
			// The exports: 5 records, each hash recomputes and links.
			files, _ := filepath.Glob(filepath.Join(dir, "audit-*.jsonl"))
			prev, seen := "", 0
			for _, f := range files {
				fh, err := os.Open(f)
				if err != nil {
					t.Fatal(err)
				}
				sc := bufio.NewScanner(fh)
				sc.Buffer(make([]byte, 1<<20), 1<<20)
				sc.Scan() // the header
				for sc.Scan() {
					var r struct {
						Record
						Hash string `json:"hash"`
					}
					if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
						t.Fatal(err)
					}
					body, _ := json.Marshal(r.Record)
					sum := sha256.Sum256(body)
					if hex.EncodeToString(sum[:]) != r.Hash || r.PrevHash != prev {
						t.Fatalf("exported record %d does not recompute or link", r.Seq)
					}
					prev, seen = r.Hash, seen+1
				}
				fh.Close()
			}
			if seen != 5 {
				t.Fatalf("%d records exported, want 5", seen)
			}
			if v, err := log.Verify(ctx); err != nil || !v.OK || v.Records != 10 {
				t.Fatalf("verify after the purge: %+v (%v)", v, err)
			}
			if problem, err := log.VerifyAgainst(ctx, kept.Note, verifier); err != nil || problem != "" {
				t.Fatalf("the checkpoint from before the purge: %q (%v)", problem, err)
			}
			if _, err := db.ExecContext(ctx, `UPDATE audit_log SET actor = 'mallory' WHERE seq = 7`); err != nil {
				t.Fatal(err)
			}
			if v, _ := log.Verify(ctx); v.OK || v.BadSeq != 7 {
				t.Fatalf("an edit after the floor: %+v", v)
			}
			// A careful rewrite: record 7 edited, 7..10 re-chained, the head
			// and the tree's bottom level rewritten to match. Only the tree's
			// upper levels (which checkpoints sign) still tell.
			recs, _, err := log.List(ctx, LogFilter{Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			prev = ""
			for i := len(recs) - 1; i >= 0; i-- {
				r := recs[i]
				if r.Seq == 6 {
					prev = r.Hash
				}
				if r.Seq < 7 {
					continue
				}
				r.PrevHash = prev
				r.Hash = chainHash(r)
				prev = r.Hash
				for q, args := range map[string][]any{
					`UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3`: {r.PrevHash, r.Hash, r.Seq},
					`UPDATE audit_tree SET hash = $1 WHERE idx = $2`:                {tlog.RecordHash([]byte(r.Hash)).String(), tlog.StoredHashIndex(0, r.Seq-1)},
				} {
					if _, err := db.ExecContext(ctx, q, args...); err != nil {
						t.Fatal(err)
					}
				}
			}
			if _, err := db.ExecContext(ctx, `UPDATE audit_head SET hash = $1 WHERE id = 1`, prev); err != nil {
				t.Fatal(err)
			}
			if v, err := log.Verify(ctx); err != nil || v.OK || !strings.Contains(v.Problem, "Merkle tree") {
				t.Fatalf("a rewrite after the floor with the tree's bottom level: %+v (%v)", v, err)
			}
		})
	}
}
