package audit

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/opsconductor/opsconductor/controlplane/store"
)

// The audit log is also a Merkle tree (RFC 6962, as Go's checksum
// database keeps it, with golang.org/x/mod/sumdb/tlog): each record's
// chain hash is a leaf. The hash chain shows a record edited, removed or
// moved; the tree lets an auditor who kept a signed checkpoint of its head
// (a note signed with the server's key) prove later that today's log
// still extends it, so the history was not rewritten wholesale by someone
// who could write to the database.

// CheckpointOrigin names the log in signed checkpoints.
const CheckpointOrigin = "opsconductor audit log"

// hashReader reads stored tree hashes in a transaction (or the database).
type hashReader struct {
	ctx context.Context
	q   store.Querier
}

// readChunk bounds the placeholders of one query (SQLite allows 32,766).
const readChunk = 1000

func (h hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	if len(indexes) > readChunk {
		out := make([]tlog.Hash, 0, len(indexes))
		for lo := 0; lo < len(indexes); lo += readChunk {
			part, err := h.ReadHashes(indexes[lo:min(lo+readChunk, len(indexes))])
			if err != nil {
				return nil, err
			}
			out = append(out, part...)
		}
		return out, nil
	}
	if len(indexes) == 0 {
		return nil, nil
	}
	at := map[int64][]int{} // index -> its positions in indexes
	args := make([]string, len(indexes))
	vals := make([]any, len(indexes))
	for i, idx := range indexes {
		at[idx] = append(at[idx], i)
		args[i] = fmt.Sprintf("$%d", i+1)
		vals[i] = idx
	}
	rows, err := h.q.QueryContext(h.ctx, `SELECT idx, hash FROM audit_tree WHERE idx IN (`+strings.Join(args, ", ")+`)`, vals...)
	if err != nil {
		return nil, fmt.Errorf("read audit tree: %w", err)
	}
	defer rows.Close()
	out := make([]tlog.Hash, len(indexes))
	found := 0
	for rows.Next() {
		var idx int64
		var enc string
		if err := rows.Scan(&idx, &enc); err != nil {
			return nil, err
		}
		h, err := tlog.ParseHash(enc)
		if err != nil {
			return nil, fmt.Errorf("audit tree hash %d: %w", idx, err)
		}
		for _, i := range at[idx] {
			out[i] = h
		}
		found++
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if found < len(at) {
		return nil, fmt.Errorf("audit tree: %d of %d hashes missing", len(at)-found, len(at))
	}
	return out, nil
}

// addLeaf stores the tree hashes a new record (the index-th, from 0)
// brings, in the record's transaction.
func addLeaf(ctx context.Context, tx *store.Tx, index int64, recordHash string) error {
	hashes, err := tlog.StoredHashes(index, []byte(recordHash), hashReader{ctx, tx})
	if err != nil {
		return fmt.Errorf("grow the audit tree: %w", err)
	}
	start := tlog.StoredHashIndex(0, index)
	for i, h := range hashes {
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_tree (idx, hash) VALUES ($1, $2)`, start+int64(i), h.String()); err != nil {
			return fmt.Errorf("store audit tree hash: %w", err)
		}
	}
	return nil
}

// Checkpoint is a signed statement of the tree's size and head.
type Checkpoint struct {
	Size     int64
	TreeHash string
	// Note is the signed note (text and signature lines), what an auditor
	// keeps.
	Note string
	At   time.Time
}

// GenerateCheckpointKey makes a signing key and its verifier key for
// --audit-signing-key and the auditors.
func GenerateCheckpointKey() (signer, verifier string, err error) {
	return note.GenerateKey(rand.Reader, strings.ReplaceAll(CheckpointOrigin, " ", "-"))
}

// Checkpoint signs the tree's current head with signerKey and stores it
// (nothing new when the tree has not grown since the last one).
func (l *Log) Checkpoint(ctx context.Context, signerKey string) (Checkpoint, error) {
	signer, err := note.NewSigner(signerKey)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit signing key: %w", err)
	}
	var cp Checkpoint
	err = l.db.InTx(ctx, func(tx *store.Tx) error {
		var size int64
		if err := tx.QueryRowContext(ctx, `SELECT seq FROM audit_head WHERE id = 1`+store.ForUpdate(tx)).Scan(&size); err != nil {
			return fmt.Errorf("read the audit log's head: %w", err)
		}
		var last int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints`).Scan(&last); err != nil {
			return err
		}
		if size == 0 || size == last {
			got, err := latestCheckpoint(ctx, tx)
			cp = got
			return err
		}
		th, err := tlog.TreeHash(size, hashReader{ctx, tx})
		if err != nil {
			return fmt.Errorf("audit tree head: %w", err)
		}
		signed, err := note.Sign(&note.Note{Text: CheckpointOrigin + "\n" + string(tlog.FormatTree(tlog.Tree{N: size, Hash: th}))}, signer)
		if err != nil {
			return fmt.Errorf("sign checkpoint: %w", err)
		}
		cp = Checkpoint{Size: size, TreeHash: th.String(), Note: string(signed), At: l.now().UTC().Truncate(time.Microsecond)}
		_, err = tx.ExecContext(ctx, `INSERT INTO audit_checkpoints (size, tree_hash, note, at) VALUES ($1, $2, $3, $4)`, cp.Size, cp.TreeHash, cp.Note, cp.At)
		return err
	})
	return cp, err
}

