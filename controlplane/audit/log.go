package audit

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

// Record is one entry of the audit log: a call that changed (or tried to
// change) something, or a refused call.
type Record struct {
	Seq  int64     `json:"seq"`
	Time time.Time `json:"time"`
	// Actor is the user, token or agent that called ("" when the caller
	// could not be authenticated); ActorKind says which.
	Actor     string `json:"actor"`
	ActorKind string `json:"actor_kind"`
	Roles     string `json:"roles"`
	// Action is the RPC, e.g. /opsconductor.v1.JobService/CreateJob.
	Action   string `json:"action"`
	Resource string `json:"resource"`
	// Outcome is "ok", or the error code (permission_denied, ...).
	Outcome       string `json:"outcome"`
	Reason        string `json:"reason"`
	Peer          string `json:"peer"`
	UserAgent     string `json:"user_agent"`
	CorrelationID string `json:"correlation_id"`
	// Request is a summary of the request (JSON), secret values replaced
	// by keyed hashes.
	Request string `json:"request"`
	// CalledAt is when the call was made, for a record that waited in
	// another process's outbox before the audit service appended it
	// (split mode); Time is when it joined the chain. Absent (and so out
	// of the hash) otherwise.
	CalledAt *time.Time `json:"called_at,omitempty"`
	PrevHash string     `json:"prev_hash"`
	Hash     string     `json:"-"`
}

// chainHash is the hash a record must carry: SHA-256 over its JSON form
// (every field but the hash itself, in a fixed order), which includes the
// previous record's hash.
func chainHash(r Record) string {
	r.Time = r.Time.UTC()
	body, _ := json.Marshal(r) // a struct of strings, ints and a time: cannot fail
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// Log is the hash-chained audit log in the audit schema.
type Log struct {
	db  *store.DB
	now func() time.Time
}

// NewLog wraps a migrated audit database.
func NewLog(db *store.DB) *Log { return &Log{db: db, now: time.Now} }

const logColumns = `seq, at, actor, actor_kind, roles, action, resource, outcome, reason, peer, user_agent, correlation_id, request, prev_hash, hash, called_at`

// Append adds a record at the end of the chain and returns it as stored
// (numbered and hashed). Appends are serialised on the chain's head.
func (l *Log) Append(ctx context.Context, r Record) (Record, error) {
	out, _, err := l.appendOnce(ctx, "", r)
	return out, err
}

// AppendForwarded appends a record that came over the event bus as the
// event eventID, once: a redelivered event appends nothing and reports
// false.
func (l *Log) AppendForwarded(ctx context.Context, eventID string, r Record) (bool, error) {
	_, appended, err := l.appendOnce(ctx, eventID, r)
	return appended, err
}

// Ping checks that the log's database answers (the recorder's gate).
func (l *Log) Ping(ctx context.Context) error { return l.db.Ping(ctx) }

func (l *Log) appendOnce(ctx context.Context, eventID string, r Record) (Record, bool, error) {
	appended := false
	err := l.db.InTx(ctx, func(tx *store.Tx) error {
		var seq int64
		var prev string
		if err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`+store.ForUpdate(tx)).Scan(&seq, &prev); err != nil {
			return fmt.Errorf("read the audit log's head: %w", err)
		}
		if eventID != "" {
			// Under the head's lock: two consumers of one redelivered
			// event cannot both pass.
			var done int64
			err := tx.QueryRowContext(ctx, `SELECT seq FROM audit_forwarded WHERE event_id = $1`, eventID).Scan(&done)
			if err == nil {
				return nil
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("look up forwarded record %s: %w", eventID, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO audit_forwarded (event_id, seq) VALUES ($1, $2)`, eventID, seq+1); err != nil {
				return fmt.Errorf("note forwarded record %s: %w", eventID, err)
			}
		}
		// Stamped under the head's lock, so times follow the order of
		// the records (on one clock); the database keeps microseconds, so
		// hash what will be read back.
		r.Time = l.now().UTC().Truncate(time.Microsecond)
		r.Seq, r.PrevHash = seq+1, prev
		if r.CalledAt != nil {
			at := r.CalledAt.UTC().Truncate(time.Microsecond) // as it will be read back
			r.CalledAt = &at
		}
		r.Hash = chainHash(r)
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_log (`+logColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
			r.Seq, r.Time, r.Actor, r.ActorKind, r.Roles, r.Action, r.Resource, r.Outcome, r.Reason, r.Peer, r.UserAgent, r.CorrelationID,
			r.Request, r.PrevHash, r.Hash, r.CalledAt); err != nil {
			return fmt.Errorf("write audit record %d: %w", r.Seq, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1`, r.Seq, r.Hash); err != nil {
			return fmt.Errorf("move the audit log's head: %w", err)
		}
		appended = true
		return addLeaf(ctx, tx, r.Seq-1, r.Hash)
	})
	if err != nil {
		return Record{}, false, err
	}
	return r, appended, nil
}

