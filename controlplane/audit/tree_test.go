package audit

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestCheckpoints: a signed checkpoint an auditor kept still verifies
// against the grown log; a log rewritten wholesale (a new, internally
// consistent chain and tree) verifies on its own but not against the
// checkpoint; a checkpoint signed by another key is refused.
func TestCheckpoints(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			db := storetest.Open(t, d, Schema, Migrations())
			log := NewLog(db)
			signer, verifier, err := GenerateCheckpointKey()
			if err != nil {
				t.Fatal(err)
			}
			add := func(n int, who string) {
				for i := range n {
					if _, err := log.Append(ctx, Record{Actor: who, ActorKind: "user", Action: "/x.Y/Z", Resource: fmt.Sprint(i), Outcome: "ok"}); err != nil {
						t.Fatal(err)
					}
				}
			}
			if cp, err := log.Checkpoint(ctx, signer); err != nil || cp.Size != 0 {
				t.Fatalf("checkpoint of an empty log: %+v (%v)", cp, err)
			}
			add(5, "alice")
			kept, err := log.Checkpoint(ctx, signer)
			if err != nil || kept.Size != 5 || !strings.HasPrefix(kept.Note, CheckpointOrigin+"\n") {
				t.Fatalf("checkpoint: %+v (%v)", kept, err)
			}
			if again, err := log.Checkpoint(ctx, signer); err != nil || again.Size != 5 || again.Note != kept.Note {
				t.Fatalf("a checkpoint with nothing new: %+v (%v)", again, err)
			}
			add(3, "bob")
			if problem, err := log.VerifyAgainst(ctx, kept.Note, verifier); err != nil || problem != "" {
				t.Fatalf("the grown log against the kept checkpoint: %q (%v)", problem, err)
			}
			if v, err := log.Verify(ctx); err != nil || !v.OK {
				t.Fatalf("verify: %+v (%v)", v, err)
			}
			_, otherVerifier, _ := GenerateCheckpointKey()
			if problem, _ := log.VerifyAgainst(ctx, kept.Note, otherVerifier); !strings.Contains(problem, "signature") {
				t.Fatalf("another key's verifier: %q", problem)
			}

			// Someone with the database rewrites all of it, consistently.
			for _, q := range []string{`DELETE FROM audit_log`, `DELETE FROM audit_tree`, `UPDATE audit_head SET seq = 0, hash = ''`} {
				if _, err := db.ExecContext(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			add(8, "mallory")
			if v, err := log.Verify(ctx); err != nil || !v.OK {
				t.Fatalf("the rewritten log is consistent on its own: %+v (%v)", v, err)
			}
			if problem, err := log.VerifyAgainst(ctx, kept.Note, verifier); err != nil || !strings.Contains(problem, "rewritten") {
				t.Fatalf("the rewritten log against the kept checkpoint: %q (%v)", problem, err)
			}

			// A tree that is not the records' (as when records are rewritten
			// and the old tree left in place): every stored hash replaced.
			if _, err := db.ExecContext(ctx, `UPDATE audit_tree SET hash = (SELECT hash FROM audit_tree WHERE idx = 0)`); err != nil {
				t.Fatal(err)
			}
			if v, err := log.Verify(ctx); err != nil || v.OK || !strings.Contains(v.Problem, "Merkle tree") {
				t.Fatalf("a tree that does not match the records: %+v (%v)", v, err)
			}
		})
	}
}