func latestCheckpoint(ctx context.Context, q store.Querier) (Checkpoint, error) {
	var cp Checkpoint
	err := q.QueryRowContext(ctx, `SELECT size, tree_hash, note, at FROM audit_checkpoints ORDER BY size DESC LIMIT 1`).Scan(&cp.Size, &cp.TreeHash, &cp.Note, &cp.At)
	if errors.Is(err, sql.ErrNoRows) {
		return Checkpoint{}, nil
	}
	cp.At = cp.At.UTC()
	return cp, err
}

// LatestCheckpoint is the newest signed checkpoint (Size 0: none yet).
func (l *Log) LatestCheckpoint(ctx context.Context) (Checkpoint, error) {
	return latestCheckpoint(ctx, l.db)
}

// VerifyAgainst checks a checkpoint an auditor kept: its signature (with
// verifierKey) and that today's log extends the tree it states. It
// returns a problem ("" when all holds).
func (l *Log) VerifyAgainst(ctx context.Context, signedNote, verifierKey string) (string, error) {
	verifier, err := note.NewVerifier(verifierKey)
	if err != nil {
		return "", fmt.Errorf("audit verifier key: %w", err)
	}
	n, err := note.Open([]byte(signedNote), note.VerifierList(verifier))
	if err != nil {
		return "the checkpoint's signature does not verify with this key: " + err.Error(), nil
	}
	origin, treeText, ok := strings.Cut(n.Text, "\n")
	if !ok || origin != CheckpointOrigin {
		return "the checkpoint is not one of this audit log", nil
	}
	old, err := tlog.ParseTree([]byte(treeText))
	if err != nil {
		return "the checkpoint's tree does not parse: " + err.Error(), nil
	}
	var size int64
	if err := l.db.QueryRowContext(ctx, `SELECT seq FROM audit_head WHERE id = 1`).Scan(&size); err != nil {
		return "", fmt.Errorf("read the audit log's head: %w", err)
	}
	if size < old.N {
		return fmt.Sprintf("the log holds %d records, fewer than the %d the checkpoint states: records were removed", size, old.N), nil
	}
	r := hashReader{ctx, l.db}
	now, err := tlog.TreeHash(size, r)
	if err != nil {
		return "the log's tree cannot be read whole: " + err.Error(), nil
	}
	proof, err := tlog.ProveTree(size, old.N, r)
	if err != nil {
		return "no proof that the log extends the checkpoint: " + err.Error(), nil
	}
	if err := tlog.CheckTree(proof, size, now, old.N, old.Hash); err != nil {
		return fmt.Sprintf("the log of %d records does not extend the checkpoint of %d: its history was rewritten (%v)", size, old.N, err), nil
	}
	return "", nil
}

// treeHashOfLeaves is the tree hash computed from scratch over leaf
// hashes (for Verify: the stored tree must be the records' own).
func treeHashOfLeaves(leaves []tlog.Hash) (tlog.Hash, error) {
	var stored []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = stored[x]
		}
		return out, nil
	})
	for i, leaf := range leaves {
		hs, err := tlog.StoredHashesForRecordHash(int64(i), leaf, r)
		if err != nil {
			return tlog.Hash{}, err
		}
		stored = append(stored, hs...)
	}
	return tlog.TreeHash(int64(len(leaves)), r)
}

// RunCheckpoints signs a checkpoint every interval while the log grows,
// until ctx ends. Every replica may run it: a checkpoint of a size that
// exists already is not made twice.
func (l *Log) RunCheckpoints(ctx context.Context, signerKey string, interval time.Duration, logger *zap.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := l.Checkpoint(ctx, signerKey); err != nil && ctx.Err() == nil {
			logger.Warn("audit checkpoint", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