// CallLog is where the recorder writes a call's record: the Log itself
// where the audit service runs, or (split mode) the outbox of the
// process's own database, which carries the record over the event bus to
// the audit service (ForwardingLog). Either way a call whose record
// cannot be stored fails.
type CallLog interface {
	Append(ctx context.Context, r Record) (Record, error)
	Ping(ctx context.Context) error
}

// ForwardedTopic is the event type of a call record on its way to the
// audit service.
const ForwardedTopic = "audit.call"

// ForwardingLog writes call records to a service's outbox for the audit
// service to append to the chain (split mode).
type ForwardingLog struct{ DB *store.DB }

// Append stores the record in the outbox; it is numbered, stamped and
// hashed when the audit service appends it, and keeps the time of the
// call as CalledAt.
func (f ForwardingLog) Append(ctx context.Context, r Record) (Record, error) {
	now := time.Now().UTC()
	r.CalledAt = &now
	err := f.DB.InTx(ctx, func(tx *store.Tx) error {
		_, err := outbox.Append(ctx, tx, ForwardedTopic, r.Action, 0, r)
		return err
	})
	return r, err
}

// Ping checks that the outbox's database answers.
func (f ForwardingLog) Ping(ctx context.Context) error { return f.DB.Ping(ctx) }

func scanRecord(row interface{ Scan(...any) error }) (Record, error) {
	var r Record
	var calledAt sql.NullTime
	err := row.Scan(&r.Seq, &r.Time, &r.Actor, &r.ActorKind, &r.Roles, &r.Action, &r.Resource, &r.Outcome, &r.Reason, &r.Peer,
		&r.UserAgent, &r.CorrelationID, &r.Request, &r.PrevHash, &r.Hash, &calledAt)
	r.Time = r.Time.UTC()
	if calledAt.Valid {
		at := calledAt.Time.UTC()
		r.CalledAt = &at
	}
	return r, err
}

// Verification is what Verify found.
type Verification struct {
	// Records is how many records were checked; Head the last one's hash.
	Records int64
	Head    string
	// OK: the chain is whole. Otherwise BadSeq is the first record that is
	// wrong (or missing) and Problem says how.
	OK      bool
	BadSeq  int64
	Problem string
}

// Verify walks the whole chain in order and reports the first record that
// was edited, deleted or moved: a record whose hash does not match its
// contents, a number missing from the sequence, a record that does not
// carry its predecessor's hash, or a chain that ends before its head says.
func (l *Log) Verify(ctx context.Context) (Verification, error) {
	// A purge moving the floor while the records are read makes the first
	// one look missing: read again then (a few times at most).
	for try := 0; ; try++ {
		v, floor, err := l.verifyOnce(ctx)
		if err != nil || v.OK || try == 3 {
			return v, err
		}
		var now int64
		if err := l.db.QueryRowContext(ctx, `SELECT floor_seq FROM audit_head WHERE id = 1`).Scan(&now); err != nil || now == floor {
			return v, err
		}
	}
}

// verifyOnce is one verification and the floor it started from.
func (l *Log) verifyOnce(ctx context.Context) (Verification, int64, error) {
	var v Verification
	var headSeq, floorSeq int64
	var headHash, floorHash string
	if err := l.db.QueryRowContext(ctx, `SELECT seq, hash, floor_seq, floor_hash FROM audit_head WHERE id = 1`).Scan(&headSeq, &headHash, &floorSeq, &floorHash); err != nil {
		return v, 0, fmt.Errorf("read the audit log's head: %w", err)
	}
	// Only up to the head just read: records appended meanwhile are the
	// next verification's.
	rows, err := l.db.QueryContext(ctx, `SELECT `+logColumns+` FROM audit_log WHERE seq <= $1 ORDER BY seq`, headSeq)
	if err != nil {
		return v, floorSeq, fmt.Errorf("read the audit log: %w", err)
	}
	defer rows.Close()
	bad := func(seq int64, format string, args ...any) (Verification, int64, error) {
		v.BadSeq, v.Problem = seq, fmt.Sprintf(format, args...)
		return v, floorSeq, nil
	}
	// Records up to the floor were exported and deleted by retention.
	want, prev := floorSeq+1, floorHash
	v.Records, v.Head = floorSeq, floorHash
	var leaves []tlog.Hash
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return v, floorSeq, fmt.Errorf("read audit record: %w", err)
		}
		switch {
		case r.Seq != want:
			return bad(want, "record %d is missing (the next one is %d): deleted", want, r.Seq)
		case r.PrevHash != prev:
			return bad(r.Seq, "record %d does not follow record %d (it carries another previous hash): records were removed, reordered or edited", r.Seq, r.Seq-1)
		case chainHash(r) != r.Hash:
			return bad(r.Seq, "record %d does not match its hash: it was edited", r.Seq)
		}
		v.Records, v.Head = r.Seq, r.Hash
		want, prev = r.Seq+1, r.Hash
		leaves = append(leaves, tlog.RecordHash([]byte(r.Hash)))
	}
	if err := rows.Err(); err != nil {
		return v, floorSeq, fmt.Errorf("read the audit log: %w", err)
	}
	if v.Records != headSeq || v.Head != headHash {
		return bad(v.Records+1, "the log ends at record %d but its head says %d: records were removed from the end", v.Records, headSeq)
	}
	if v.Records == 0 {
		v.OK = true
		return v, floorSeq, nil
	}
	// The Merkle tree that checkpoints sign must be the records' own: it
	// is rebuilt from the leaves (the purged records' from the tree's own
	// bottom level, the kept ones' from the records) and compared with the
	// stored head, which checkpoints and their proofs read.
	r := hashReader{ctx, l.db}
	if floorSeq > 0 {
		idx := make([]int64, floorSeq)
		for i := range idx {
			idx[i] = tlog.StoredHashIndex(0, int64(i))
		}
		purged, err := r.ReadHashes(idx)
		if err != nil {
			if strings.Contains(err.Error(), "missing") {
				return bad(1, "the log's Merkle tree lacks hashes (%v): it was cut", err)
			}
			return v, floorSeq, err
		}
		leaves = append(purged, leaves...)
	}
	rebuilt, err := treeHashOfLeaves(leaves)
	if err != nil {
		return v, floorSeq, err
	}
	stored, err := tlog.TreeHash(v.Records, r)
	switch {
	case err != nil && strings.Contains(err.Error(), "missing"):
		return bad(v.Records, "the log's Merkle tree lacks hashes (%v): it was cut", err)
	case err != nil:
		return v, floorSeq, fmt.Errorf("read the audit log's Merkle tree: %w", err)
	case stored != rebuilt:
		return bad(v.Records, "the log's Merkle tree does not match its records: it was rewritten")
	}
	v.OK = true
	return v, floorSeq, nil
}

// LogFilter selects audit records; zero fields select everything.
type LogFilter struct {
	Actor, Action, Resource, Outcome, CorrelationID string
	From, To                                        time.Time // [From, To)
	// Before continues a listing: records older than this seq.
	Before int64
	Limit  int // default 100, at most 1000
}

// List returns records newest first and the seq to continue from (0:
// none left).
func (l *Log) List(ctx context.Context, f LogFilter) ([]Record, int64, error) {
	limit := pageLimit(f.Limit)
	var where []string
	var args []any
	arg := argAdder(&args)
	for col, v := range map[string]string{"actor": f.Actor, "action": f.Action, "resource": f.Resource, "outcome": f.Outcome, "correlation_id": f.CorrelationID} {
		if v != "" {
			where = append(where, col+" = "+arg(v))
		}
	}
	if !f.From.IsZero() {
		where = append(where, "at >= "+arg(f.From.UTC()))
	}
	if !f.To.IsZero() {
		where = append(where, "at < "+arg(f.To.UTC()))
	}
	if f.Before > 0 {
		where = append(where, "seq < "+arg(f.Before))
	}
	q := `SELECT ` + logColumns + ` FROM audit_log`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY seq DESC LIMIT " + arg(limit+1)
	rows, err := l.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("list audit records: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("read audit record: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	if len(out) <= limit {
		return out, 0, nil
	}
	out = out[:limit]
	return out, out[limit-1].Seq, nil
}

// HashMethod says how a record's hash is made, for auditors who recompute
// it from an export.
const HashMethod = "hex(SHA-256(b)) where b is Go's encoding/json of the object {seq, time, actor, actor_kind, roles, action, resource, outcome, reason, peer, user_agent, correlation_id, request, prev_hash} in that order: no spaces; time in RFC 3339 UTC with the fraction's trailing zeros dropped (time.RFC3339Nano); roles comma-separated; strings escaped as encoding/json does (including <, > and & as \\u003c, \\u003e, \\u0026)"

// maxExport bounds one export.
const maxExport = 200000

// Range returns the records written in [from, to), oldest first, and the
// hash of the record before the first ("" at the log's start).
func (l *Log) Range(ctx context.Context, from, to time.Time) ([]Record, string, error) {
	// Every record from the first written in the range to the last: a
	// contiguous run of the chain, even if a replica's clock put one of
	// them a little outside.
	rows, err := l.db.QueryContext(ctx, `SELECT `+logColumns+` FROM audit_log
		WHERE seq >= (SELECT MIN(seq) FROM audit_log WHERE at >= $1 AND at < $2) AND seq <= (SELECT MAX(seq) FROM audit_log WHERE at >= $1 AND at < $2)
		ORDER BY seq LIMIT $3`, from.UTC(), to.UTC(), maxExport+1)
	if err != nil {
		return nil, "", fmt.Errorf("read audit records: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, "", fmt.Errorf("read audit record: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	if len(out) > maxExport {
		return nil, "", fmt.Errorf("more than %d records in the range: export a shorter one", maxExport)
	}
	if len(out) == 0 {
		return nil, "", nil
	}
	return out, out[0].PrevHash, nil
}

// PurgeBefore exports the records written before before (at most batch,
// from the oldest) to a new file in dir and then deletes them, moving the
// chain's floor past them; it returns how many. The file is written and
// synced first: nothing is deleted that was not exported.
func (l *Log) PurgeBefore(ctx context.Context, before time.Time, batch int, dir string) (int, error) {
	var floor int64
	if err := l.db.QueryRowContext(ctx, `SELECT floor_seq FROM audit_head WHERE id = 1`).Scan(&floor); err != nil {
		return 0, fmt.Errorf("read the audit log's floor: %w", err)
	}
	rows, err := l.db.QueryContext(ctx, `SELECT `+logColumns+` FROM audit_log WHERE seq > $1 AND at < $2 ORDER BY seq LIMIT $3`, floor, before.UTC(), batch)
	if err != nil {
		return 0, fmt.Errorf("read audit records to purge: %w", err)
	}
	var recs []Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			rows.Close()
			return 0, err
		}
		if r.Seq != floor+int64(len(recs))+1 {
			break // only a run that starts at the floor
		}
		recs = append(recs, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(recs) == 0 {
		return 0, err
	}
	first, last := recs[0], recs[len(recs)-1]
	if err := exportFile(dir, first.Seq, last.Seq, recs); err != nil {
		return 0, err
	}
	err = l.db.InTx(ctx, func(tx *store.Tx) error {
		var cur int64
		if err := tx.QueryRowContext(ctx, `SELECT floor_seq FROM audit_head WHERE id = 1`+store.ForUpdate(tx)).Scan(&cur); err != nil {
			return err
		}
		if cur != floor {
			return fmt.Errorf("another replica purged the audit log meanwhile")
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM audit_log WHERE seq <= $1`, last.Seq); err != nil {
			return fmt.Errorf("delete audit records: %w", err)
		}
		_, err := tx.ExecContext(ctx, `UPDATE audit_head SET floor_seq = $1, floor_hash = $2 WHERE id = 1`, last.Seq, last.Hash)
		return err
	})
	if err != nil {
		return 0, err
	}
	return len(recs), nil
}

// exportFile writes records to DIR/audit-FIRST-LAST.jsonl (one JSON
// record with its hash per line, after a header line saying how to check
// them), synced to disk.
func exportFile(dir string, first, last int64, recs []Record) error {
	if dir == "" {
		return fmt.Errorf("no audit export directory: records are not deleted without an export")
	}
	path := filepath.Join(dir, fmt.Sprintf("audit-%012d-%012d.jsonl", first, last))
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("export audit records: %w", err)
	}
	w := bufio.NewWriter(f)
	head, _ := json.Marshal(map[string]any{"first_seq": first, "last_seq": last, "prev_hash": recs[0].PrevHash, "hash_method": HashMethod})
	w.Write(append(head, '\n'))
	for _, r := range recs {
		line, _ := json.Marshal(struct {
			Record
			Hash string `json:"hash"`
		}{r, r.Hash})
		w.Write(append(line, '\n'))
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("export audit records to %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	// Renamed into place and the directory synced: the file survives a
	// crash that follows the deletion.
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("export audit records: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
