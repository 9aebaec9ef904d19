package execution

import (
	"cmp"
	"context"
	"database/sql"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

//go:embed migrations
var migrationsDir embed.FS

// Migrations returns the executions schema migrations for store.DB.Migrate.
func Migrations() fs.FS { return store.MustSub(migrationsDir, "migrations") }

// Schema is the name of the executions service's schema.
const Schema = "executions"

// Execution statuses.
const (
	ExecQueued    = "queued"
	ExecRunning   = "running"
	ExecSucceeded = "succeeded"
	ExecFailed    = "failed"
	ExecCancelled = "cancelled"
)

// Task statuses (ARCHITECTURE.md, "Words with one meaning").
const (
	TaskQueued    = "queued"
	TaskRunning   = "running"
	TaskSucceeded = "succeeded"
	TaskFailed    = "failed"
	TaskTimedOut  = "timed_out"
	TaskCancelled = "cancelled"
	TaskLost      = "lost"
	TaskExpired   = "expired"
	TaskSkipped   = "skipped"
	TaskUnknown   = "unknown"
)

// ErrLeaseLost means a report named a task the agent no longer holds: the
// lease generation moved on, the task ended, or it is not the agent's.
var ErrLeaseLost = errors.New("task lease lost")

// ErrFinished means the execution has already ended.
var ErrFinished = errors.New("execution already finished")

// BusyError refuses an execution of a job whose concurrency policy is
// "skip" while another one runs.
type BusyError struct{ Running string }

func (e *BusyError) Error() string { return "execution " + e.Running + " of the job is still running" }

// Concurrency policies, as ExecutionCreate takes them.
const (
	ConcurrencyAllow = "allow"
	ConcurrencySkip  = "skip"
	ConcurrencyQueue = "queue"
)

// ExecutionRecord is a stored execution.
type ExecutionRecord struct {
	ID            string
	JobID         string
	JobName       string
	JobVersion    int64
	Snapshot      []byte // the job as protobuf JSON
	Status        string
	CorrelationID string
	CreatedBy     string
	// AllowDangerous marks an audited override of the safety checker.
	AllowDangerous  bool
	DangerousReason string
	CancelledBy     string
	CancelReason    string
	ParentID        string // the execution this one retries
	Policy          []byte // the merged ExecutionPolicy as protobuf JSON
	Reason          string // why it ended as it did, when not obvious
	WaitingFor      string // the earlier execution it waits for
	IdempotencyKey  string
	// Fan-out, resolved: tasks at once (0: all), rolling batch size (0:
	// none) and pause, failed targets tolerated (nil: any number).
	MaxParallel int
	BatchSize   int
	BatchPause  time.Duration
	MaxFailures *int
	// OnAgentLoss is "fail" (default) or "requeue".
	OnAgentLoss string
	// Parameters holds the values as JSON {"plain": {...}, "sealed": {...}}.
	Parameters []byte
	// Timeout is the execution's deadline from creation; TaskTimeout one
	// target's run limit (0: none).
	Timeout     time.Duration
	TaskTimeout time.Duration
	// Exclusive locks each target while a task of the execution runs on it.
	Exclusive bool
	// Trigger is what started it ("api", "schedule", "retry", "validate";
	// "" reads as "api") and ScheduleID the schedule that fired it.
	Trigger    string
	ScheduleID string
	CreatedAt  time.Time
	StartedAt  *time.Time
	FinishedAt *time.Time
}

// TaskRecord is a stored task.
type TaskRecord struct {
	ID              string
	ExecutionID     string
	AgentID         string
	AgentName       string
	Status          string
	Error           string
	LeaseGeneration int64
	LeaseExpiresAt  *time.Time
	OutputLimit     int64
	OutputBytes     int64
	OutputTruncated bool
	OutputChunks    int64 // how many output chunks are stored
	// QueueTimeout is how long the task may wait for its agent once it
	// may be claimed; then it ends expired.
	QueueTimeout time.Duration
	// A remote-host task: the host's name, the resolved endpoint (protobuf
	// JSON of opsconductor.v1.RemoteEndpoint) and, at creation, the jump
	// agents that may claim it. AgentID is empty until one does.
	Host       string
	Remote     []byte
	TargetKey  string
	Candidates []Candidate
	CreatedAt  time.Time
	StartedAt  *time.Time
	FinishedAt *time.Time
}

// Candidate is a jump agent that may claim a remote-host task.
type Candidate struct {
	AgentID, AgentName string
}

// ActionResult is the outcome of one action of a task.
type ActionResult struct {
	Index      int
	Name       string
	Status     string
	ExitCode   int
	Error      string
	StartedAt  *time.Time
	FinishedAt *time.Time
	// Attempts is every try, as a JSON array of opsconductor.v1.Attempt.
	Attempts []byte
}

// OutputChunk is a piece of an action's stdout or stderr.
type OutputChunk struct {
	ActionIndex int
	Stream      string // "stdout" or "stderr"
	Data        []byte
}

// Claim is a task leased to an agent, with what it needs to run it.
type Claim struct {
	Task           TaskRecord
	JobName        string
	Snapshot       []byte
	CorrelationID  string
	AllowDangerous bool
	Parameters     []byte // as ExecutionRecord.Parameters
	TaskTimeout    time.Duration
}

// Store keeps executions, tasks, results and output in the executions schema.
type Store struct {
	db *store.DB
}

// NewStore wraps a migrated executions database.
func NewStore(db *store.DB) *Store { return &Store{db: db} }

// Ping checks the database.
func (s *Store) Ping(ctx context.Context) error { return s.db.Ping(ctx) }

func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// latestUnfinished is the newest queued or running execution of a job,
// locked so it cannot finish before the caller commits: an execution that
// finished between the read and the commit would already have released
// its waiters, and one queued behind it would wait forever.
func latestUnfinished(ctx context.Context, tx *store.Tx, jobID string) (string, error) {
	for {
		var id string
		err := tx.QueryRowContext(ctx, `SELECT id FROM executions WHERE job_id = $1 AND status IN ($2, $3) ORDER BY created_at DESC, id DESC LIMIT 1`,
			jobID, ExecQueued, ExecRunning).Scan(&id)
		if err != nil {
			return "", err
		}
		var status string
		if err := tx.QueryRowContext(ctx, `SELECT status FROM executions WHERE id = $1`+store.ForUpdate(tx), id).Scan(&status); err != nil {
			return "", err
		}
		if status == ExecQueued || status == ExecRunning {
			return id, nil
		}
		// It finished while we waited for its lock; look again.
	}
}

// ExecutionCreate stores an execution and its tasks, all queued, with the
// execution.created event, in one transaction. concurrency applies the
// job's policy against its other unfinished executions (under a per-job
// lock, so racing requests cannot both slip through): "skip" fails with a
// *BusyError, "queue" makes the new execution wait for the latest one.
// With an idempotency key already used, nothing is written and the
// existing execution's id is returned. afterCommit (may be nil) runs once
// it committed.
func (s *Store) ExecutionCreate(ctx context.Context, e ExecutionRecord, tasks []TaskRecord, concurrency string, afterCommit func()) (string, error) {
	existing := ""
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		if e.IdempotencyKey != "" {
			err := tx.QueryRowContext(ctx, `SELECT id FROM executions WHERE idempotency_key = $1`, e.IdempotencyKey).Scan(&existing)
			if err == nil {
				return nil
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("look up idempotency key: %w", err)
			}
		}
		if e.JobID == "" {
			// An ad-hoc run has no job to share a lock or a concurrency
			// policy with: unrelated inline runs must not block each other.
			concurrency = ConcurrencyAllow
		} else {
			if _, err := tx.ExecContext(ctx, `INSERT INTO job_locks (job_id) VALUES ($1) ON CONFLICT (job_id) DO NOTHING`, e.JobID); err != nil {
				return fmt.Errorf("lock job %s: %w", e.JobID, err)
			}
			if _, err := tx.ExecContext(ctx, `SELECT job_id FROM job_locks WHERE job_id = $1`+store.ForUpdate(tx), e.JobID); err != nil {
				return fmt.Errorf("lock job %s: %w", e.JobID, err)
			}
		}
		if concurrency == ConcurrencySkip || concurrency == ConcurrencyQueue {
			running, err := latestUnfinished(ctx, tx, e.JobID)
			switch {
			case errors.Is(err, sql.ErrNoRows):
			case err != nil:
				return fmt.Errorf("find running executions of job %s: %w", e.JobID, err)
			case concurrency == ConcurrencySkip:
				return &BusyError{Running: running}
			default:
				e.WaitingFor = running
			}
		}
		var key any
		if e.IdempotencyKey != "" {
			key = e.IdempotencyKey
		}
		var deadline sql.NullTime
		if e.Timeout > 0 {
			deadline = sql.NullTime{Time: e.CreatedAt.Add(e.Timeout).UTC(), Valid: true}
		}
		maxFailures := -1
		if e.MaxFailures != nil {
			maxFailures = *e.MaxFailures
		}
		policyJSON := string(e.Policy)
		if policyJSON == "" {
			policyJSON = "{}"
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO executions (id, job_id, job_name, job_version, snapshot, status, correlation_id, event_seq, created_at,
			created_by, allow_dangerous, dangerous_reason, parent_id, policy, waiting_for, idempotency_key,
			max_parallel, batch_size, batch_pause_ms, max_failures, on_agent_loss, parameters, deadline_at, task_timeout_ms, exclusive,
			trigger_kind, schedule_id)
			VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)`,
			e.ID, e.JobID, e.JobName, e.JobVersion, string(e.Snapshot), ExecQueued, e.CorrelationID, e.CreatedAt.UTC(),
			e.CreatedBy, e.AllowDangerous, e.DangerousReason, e.ParentID, policyJSON, e.WaitingFor, key,
			e.MaxParallel, e.BatchSize, e.BatchPause.Milliseconds(), maxFailures, cmp.Or(e.OnAgentLoss, "fail"), cmp.Or(string(e.Parameters), "{}"),
			deadline, e.TaskTimeout.Milliseconds(), e.Exclusive, cmp.Or(e.Trigger, "api"), e.ScheduleID); err != nil {
			return fmt.Errorf("insert execution: %w", store.Translate(err))
		}
		for i, t := range tasks {
			batch := 0
			if e.BatchSize > 0 {
				batch = i / e.BatchSize
			}
			var expires sql.NullTime
			// A later batch's queue deadline starts when its batch opens.
			if e.WaitingFor == "" && t.QueueTimeout > 0 && batch == 0 {
				expires = sql.NullTime{Time: e.CreatedAt.Add(t.QueueTimeout).UTC(), Valid: true}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO tasks (id, execution_id, agent_id, agent_name, status, output_limit, created_at,
				queue_timeout_seconds, queue_expires_at, batch, exclusive, host, remote, target_key)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
				t.ID, e.ID, t.AgentID, t.AgentName, TaskQueued, t.OutputLimit, e.CreatedAt.UTC(), int64(t.QueueTimeout/time.Second), expires, batch, e.Exclusive,
				t.Host, string(t.Remote), cmp.Or(t.TargetKey, t.AgentID)); err != nil {
				return fmt.Errorf("insert task for %s: %w", cmp.Or(t.Host, t.AgentName), store.Translate(err))
			}
			for _, c := range t.Candidates {
				if _, err := tx.ExecContext(ctx, `INSERT INTO task_candidates (task_id, agent_id, agent_name) VALUES ($1, $2, $3)`,
					t.ID, c.AgentID, c.AgentName); err != nil {
					return fmt.Errorf("insert jump agent %s of task %s: %w", c.AgentName, t.ID, store.Translate(err))
				}
			}
		}
		if err := appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{
			Type: "execution.created", ExecutionId: e.ID, Status: ExecQueued, Time: timestamppb.New(e.CreatedAt),
		}); err != nil {
			return err
		}
		if e.AllowDangerous {
			// The override is itself an audit record, committed with the
			// execution it allows.
			if _, err := outbox.Append(ctx, tx, "audit.dangerous_override", e.ID, 0, map[string]any{
				"execution_id": e.ID, "job_id": e.JobID, "job_version": e.JobVersion, "principal": e.CreatedBy,
				"reason": e.DangerousReason, "correlation_id": e.CorrelationID,
			}); err != nil {
				return err
			}
		}
		if afterCommit != nil {
			tx.AfterCommit(afterCommit)
		}
		return nil
	})
	return existing, err
}

// ScheduleRunning reports whether an execution the schedule fired is
// still queued or running.
func (s *Store) ScheduleRunning(ctx context.Context, scheduleID string) (bool, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM executions WHERE schedule_id = $1 AND status IN ($2, $3)`,
		scheduleID, ExecQueued, ExecRunning).Scan(&n); err != nil {
		return false, fmt.Errorf("find running executions of schedule %s: %w", scheduleID, err)
	}
	return n > 0, nil
}

// ListParams filter and page ExecutionList.
type ListParams struct {
	JobID        string
	Status       string
	Since, Until time.Time // zero: open
	Limit        int
	PageToken    string
}

// ErrBadPageToken means a page token was not one ExecutionList produced.
var ErrBadPageToken = errors.New("malformed page token")

// ExecutionList returns a page of executions, newest first, with their
// task counts, and the next page's token ("" on the last page).
func (s *Store) ExecutionList(ctx context.Context, p ListParams) ([]ExecutionRecord, []map[string]int32, string, error) {
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if p.PageToken != "" {
		raw, err := base64.RawURLEncoding.DecodeString(p.PageToken)
		if err != nil {
			return nil, nil, "", ErrBadPageToken
		}
		where = append(where, "id < "+arg(string(raw)))
	}
	if p.JobID != "" {
		where = append(where, "job_id = "+arg(p.JobID))
	}
	if p.Status != "" {
		where = append(where, "status = "+arg(p.Status))
	}
	if !p.Since.IsZero() {
		where = append(where, "created_at >= "+arg(p.Since.UTC()))
	}
	if !p.Until.IsZero() {
		where = append(where, "created_at < "+arg(p.Until.UTC()))
	}
	q := `SELECT id FROM executions`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC LIMIT " + arg(p.Limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, nil, "", fmt.Errorf("list executions: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, nil, "", err
		}
		ids = append(ids, id)
	}
	rows.Close()
	next := ""
	if len(ids) > p.Limit {
		ids = ids[:p.Limit]
		next = base64.RawURLEncoding.EncodeToString([]byte(ids[len(ids)-1]))
	}
	recs := make([]ExecutionRecord, 0, len(ids))
	counts := make([]map[string]int32, 0, len(ids))
	for _, id := range ids {
		e, err := s.ExecutionGet(ctx, id)
		if err != nil {
			return nil, nil, "", err
		}
		c := map[string]int32{}
		crows, err := s.db.QueryContext(ctx, `SELECT status, COUNT(*) FROM tasks WHERE execution_id = $1 GROUP BY status`, id)
		if err != nil {
			return nil, nil, "", fmt.Errorf("count tasks of %s: %w", id, err)
		}
		for crows.Next() {
			var st string
			var n int32
			if err := crows.Scan(&st, &n); err != nil {
				crows.Close()
				return nil, nil, "", err
			}
			c[st] = n
		}
		crows.Close()
		recs = append(recs, e)
		counts = append(counts, c)
	}
	return recs, counts, next, nil
}

// ExecutionIDByIdempotencyKey finds the execution a key made.
func (s *Store) ExecutionIDByIdempotencyKey(ctx context.Context, key string) (string, error) {
	var id string
	if err := s.db.QueryRowContext(ctx, `SELECT id FROM executions WHERE idempotency_key = $1`, key).Scan(&id); err != nil {
		return "", fmt.Errorf("look up idempotency key: %w", store.Translate(err))
	}
	return id, nil
}

// appendEvent writes one event of an execution; see appendEvents.
func appendEvent(ctx context.Context, tx *store.Tx, ev *opsconductorv1.ExecutionEvent) error {
	return appendEvents(ctx, tx, ev.GetExecutionId(), ev)
}

// appendEvents numbers events of one execution and writes them to the
// outbox. Bumping the execution's event counter locks its row until
// commit, so one execution's events commit in counter order; it is also
// what serialises the tasks of one execution, so the hot paths (claim,
// output, completion) append as late in their transaction as they can:
// the lock is then held for little more than the commit.
func appendEvents(ctx context.Context, tx *store.Tx, executionID string, evs ...*opsconductorv1.ExecutionEvent) error {
	if len(evs) == 0 {
		return nil
	}
	last, err := numberEvents(ctx, tx, executionID, len(evs), "")
	if err != nil {
		return err
	}
	return writeEvents(ctx, tx, last, evs)
}

// numberEvents bumps the execution's event counter by n, which locks its
// row until commit (see appendEvents), and returns the counter's new
// value. columns (", a, b" or "") are further columns of the execution
// the same statement returns into dest.
func numberEvents(ctx context.Context, tx *store.Tx, executionID string, n int, columns string, dest ...any) (int64, error) {
	var last int64
	if err := tx.QueryRowContext(ctx, `UPDATE executions SET event_seq = event_seq + $2 WHERE id = $1 RETURNING event_seq`+columns,
		executionID, n).Scan(append([]any{&last}, dest...)...); err != nil {
		return 0, fmt.Errorf("number events of execution %s: %w", executionID, store.Translate(err))
	}
	return last, nil
}

// writeEvents writes events numbered up to last (the execution's counter,
// already bumped by len(evs)) to the outbox.
func writeEvents(ctx context.Context, tx *store.Tx, last int64, evs []*opsconductorv1.ExecutionEvent) error {
	if len(evs) == 0 {
		return nil
	}
	records := make([]outbox.Record, len(evs))
	for i, ev := range evs {
		pj, err := protojson.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encode %s event: %w", ev.GetType(), err)
		}
		body, err := json.Marshal(json.RawMessage(pj)) // compact: protojson's spacing varies
		if err != nil {
			return fmt.Errorf("encode %s event: %w", ev.GetType(), err)
		}
		records[i] = outbox.Record{Topic: ev.GetType(), AggregateSeq: last - int64(len(evs)-1-i), Payload: body}
	}
	return outbox.AppendAll(ctx, tx, evs[0].GetExecutionId(), records)
}

// ExecutionGet returns one execution.
func (s *Store) ExecutionGet(ctx context.Context, id string) (ExecutionRecord, error) {
	var e ExecutionRecord
	var snapshot, policyJSON, paramsJSON string
	var started, finished sql.NullTime
	err := s.db.QueryRowContext(ctx, `SELECT id, job_id, job_name, job_version, snapshot, status, correlation_id, created_at, started_at, finished_at,
		created_by, allow_dangerous, dangerous_reason, cancelled_by, cancel_reason, parent_id, policy, reason, waiting_for, parameters, trigger_kind, schedule_id
		FROM executions WHERE id = $1`, id).Scan(&e.ID, &e.JobID, &e.JobName, &e.JobVersion, &snapshot, &e.Status, &e.CorrelationID, &e.CreatedAt, &started, &finished,
		&e.CreatedBy, &e.AllowDangerous, &e.DangerousReason, &e.CancelledBy, &e.CancelReason, &e.ParentID, &policyJSON, &e.Reason, &e.WaitingFor, &paramsJSON,
		&e.Trigger, &e.ScheduleID)
	if err != nil {
		return ExecutionRecord{}, fmt.Errorf("get execution %s: %w", id, store.Translate(err))
	}
	e.Snapshot, e.Policy, e.Parameters = []byte(snapshot), []byte(policyJSON), []byte(paramsJSON)
	e.CreatedAt = e.CreatedAt.UTC()
	e.StartedAt, e.FinishedAt = timePtr(started), timePtr(finished)
	return e, nil
}

// taskFields are the columns scanTask reads, for a SELECT or a RETURNING.
const taskFields = `id, execution_id, agent_id, agent_name, status, error, lease_generation, lease_expires_at,
	output_limit, output_bytes, output_truncated, output_chunks, created_at, started_at, finished_at, host, remote, target_key`

const taskColumns = `SELECT ` + taskFields + ` FROM tasks`

func scanTask(row interface{ Scan(...any) error }) (TaskRecord, error) {
	var t TaskRecord
	var lease, started, finished sql.NullTime
	var remote string
	if err := row.Scan(&t.ID, &t.ExecutionID, &t.AgentID, &t.AgentName, &t.Status, &t.Error, &t.LeaseGeneration, &lease,
		&t.OutputLimit, &t.OutputBytes, &t.OutputTruncated, &t.OutputChunks, &t.CreatedAt, &started, &finished, &t.Host, &remote, &t.TargetKey); err != nil {
		return TaskRecord{}, store.Translate(err)
	}
	if remote != "" {
		t.Remote = []byte(remote)
	}
	t.CreatedAt = t.CreatedAt.UTC()
	t.LeaseExpiresAt, t.StartedAt, t.FinishedAt = timePtr(lease), timePtr(started), timePtr(finished)
	return t, nil
}

// TaskGet returns one task.
func (s *Store) TaskGet(ctx context.Context, id string) (TaskRecord, error) {
	t, err := scanTask(s.db.QueryRowContext(ctx, taskColumns+` WHERE id = $1`, id))
	if err != nil {
		return TaskRecord{}, fmt.Errorf("get task %s: %w", id, err)
	}
	return t, nil
}

// TaskListByExecution returns an execution's tasks by agent name.
func (s *Store) TaskListByExecution(ctx context.Context, executionID string) ([]TaskRecord, error) {
	rows, err := s.db.QueryContext(ctx, taskColumns+` WHERE execution_id = $1 ORDER BY host, agent_name, id`, executionID)
	if err != nil {
		return nil, fmt.Errorf("list tasks of execution %s: %w", executionID, err)
	}
	defer rows.Close()
	var out []TaskRecord
	for rows.Next() {
		t, err := scanTask(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// ActionResultsByExecution returns the action results of an execution's
// tasks, keyed by task id, in action order.
func (s *Store) ActionResultsByExecution(ctx context.Context, executionID string) (map[string][]ActionResult, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT r.task_id, r.idx, r.name, r.status, r.exit_code, r.error, r.started_at, r.finished_at, r.attempts
		FROM action_results r JOIN tasks t ON t.id = r.task_id WHERE t.execution_id = $1 ORDER BY r.task_id, r.idx`, executionID)
	if err != nil {
		return nil, fmt.Errorf("list results of execution %s: %w", executionID, err)
	}
	defer rows.Close()
	out := map[string][]ActionResult{}
	for rows.Next() {
		var taskID string
		var r ActionResult
		var started, finished sql.NullTime
		var attempts string
		if err := rows.Scan(&taskID, &r.Index, &r.Name, &r.Status, &r.ExitCode, &r.Error, &started, &finished, &attempts); err != nil {
			return nil, fmt.Errorf("scan action result: %w", err)
		}
		r.StartedAt, r.FinishedAt, r.Attempts = timePtr(started), timePtr(finished), []byte(attempts)
		out[taskID] = append(out[taskID], r)
	}
	return out, rows.Err()
}

// OutputByExecution returns the stored output of an execution's tasks, keyed
// by task id, in arrival order.
func (s *Store) OutputByExecution(ctx context.Context, executionID string) (map[string][]OutputChunk, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT o.task_id, o.action_index, o.stream, o.data
		FROM task_output o JOIN tasks t ON t.id = o.task_id WHERE t.execution_id = $1 ORDER BY o.task_id, o.chunk`, executionID)
	if err != nil {
		return nil, fmt.Errorf("read output of execution %s: %w", executionID, err)
	}
	defer rows.Close()
	out := map[string][]OutputChunk{}
	for rows.Next() {
		var taskID string
		var c OutputChunk
		if err := rows.Scan(&taskID, &c.ActionIndex, &c.Stream, &c.Data); err != nil {
			return nil, fmt.Errorf("scan output: %w", err)
		}
		out[taskID] = append(out[taskID], c)
	}
	return out, rows.Err()
}

// TaskClaimNext leases up to max queued tasks of the agent, oldest first,
// each in its own short transaction (with SKIP LOCKED on Postgres, so
// concurrent claimers never take the same task and never wait on each
// other). The lease runs until now+lease.
func (s *Store) TaskClaimNext(ctx context.Context, agentID string, max int, lease time.Duration) ([]Claim, error) {
	return s.claim(ctx, agentID, false, max, lease)
}

// TaskClaimRemote leases up to max queued remote-host tasks the agent is a
// jump agent for. Each round takes from the execution the agent runs the
// fewest tasks of, so one large run does not starve the others.
func (s *Store) TaskClaimRemote(ctx context.Context, agentID string, max int, lease time.Duration) ([]Claim, error) {
	return s.claim(ctx, agentID, true, max, lease)
}

func (s *Store) claim(ctx context.Context, agentID string, remote bool, max int, lease time.Duration) ([]Claim, error) {
	var claims []Claim
	var full []string // executions found at their max_parallel in this round
	for len(claims) < max {
		c, ok, err := s.claimOne(ctx, agentID, remote, lease, full)
		var over *overParallel
		if errors.As(err, &over) {
			full = append(full, over.execution)
			continue
		}
		if err != nil {
			return claims, err
		}
		if !ok {
			break
		}
		claims = append(claims, c)
	}
	return claims, nil
}

// overParallel rolls back a claim that would exceed its execution's
// max_parallel (two claimers raced past the check in the query).
type overParallel struct{ execution string }

func (e *overParallel) Error() string { return "execution " + e.execution + " is at its max_parallel" }

// claimOne leases the agent's oldest claimable task: its execution is not
// waiting for another, the task's batch has started, and the execution is
// below its max_parallel. exclude lists executions to pass over. remote
// picks a remote-host task the agent is a candidate for instead of one of
// its own.
func (s *Store) claimOne(ctx context.Context, agentID string, remote bool, lease time.Duration, exclude []string) (Claim, bool, error) {
	var c Claim
	found := false
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		t := now()
		until := t.Add(lease)
		args := []any{TaskRunning, until, t, agentID}
		skip := ""
		for _, id := range exclude {
			args = append(args, id)
			skip += fmt.Sprintf(" AND tk.execution_id <> $%d", len(args))
		}
		from, set, whose, order := `tasks tk`, "", `tk.agent_id = $4`, `tk.created_at, tk.id`
		if remote {
			// Fair share: the execution the agent runs fewest tasks of
			// first. Its running tasks are counted once per claim (a join),
			// not once per candidate task: with 500 queued tasks that was
			// 500 counts for every claim.
			from = `tasks tk LEFT JOIN (SELECT f.execution_id, COUNT(*) AS n FROM tasks f WHERE f.agent_id = $4 AND f.status = '` + TaskRunning + `'
				GROUP BY f.execution_id) mine ON mine.execution_id = tk.execution_id`
			set = `, agent_id = $4, agent_name = COALESCE((SELECT c.agent_name FROM task_candidates c WHERE c.task_id = tasks.id AND c.agent_id = $4), '')`
			whose = `tk.agent_id = '' AND EXISTS (SELECT 1 FROM task_candidates c WHERE c.task_id = tk.id AND c.agent_id = $4)`
			order = `COALESCE(mine.n, 0), ` + order
		}
		task, err := scanTask(tx.QueryRowContext(ctx, `UPDATE tasks SET status = $1, lease_generation = lease_generation + 1, lease_expires_at = $2, started_at = $3`+set+`
			WHERE id = (SELECT tk.id FROM `+from+` WHERE `+whose+` AND tk.status = '`+TaskQueued+`'`+skip+`
				AND EXISTS (SELECT 1 FROM executions e WHERE e.id = tk.execution_id
					AND e.waiting_for = ''
					AND tk.batch <= e.current_batch
					AND (e.batch_ready_at IS NULL OR e.batch_ready_at <= $3)
					AND (e.max_parallel = 0 OR e.max_parallel > (SELECT COUNT(*) FROM tasks r WHERE r.execution_id = e.id AND r.status = '`+TaskRunning+`'))
					AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.target_key = tk.target_key AND o.status = '`+TaskRunning+`' AND o.exclusive = TRUE
						AND o.execution_id <> tk.execution_id)
					AND (tk.exclusive = FALSE OR NOT EXISTS (SELECT 1 FROM tasks o WHERE o.target_key = tk.target_key AND o.status = '`+TaskRunning+`'
						AND o.execution_id <> tk.execution_id)))
				ORDER BY `+order+` LIMIT 1`+store.SkipLocked(tx, "tk")+`)
			RETURNING `+taskFields, args...))
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("claim task for agent %s: %w", agentID, err)
		}
		if remote && tx.Dialect() == store.Postgres {
			// Several jump agents claim tasks on one host at once: the
			// exclusive check in the query cannot see a claim not yet
			// committed. Claims on one host are serialised here and the
			// check repeated (SQLite's single writer needs none of this).
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, task.TargetKey); err != nil {
				return fmt.Errorf("lock target %s: %w", task.TargetKey, err)
			}
			var clash int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM tasks o WHERE o.target_key = $1 AND o.status = $2 AND o.execution_id <> $3
				AND (o.exclusive = TRUE OR (SELECT m.exclusive FROM tasks m WHERE m.id = $4))`, task.TargetKey, TaskRunning, task.ExecutionID, task.ID).Scan(&clash); err != nil {
				return fmt.Errorf("check exclusive runs on %s: %w", task.TargetKey, err)
			}
			if clash > 0 {
				return &overParallel{execution: task.ExecutionID}
			}
		}
		// Numbering the claim's event locks the execution's row (see
		// appendEvents), as late as possible; the same statement reads
		// what the agent needs of the execution.
		var snapshot, execStatus, paramsJSON string
		var taskTimeoutMS int64
		var maxParallel int
		seq, err := numberEvents(ctx, tx, task.ExecutionID, 1, `, job_name, snapshot, correlation_id, status, allow_dangerous, parameters, task_timeout_ms, max_parallel`,
			&c.JobName, &snapshot, &c.CorrelationID, &execStatus, &c.AllowDangerous, &paramsJSON, &taskTimeoutMS, &maxParallel)
		if err != nil {
			return err
		}
		// Claims of one execution are serialised by that lock, so this
		// count is exact. Two claimers may have passed the check in the
		// query together; the later one backs off.
		if maxParallel > 0 {
			var running int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM tasks WHERE execution_id = $1 AND status = $2`, task.ExecutionID, TaskRunning).Scan(&running); err != nil {
				return fmt.Errorf("count running tasks of %s: %w", task.ExecutionID, err)
			}
			if running > maxParallel {
				return &overParallel{execution: task.ExecutionID}
			}
		}
		if err := writeEvents(ctx, tx, seq, []*opsconductorv1.ExecutionEvent{{
			Type: "task.status", ExecutionId: task.ExecutionID, TaskId: task.ID, AgentName: task.AgentName, Status: TaskRunning, Time: timestamppb.New(t),
		}}); err != nil {
			return err
		}
		c.Task, c.Snapshot, c.Parameters, found = task, []byte(snapshot), []byte(paramsJSON), true
		c.TaskTimeout = time.Duration(taskTimeoutMS) * time.Millisecond
		if execStatus == ExecQueued {
			if _, err := tx.ExecContext(ctx, `UPDATE executions SET status = $1, started_at = $2 WHERE id = $3 AND status = $4`,
				ExecRunning, t, task.ExecutionID, ExecQueued); err != nil {
				return fmt.Errorf("start execution %s: %w", task.ExecutionID, err)
			}
			return appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{
				Type: "execution.status", ExecutionId: task.ExecutionID, Status: ExecRunning, Time: timestamppb.New(t),
			})
		}
		return nil
	})
	return c, found, err
}

// holdTask locks a task the agent holds at generation gen and returns it,
// or ErrLeaseLost.
func holdTask(ctx context.Context, tx *store.Tx, agentID, taskID string, gen int64) (TaskRecord, error) {
	// A no-op update takes the row lock on Postgres; SQLite's transaction
	// already holds the write lock.
	return updateHeldTask(ctx, tx, agentID, taskID, gen, `lease_generation = lease_generation`)
}

// updateHeldTask applies set (with args from $5 on) to a running task the
// agent holds at generation gen, locking it, and returns the task as
// updated, or ErrLeaseLost.
func updateHeldTask(ctx context.Context, tx *store.Tx, agentID, taskID string, gen int64, set string, args ...any) (TaskRecord, error) {
	t, err := scanTask(tx.QueryRowContext(ctx, `UPDATE tasks SET `+set+`
		WHERE id = $1 AND agent_id = $2 AND lease_generation = $3 AND status = $4 RETURNING `+taskFields,
		append([]any{taskID, agentID, gen, TaskRunning}, args...)...))
	if errors.Is(err, store.ErrNotFound) {
		return TaskRecord{}, fmt.Errorf("task %s generation %d: %w", taskID, gen, ErrLeaseLost)
	}
	if err != nil {
		return TaskRecord{}, fmt.Errorf("lock task %s: %w", taskID, err)
	}
	return t, nil
}

// TaskExtendLease moves the lease of a task the agent holds to now+lease
// and reports whether the task was cancelled meanwhile.
func (s *Store) TaskExtendLease(ctx context.Context, agentID, taskID string, gen int64, lease time.Duration) (time.Time, bool, error) {
	until := now().Add(lease)
	var cancel bool
	err := s.db.QueryRowContext(ctx, `UPDATE tasks SET lease_expires_at = $1
		WHERE id = $2 AND agent_id = $3 AND lease_generation = $4 AND status = $5 RETURNING cancel_requested`,
		until, taskID, agentID, gen, TaskRunning).Scan(&cancel)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, false, fmt.Errorf("task %s generation %d: %w", taskID, gen, ErrLeaseLost)
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("extend lease of task %s: %w", taskID, err)
	}
	return until, cancel, nil
}

// AgentsWithWork lists the agents that have queued tasks of their own,
// are candidates (jump agents) for a queued remote-host task, or have a
// running task whose cancel they have to hear of. A queued task counts
// once its execution may start it (not waiting for another execution, its
// batch started and past its pause); the rest (max_parallel, exclusive
// targets) is the claim's business.
func (s *Store) AgentsWithWork(ctx context.Context) ([]string, error) {
	startable := `EXISTS (SELECT 1 FROM executions e WHERE e.id = t.execution_id AND e.waiting_for = ''
		AND t.batch <= e.current_batch AND (e.batch_ready_at IS NULL OR e.batch_ready_at <= $3))`
	ids, err := store.QueryStrings(ctx, s.db, `SELECT t.agent_id FROM tasks t WHERE t.status = $1 AND t.agent_id <> '' AND `+startable+`
		UNION SELECT c.agent_id FROM task_candidates c JOIN tasks t ON t.id = c.task_id WHERE t.status = $1 AND t.agent_id = '' AND `+startable+`
		UNION SELECT agent_id FROM tasks WHERE status = $2 AND cancel_requested = TRUE`, TaskQueued, TaskRunning, now())
	if err != nil {
		return nil, fmt.Errorf("find agents with work: %w", err)
	}
	return ids, nil
}

// TaskCancelsForAgent lists the agent's running tasks that were cancelled
// and not yet completed.
func (s *Store) TaskCancelsForAgent(ctx context.Context, agentID string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM tasks WHERE agent_id = $1 AND status = $2 AND cancel_requested = TRUE ORDER BY id`, agentID, TaskRunning)
	if err != nil {
		return nil, fmt.Errorf("find cancels for agent %s: %w", agentID, err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// ExecutionCancel cancels an execution: its queued tasks end cancelled at
// once, its running tasks are flagged for their agents. It returns the
// agents to tell. Cancelling again (even once it ended cancelled) is not
// an error; a succeeded or failed execution is ErrFinished.
func (s *Store) ExecutionCancel(ctx context.Context, id, by, reason string, afterCommit func()) ([]string, error) {
	return s.cancel(ctx, id, by, reason, "", afterCommit)
}

// ExecutionExpireDeadlines cancels the unfinished executions whose
// deadline passed before at, recording why, and returns the agents whose
// running tasks must be told.
func (s *Store) ExecutionExpireDeadlines(ctx context.Context, at time.Time, afterCommit func()) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, deadline_at FROM executions WHERE status IN ($1, $2) AND deadline_at < $3 AND cancel_requested_at IS NULL LIMIT 100`,
		ExecQueued, ExecRunning, at.UTC())
	if err != nil {
		return nil, fmt.Errorf("find executions past their deadline: %w", err)
	}
	type due struct {
		id       string
		deadline time.Time
	}
	var dues []due
	for rows.Next() {
		var d due
		if err := rows.Scan(&d.id, &d.deadline); err != nil {
			rows.Close()
			return nil, err
		}
		dues = append(dues, d)
	}
	rows.Close()
	var agents []string
	for _, d := range dues {
		why := fmt.Sprintf("the execution's deadline (%s) passed; what was left was cancelled", d.deadline.UTC().Format(time.RFC3339))
		a, err := s.cancel(ctx, d.id, "opsconductor", "deadline passed", why, afterCommit)
		if err != nil && !errors.Is(err, ErrFinished) {
			return agents, err
		}
		agents = append(agents, a...)
	}
	return agents, nil
}

func (s *Store) cancel(ctx context.Context, id, by, reason, why string, afterCommit func()) ([]string, error) {
	var agents []string
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		// Lock order is task, then execution, everywhere (claim, report,
		// complete, expire take one task and then its execution), so lock
		// the unfinished tasks before the execution.
		rows, err := tx.QueryContext(ctx, `SELECT id FROM tasks WHERE execution_id = $1 AND status IN ($2, $3) ORDER BY id`+store.ForUpdate(tx),
			id, TaskQueued, TaskRunning)
		if err != nil {
			return fmt.Errorf("lock tasks of %s: %w", id, err)
		}
		rows.Close()
		var status string
		if err := tx.QueryRowContext(ctx, `UPDATE executions SET event_seq = event_seq WHERE id = $1 RETURNING status`, id).Scan(&status); err != nil {
			return fmt.Errorf("cancel execution %s: %w", id, store.Translate(err))
		}
		if status == ExecCancelled {
			return nil // cancelled already: nothing to do, and not an error
		}
		if isFinal(status) {
			return fmt.Errorf("execution %s is %s: %w", id, status, ErrFinished)
		}
		t := now()
		res, err := tx.ExecContext(ctx, `UPDATE executions SET cancel_requested_at = $1, cancelled_by = $2, cancel_reason = $3,
			reason = CASE WHEN $5 <> '' THEN $5 ELSE reason END
			WHERE id = $4 AND cancel_requested_at IS NULL`, t, by, reason, id, why)
		if err != nil {
			return fmt.Errorf("cancel execution %s: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			if err := appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{Type: "execution.cancel_requested", ExecutionId: id,
				Error: reason, Time: timestamppb.New(t)}); err != nil {
				return err
			}
		}
		if err := endQueuedTasks(ctx, tx, id, TaskCancelled, "cancelled before it started", t); err != nil {
			return fmt.Errorf("cancel queued tasks of %s: %w", id, err)
		}
		rows, err = tx.QueryContext(ctx, `UPDATE tasks SET cancel_requested = TRUE WHERE execution_id = $1 AND status = $2 RETURNING agent_id`, id, TaskRunning)
		if err != nil {
			return fmt.Errorf("flag running tasks of %s: %w", id, err)
		}
		for rows.Next() {
			var a string
			if err := rows.Scan(&a); err != nil {
				rows.Close()
				return err
			}
			agents = append(agents, a)
		}
		rows.Close()
		if afterCommit != nil {
			tx.AfterCommit(afterCommit)
		}
		return finishIfDone(ctx, tx, id, t)
	})
	return agents, err
}

func isFinal(status string) bool {
	return status == ExecSucceeded || status == ExecFailed || status == ExecCancelled
}

// TruncationMarker is appended to a task's output when its cap is reached.
func TruncationMarker(limit int64) string {
	return fmt.Sprintf("\n[opsconductor: output truncated: the per-task limit of %d bytes was reached]\n", limit)
}

// TaskAppendOutput stores output of a task the agent holds, up to the
// task's output limit; the chunk that crosses it is cut and followed by the
// truncation marker, later chunks are dropped. It reports whether the task's
// output is now truncated. afterCommit (may be nil) runs once it committed.
func (s *Store) TaskAppendOutput(ctx context.Context, agentID, taskID string, gen int64, chunks []OutputChunk, afterCommit func()) (bool, error) {
	truncated := false
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		t, err := holdTask(ctx, tx, agentID, taskID, gen)
		if err != nil {
			return err
		}
		var events []*opsconductorv1.ExecutionEvent
		if truncated, events, err = storeOutput(ctx, tx, t, chunks); err != nil {
			return err
		}
		if afterCommit != nil {
			tx.AfterCommit(afterCommit)
		}
		return appendEvents(ctx, tx, t.ExecutionID, events...)
	})
	return truncated, err
}

// storeOutput stores output of task t (held by the caller's transaction)
// up to its output limit, and returns whether the output is now truncated
// and the events the caller appends.
func storeOutput(ctx context.Context, tx *store.Tx, t TaskRecord, chunks []OutputChunk) (bool, []*opsconductorv1.ExecutionEvent, error) {
	if t.OutputTruncated {
		return true, nil, nil
	}
	truncated := false
	chunkNo, used := t.OutputChunks, t.OutputBytes
	var events []*opsconductorv1.ExecutionEvent
	for _, c := range chunks {
		if len(c.Data) == 0 {
			continue
		}
		data := c.Data
		if room := t.OutputLimit - used; int64(len(data)) > room {
			data = append(append([]byte(nil), data[:max(room, 0)]...), TruncationMarker(t.OutputLimit)...)
			truncated = true
		}
		chunkNo++
		if _, err := tx.ExecContext(ctx, `INSERT INTO task_output (task_id, chunk, action_index, stream, data) VALUES ($1, $2, $3, $4, $5)`,
			t.ID, chunkNo, c.ActionIndex, c.Stream, data); err != nil {
			return false, nil, fmt.Errorf("store output of task %s: %w", t.ID, err)
		}
		events = append(events, &opsconductorv1.ExecutionEvent{
			Type: "task.output", ExecutionId: t.ExecutionID, TaskId: t.ID, AgentName: t.AgentName,
			ActionIndex: int32(c.ActionIndex), Stream: c.Stream, Data: data, Time: timestamppb.New(now()),
		})
		used += int64(len(c.Data))
		if truncated {
			used = t.OutputLimit
			break
		}
	}
	if len(events) == 0 {
		return false, nil, nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE tasks SET output_bytes = $1, output_chunks = $2, output_truncated = $3 WHERE id = $4`,
		used, chunkNo, truncated, t.ID); err != nil {
		return false, nil, fmt.Errorf("update output of task %s: %w", t.ID, err)
	}
	return truncated, events, nil
}

// TaskComplete ends a task the agent holds with a final status and its
// action results, and ends the execution when it was the last task.
// afterCommit (may be nil) runs once it committed.
func (s *Store) TaskComplete(ctx context.Context, agentID, taskID string, gen int64, status, errMsg string, results []ActionResult, afterCommit func()) error {
	_, err := s.TaskCompleteWithOutput(ctx, agentID, taskID, gen, status, errMsg, results, nil, afterCommit)
	return err
}

// TaskCompleteWithOutput is TaskComplete storing the task's last output
// first (as TaskAppendOutput would), in the same transaction: a short
// task then costs the agent one call less. It also says whether the
// execution holds tasks back (max_parallel, batches), so that agents may
// be waiting on this task's end (see AgentsWaitingOnTask).
func (s *Store) TaskCompleteWithOutput(ctx context.Context, agentID, taskID string, gen int64, status, errMsg string, results []ActionResult,
	output []OutputChunk, afterCommit func()) (bool, error) {
	var p rollout
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		end := now()
		t, err := updateHeldTask(ctx, tx, agentID, taskID, gen, `status = $5, error = $6, finished_at = $7, lease_expires_at = NULL`, status, errMsg, end)
		if err != nil {
			return err
		}
		_, events, err := storeOutput(ctx, tx, t, output)
		if err != nil {
			return err
		}
		for _, r := range results {
			attempts := string(r.Attempts)
			if attempts == "" {
				attempts = "[]"
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO action_results (task_id, idx, name, status, exit_code, error, started_at, finished_at, attempts)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, taskID, r.Index, r.Name, r.Status, r.ExitCode, r.Error, nullTime(r.StartedAt), nullTime(r.FinishedAt), attempts); err != nil {
				return fmt.Errorf("store result of action %d of task %s: %w", r.Index, taskID, store.Translate(err))
			}
		}
		events = append(events, &opsconductorv1.ExecutionEvent{
			Type: "task.status", ExecutionId: t.ExecutionID, TaskId: taskID, AgentName: t.AgentName, Status: status, Error: errMsg, Time: timestamppb.New(end),
		})
		// Numbering the events locks the execution (see appendEvents);
		// the same statement reads its rollout.
		last, err := numberEvents(ctx, tx, t.ExecutionID, len(events), ", "+rolloutColumns, p.fields()...)
		if err != nil {
			return err
		}
		if err := writeEvents(ctx, tx, last, events); err != nil {
			return err
		}
		if err := afterTaskEndedWith(ctx, tx, t.ExecutionID, end, p); err != nil {
			return err
		}
		if afterCommit != nil {
			tx.AfterCommit(afterCommit)
		}
		return nil
	})
	return p.limited(), err
}

// LostTask is a task whose agent stopped reporting.
type LostTask struct {
	TaskID, ExecutionID, AgentID string
	// Requeued: the execution's on_agent_loss policy put the task back in
	// the queue (still for the same agent, until Reassign moves it).
	Requeued bool
	// Remote: a remote-host task, back in the pool of its jump agents.
	Remote bool
}

// TaskExpireLeases deals with running tasks whose lease ran out before at:
// they end lost, or, when their execution's on_agent_loss policy is
// requeue, go back to the queue with a fresh queue deadline (a later claim
// bumps the lease generation, so the old agent's reports are refused).
// A remote-host task always goes back to its jump agents' pool, without
// the agent that lost it when another remains.
func (s *Store) TaskExpireLeases(ctx context.Context, at time.Time, afterCommit func()) ([]LostTask, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, lease_generation FROM tasks WHERE status = $1 AND lease_expires_at < $2 ORDER BY lease_expires_at LIMIT 500`, TaskRunning, at.UTC())
	if err != nil {
		return nil, fmt.Errorf("find expired leases: %w", err)
	}
	type lease struct {
		id  string
		gen int64
	}
	var expired []lease
	for rows.Next() {
		var l lease
		if err := rows.Scan(&l.id, &l.gen); err != nil {
			rows.Close()
			return nil, err
		}
		expired = append(expired, l)
	}
	rows.Close()
	var lost []LostTask
	const why = "lease expired: the agent stopped reporting on this task"
	for _, l := range expired {
		err := s.db.InTx(ctx, func(tx *store.Tx) error {
			var lt LostTask
			var agentName, onLoss, remote string
			var queueSecs int64
			err := tx.QueryRowContext(ctx, `SELECT t.execution_id, t.agent_id, t.agent_name, t.queue_timeout_seconds, e.on_agent_loss, t.remote
				FROM tasks t JOIN executions e ON e.id = t.execution_id
				WHERE t.id = $1 AND t.lease_generation = $2 AND t.status = $3 AND t.lease_expires_at < $4`+lockTaskRow(tx),
				l.id, l.gen, TaskRunning, at.UTC()).Scan(&lt.ExecutionID, &lt.AgentID, &agentName, &queueSecs, &onLoss, &remote)
			if errors.Is(err, sql.ErrNoRows) {
				return nil // completed or extended meanwhile
			}
			if err != nil {
				return fmt.Errorf("read expired task %s: %w", l.id, err)
			}
			lt.TaskID = l.id
			end := now()
			lt.Remote = remote != ""
			if (onLoss == "requeue" || lt.Remote) && !s.cancelRequested(ctx, tx, l.id) {
				var expires sql.NullTime
				if queueSecs > 0 {
					expires = sql.NullTime{Time: end.Add(time.Duration(queueSecs) * time.Second), Valid: true}
				}
				// A remote-host task leaves its agent: any jump agent may
				// take it again.
				unassign := ""
				if lt.Remote {
					unassign = ", agent_id = '', agent_name = ''"
				}
				res, err := tx.ExecContext(ctx, `UPDATE tasks SET status = $1, error = $2, lease_expires_at = NULL, started_at = NULL, queue_expires_at = $3`+unassign+`
					WHERE id = $4 AND lease_generation = $5 AND status = $6`, TaskQueued, why+"; re-queued", expires, l.id, l.gen, TaskRunning)
				if err != nil {
					return fmt.Errorf("requeue task %s: %w", l.id, err)
				}
				if n, _ := res.RowsAffected(); n != 1 {
					return nil
				}
				if lt.Remote {
					if _, err := tx.ExecContext(ctx, `DELETE FROM task_candidates WHERE task_id = $1 AND agent_id = $2
						AND EXISTS (SELECT 1 FROM task_candidates o WHERE o.task_id = $1 AND o.agent_id <> $2)`, l.id, lt.AgentID); err != nil {
						return fmt.Errorf("drop lost jump agent of task %s: %w", l.id, err)
					}
				}
				lt.Requeued = true
				lost = append(lost, lt)
				if afterCommit != nil {
					tx.AfterCommit(afterCommit)
				}
				return appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{
					Type: "task.status", ExecutionId: lt.ExecutionID, TaskId: l.id, AgentName: agentName, Status: TaskQueued,
					Error: why + "; re-queued", Time: timestamppb.New(end),
				})
			}
			res, err := tx.ExecContext(ctx, `UPDATE tasks SET status = $1, error = $2, finished_at = $3, lease_expires_at = NULL
				WHERE id = $4 AND lease_generation = $5 AND status = $6 AND lease_expires_at < $7`, TaskLost, why, end, l.id, l.gen, TaskRunning, at.UTC())
			if err != nil {
				return fmt.Errorf("expire task %s: %w", l.id, err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				return nil // completed or extended meanwhile
			}
			lost = append(lost, lt)
			if err := appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{
				Type: "task.status", ExecutionId: lt.ExecutionID, TaskId: l.id, AgentName: agentName, Status: TaskLost,
				Error: why, Time: timestamppb.New(end),
			}); err != nil {
				return err
			}
			if afterCommit != nil {
				tx.AfterCommit(afterCommit)
			}
			return afterTaskEnded(ctx, tx, lt.ExecutionID, end)
		})
		if err != nil {
			return lost, err
		}
	}
	return lost, nil
}

func (s *Store) cancelRequested(ctx context.Context, tx *store.Tx, taskID string) bool {
	var c bool
	_ = tx.QueryRowContext(ctx, `SELECT cancel_requested FROM tasks WHERE id = $1`, taskID).Scan(&c)
	return c
}

// TaskReassign moves a queued task from one agent to another (a requeued
// task whose agent is gone). It reports whether the task was still queued
// for from.
func (s *Store) TaskReassign(ctx context.Context, taskID, from, toID, toName string) (bool, error) {
	moved := false
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		var execID string
		err := tx.QueryRowContext(ctx, `UPDATE tasks SET agent_id = $1, agent_name = $2, target_key = $1
			WHERE id = $3 AND agent_id = $4 AND status = $5 AND remote = '' RETURNING execution_id`,
			toID, toName, taskID, from, TaskQueued).Scan(&execID)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reassign task %s: %w", taskID, err)
		}
		moved = true
		return appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{Type: "task.reassigned", ExecutionId: execID, TaskId: taskID, AgentName: toName,
			Status: TaskQueued, Error: "re-queued from an agent that stopped reporting", Time: timestamppb.New(now())})
	})
	return moved, err
}

// TaskLoseByAgent ends every queued and running task of the agent as lost
// with reason (the agent was revoked) and returns how many. afterCommit
// (may be nil) runs after each task's transaction.
func (s *Store) TaskLoseByAgent(ctx context.Context, agentID, reason string, afterCommit func()) (int, error) {
	// It no longer takes remote-host tasks. Those queued stay for the
	// other jump agents; those it was the only one for end with it rather
	// than wait for no one.
	// (A UNION, not an OR: SQLite's planner fails on the OR beside the
	// partial indexes of tasks.)
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM tasks WHERE agent_id = $1 AND status IN ($2, $3)
		UNION SELECT id FROM tasks WHERE agent_id = '' AND status = $2 AND EXISTS (SELECT 1 FROM task_candidates c WHERE c.task_id = tasks.id AND c.agent_id = $1)
			AND NOT EXISTS (SELECT 1 FROM task_candidates c WHERE c.task_id = tasks.id AND c.agent_id <> $1)`, agentID, TaskQueued, TaskRunning)
	if err != nil {
		return 0, fmt.Errorf("find tasks of agent %s: %w", agentID, err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if _, err := s.db.ExecContext(ctx, `DELETE FROM task_candidates WHERE agent_id = $1`, agentID); err != nil {
		return 0, fmt.Errorf("drop agent %s from jump candidates: %w", agentID, err)
	}
	n := 0
	for _, id := range ids {
		err := s.db.InTx(ctx, func(tx *store.Tx) error {
			end := now()
			var execID, agentName string
			err := tx.QueryRowContext(ctx, `UPDATE tasks SET status = $1, error = $2, finished_at = $3, lease_expires_at = NULL
				WHERE id = $4 AND status IN ($5, $6) RETURNING execution_id, agent_name`,
				TaskLost, reason, end, id, TaskQueued, TaskRunning).Scan(&execID, &agentName)
			if errors.Is(err, sql.ErrNoRows) {
				return nil // ended meanwhile
			}
			if err != nil {
				return fmt.Errorf("lose task %s: %w", id, err)
			}
			n++
			if err := appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{
				Type: "task.status", ExecutionId: execID, TaskId: id, AgentName: agentName, Status: TaskLost, Error: reason, Time: timestamppb.New(end),
			}); err != nil {
				return err
			}
			if afterCommit != nil {
				tx.AfterCommit(afterCommit)
			}
			return afterTaskEnded(ctx, tx, execID, end)
		})
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// failedStatuses are the task outcomes that count against max_failures.
var failedStatuses = []string{TaskFailed, TaskTimedOut, TaskLost, TaskExpired, TaskUnknown}

// afterTaskEnded runs after a task reached a final status: it applies the
// failure threshold (skipping what has not started once too many targets
// failed), opens the next rolling batch when the current one is done, and
// ends the execution when nothing is left.
func afterTaskEnded(ctx context.Context, tx *store.Tx, executionID string, end time.Time) error {
	var p rollout
	if err := tx.QueryRowContext(ctx, `SELECT `+rolloutColumns+` FROM executions WHERE id = $1`, executionID).Scan(p.fields()...); err != nil {
		return fmt.Errorf("read policy of %s: %w", executionID, err)
	}
	return afterTaskEndedWith(ctx, tx, executionID, end, p)
}

// rollout is how an execution goes through its tasks, as afterTaskEnded
// needs it.
type rollout struct {
	maxFailures, batchSize, currentBatch, maxParallel int
	pauseMS                                           int64
	reason                                            string
}

// rolloutColumns are the executions columns rollout.fields scans.
const rolloutColumns = `max_failures, batch_size, batch_pause_ms, current_batch, reason, max_parallel`

func (p *rollout) fields() []any {
	return []any{&p.maxFailures, &p.batchSize, &p.pauseMS, &p.currentBatch, &p.reason, &p.maxParallel}
}

// limited says whether the execution holds tasks back (max_parallel or
// batches): a task's end may then let others start.
func (p rollout) limited() bool { return p.maxParallel > 0 || p.batchSize > 0 }

// afterTaskEndedWith is afterTaskEnded with the execution's rollout read
// already, under its lock.
func afterTaskEndedWith(ctx context.Context, tx *store.Tx, executionID string, end time.Time, p rollout) error {
	maxFailures, batchSize, pauseMS, currentBatch, reason := p.maxFailures, p.batchSize, p.pauseMS, p.currentBatch, p.reason
	// One count serves the threshold and the end of the execution, unless
	// the threshold changes it.
	counts, err := countTasks(ctx, tx, executionID)
	if err != nil {
		return err
	}
	if maxFailures >= 0 && reason == "" {
		failed, total := 0, 0
		for st, n := range counts {
			total += n
			if slices.Contains(failedStatuses, st) {
				failed += n
			}
		}
		if failed > maxFailures {
			counts = nil // queued tasks are skipped below: count again
			why := fmt.Sprintf("failure threshold reached: %d of %d targets failed (max_failures %d); targets not yet started were skipped", failed, total, maxFailures)
			if _, err := tx.ExecContext(ctx, `UPDATE executions SET reason = $1 WHERE id = $2`, why, executionID); err != nil {
				return fmt.Errorf("record reason of %s: %w", executionID, err)
			}
			if err := endQueuedTasks(ctx, tx, executionID, TaskSkipped, "skipped: the execution's failure threshold was reached", end); err != nil {
				return fmt.Errorf("skip remaining tasks of %s: %w", executionID, err)
			}
			if err := appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{Type: "execution.threshold", ExecutionId: executionID, Error: why, Time: timestamppb.New(end)}); err != nil {
				return err
			}
		}
	}
	// Open the next batch once every task of the current one ended, and
	// go on through batches whose tasks all ended already (their agents
	// were revoked, say): no task end would ever open the one after.
	for batchSize > 0 {
		var unfinished, lastBatch int
		if err := tx.QueryRowContext(ctx, `SELECT
			(SELECT COUNT(*) FROM tasks WHERE execution_id = $1 AND batch <= $2 AND status IN ($3, $4)),
			(SELECT COALESCE(MAX(batch), 0) FROM tasks WHERE execution_id = $1)`,
			executionID, currentBatch, TaskQueued, TaskRunning).Scan(&unfinished, &lastBatch); err != nil {
			return fmt.Errorf("check batch of %s: %w", executionID, err)
		}
		if unfinished > 0 || currentBatch >= lastBatch {
			break
		}
		ready := end.Add(time.Duration(pauseMS) * time.Millisecond)
		if _, err := tx.ExecContext(ctx, `UPDATE executions SET current_batch = current_batch + 1, batch_ready_at = $1 WHERE id = $2`, ready, executionID); err != nil {
			return fmt.Errorf("open the next batch of %s: %w", executionID, err)
		}
		// Its tasks could not be claimed before; their wait starts now.
		if err := startQueueDeadlines(ctx, tx, executionID, currentBatch+1, ready); err != nil {
			return err
		}
		if err := appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{Type: "execution.batch", ExecutionId: executionID,
			Status: fmt.Sprintf("batch %d of %d", currentBatch+2, lastBatch+1), Time: timestamppb.New(ready)}); err != nil {
			return err
		}
		currentBatch++
	}
	return finishWithCounts(ctx, tx, executionID, end, counts)
}

// countTasks counts an execution's tasks by status.
func countTasks(ctx context.Context, tx *store.Tx, executionID string) (map[string]int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT status, COUNT(*) FROM tasks WHERE execution_id = $1 GROUP BY status`, executionID)
	if err != nil {
		return nil, fmt.Errorf("count tasks of execution %s: %w", executionID, err)
	}
	defer rows.Close()
	counts := map[string]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count tasks of execution %s: %w", executionID, err)
		}
		counts[st] = n
	}
	return counts, rows.Err()
}

// QueuedAgents lists the agents with queued tasks in the execution: after a
// task ends they may have work they could not take before (a free
// max_parallel slot, a new batch).
func (s *Store) QueuedAgents(ctx context.Context, executionID string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT agent_id FROM tasks WHERE execution_id = $1 AND status = $2 AND agent_id <> ''
		UNION SELECT c.agent_id FROM task_candidates c JOIN tasks t ON t.id = c.task_id
		WHERE t.execution_id = $1 AND t.status = $2 AND t.agent_id = ''`, executionID, TaskQueued)
	if err != nil {
		return nil, fmt.Errorf("find queued agents of %s: %w", executionID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// AgentsWaitingOnTask lists the agents with queued tasks in taskID's
// execution when that execution limits how many of its tasks run
// (max_parallel or rolling batches): the task's end may have made room for
// them. Without such a limit their tasks never waited on this one, and the
// answer is empty at the cost of one lookup.
func (s *Store) AgentsWaitingOnTask(ctx context.Context, taskID string) ([]string, error) {
	ids, err := store.QueryStrings(ctx, s.db, `SELECT q.agent_id FROM tasks t JOIN executions e ON e.id = t.execution_id
			JOIN tasks q ON q.execution_id = e.id AND q.status = '`+TaskQueued+`' AND q.agent_id <> ''
			WHERE t.id = $1 AND (e.max_parallel > 0 OR e.batch_size > 0)
		UNION SELECT c.agent_id FROM tasks t JOIN executions e ON e.id = t.execution_id
			JOIN tasks q ON q.execution_id = e.id AND q.status = '`+TaskQueued+`' AND q.agent_id = ''
			JOIN task_candidates c ON c.task_id = q.id
			WHERE t.id = $1 AND (e.max_parallel > 0 OR e.batch_size > 0)`, taskID)
	if err != nil {
		return nil, fmt.Errorf("find agents waiting on task %s: %w", taskID, err)
	}
	return ids, nil
}

// finishIfDone ends the execution when none of its tasks is queued or
// running: succeeded when every task succeeded, failed otherwise.
func finishIfDone(ctx context.Context, tx *store.Tx, executionID string, end time.Time) error {
	return finishWithCounts(ctx, tx, executionID, end, nil)
}

// finishWithCounts is finishIfDone with the execution's task counts read
// already under the execution's lock (nil: read them).
func finishWithCounts(ctx context.Context, tx *store.Tx, executionID string, end time.Time, counts map[string]int) error {
	if counts == nil {
		var err error
		if counts, err = countTasks(ctx, tx, executionID); err != nil {
			return err
		}
	}
	if counts[TaskQueued] > 0 || counts[TaskRunning] > 0 {
		return nil
	}
	final := ExecSucceeded
	for st, n := range counts {
		if st != TaskSucceeded && n > 0 {
			final = ExecFailed
		}
	}
	var cancelAt sql.NullTime
	if err := tx.QueryRowContext(ctx, `SELECT cancel_requested_at FROM executions WHERE id = $1`, executionID).Scan(&cancelAt); err != nil {
		return fmt.Errorf("read execution %s: %w", executionID, err)
	}
	if cancelAt.Valid {
		final = ExecCancelled
	}
	res, err := tx.ExecContext(ctx, `UPDATE executions SET status = $1, finished_at = $2 WHERE id = $3 AND status IN ($4, $5)`,
		final, end, executionID, ExecQueued, ExecRunning)
	if err != nil {
		return fmt.Errorf("finish execution %s: %w", executionID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil
	}
	if err := appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{Type: "execution.status", ExecutionId: executionID, Status: final, Time: timestamppb.New(end)}); err != nil {
		return err
	}
	return releaseWaiting(ctx, tx, executionID, end)
}

// releaseWaiting lets the executions that waited for executionID run; their
// tasks' queue deadlines start now.
func releaseWaiting(ctx context.Context, tx *store.Tx, executionID string, at time.Time) error {
	// An execution that ends while itself still waiting (cancelled in the
	// queue) hands its waiters on to the one it waited for: they must not
	// start while that one still runs. (Should it finish meanwhile, the
	// reaper's ExecutionReleaseStranded lets them go.)
	var predecessor, predecessorStatus string
	err := tx.QueryRowContext(ctx, `SELECT p.id, p.status FROM executions e JOIN executions p ON p.id = e.waiting_for WHERE e.id = $1`, executionID).
		Scan(&predecessor, &predecessorStatus)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("read what %s waited for: %w", executionID, err)
	case predecessorStatus == ExecQueued || predecessorStatus == ExecRunning:
		if _, err := tx.ExecContext(ctx, `UPDATE executions SET waiting_for = $1 WHERE waiting_for = $2 AND waiting_for <> ''`, predecessor, executionID); err != nil {
			return fmt.Errorf("pass the waiters of %s on to %s: %w", executionID, predecessor, err)
		}
		return nil
	}
	// (waiting_for <> '' lets the partial index executions_waiting serve
	// these updates.)
	rows, err := tx.QueryContext(ctx, `UPDATE executions SET waiting_for = '' WHERE waiting_for = $1 AND waiting_for <> '' RETURNING id`, executionID)
	if err != nil {
		return fmt.Errorf("release executions waiting for %s: %w", executionID, err)
	}
	var released []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		released = append(released, id)
	}
	rows.Close()
	for _, id := range released {
		if err := startQueueDeadlines(ctx, tx, id, 0, at); err != nil {
			return err
		}
	}
	return nil
}

// lockTaskRow locks the task row of a query joining tasks t with their
// execution, and only it: the lock order everywhere is task, then
// execution. SQLite serializes transactions and needs no row locks.
func lockTaskRow(tx *store.Tx) string {
	if tx.Dialect() == store.Postgres {
		return " FOR UPDATE OF t"
	}
	return ""
}

// ExecutionReleaseStranded releases executions queued behind one that has
// already finished (a safety net: the finishing transaction releases its
// waiters itself) and returns how many it released.
func (s *Store) ExecutionReleaseStranded(ctx context.Context, at time.Time) (int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT w.waiting_for FROM executions w JOIN executions e ON e.id = w.waiting_for
		WHERE w.waiting_for <> '' AND e.status NOT IN ($1, $2)`, ExecQueued, ExecRunning)
	if err != nil {
		return 0, fmt.Errorf("find executions waiting for finished ones: %w", err)
	}
	var finished []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		finished = append(finished, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("find executions waiting for finished ones: %w", err)
	}
	for _, id := range finished {
		if err := s.db.InTx(ctx, func(tx *store.Tx) error { return releaseWaiting(ctx, tx, id, at) }); err != nil {
			return 0, err
		}
	}
	return len(finished), nil
}

// endQueuedTasks ends every queued task of an execution with status and
// why, and records a task.status event for each.
func endQueuedTasks(ctx context.Context, tx *store.Tx, executionID, status, why string, at time.Time) error {
	rows, err := tx.QueryContext(ctx, `UPDATE tasks SET status = $1, error = $2, finished_at = $3
		WHERE execution_id = $4 AND status = $5 RETURNING id, agent_name`, status, why, at, executionID, TaskQueued)
	if err != nil {
		return err
	}
	type ended struct{ id, agent string }
	var done []ended
	for rows.Next() {
		var e ended
		if err := rows.Scan(&e.id, &e.agent); err != nil {
			rows.Close()
			return err
		}
		done = append(done, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, e := range done {
		if err := appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{Type: "task.status", ExecutionId: executionID, TaskId: e.id,
			AgentName: e.agent, Status: status, Error: why, Time: timestamppb.New(at)}); err != nil {
			return err
		}
	}
	return nil
}

// startQueueDeadlines starts the queue deadline of the queued tasks in one
// batch of an execution: the time they may wait for their agent counts
// from when they could first be claimed, not from when they were created.
func startQueueDeadlines(ctx context.Context, tx *store.Tx, executionID string, batch int, at time.Time) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, queue_timeout_seconds FROM tasks WHERE execution_id = $1 AND status = $2 AND batch = $3 AND queue_timeout_seconds > 0`,
		executionID, TaskQueued, batch)
	if err != nil {
		return fmt.Errorf("read tasks of %s: %w", executionID, err)
	}
	deadlines := map[string]int64{}
	for rows.Next() {
		var tid string
		var secs int64
		if err := rows.Scan(&tid, &secs); err != nil {
			rows.Close()
			return err
		}
		deadlines[tid] = secs
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read tasks of %s: %w", executionID, err)
	}
	for tid, secs := range deadlines {
		if _, err := tx.ExecContext(ctx, `UPDATE tasks SET queue_expires_at = $1 WHERE id = $2`, at.Add(time.Duration(secs)*time.Second).UTC(), tid); err != nil {
			return fmt.Errorf("start queue deadline of task %s: %w", tid, err)
		}
	}
	return nil
}

// TaskExpireQueued ends as expired the queued tasks whose queue deadline
// passed before at (their agent never claimed them) and returns how many.
func (s *Store) TaskExpireQueued(ctx context.Context, at time.Time, afterCommit func()) (int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM tasks WHERE status = $1 AND queue_expires_at < $2 ORDER BY queue_expires_at LIMIT 500`, TaskQueued, at.UTC())
	if err != nil {
		return 0, fmt.Errorf("find expired queued tasks: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	n := 0
	const why = "no agent claimed it within the queue timeout (is the agent offline?)"
	for _, id := range ids {
		err := s.db.InTx(ctx, func(tx *store.Tx) error {
			end := now()
			var execID, agentName string
			err := tx.QueryRowContext(ctx, `UPDATE tasks SET status = $1, error = $2, finished_at = $3
				WHERE id = $4 AND status = $5 AND queue_expires_at < $6 RETURNING execution_id, agent_name`,
				TaskExpired, why, end, id, TaskQueued, at.UTC()).Scan(&execID, &agentName)
			if errors.Is(err, sql.ErrNoRows) {
				return nil // claimed meanwhile
			}
			if err != nil {
				return fmt.Errorf("expire task %s: %w", id, err)
			}
			n++
			if err := appendEvent(ctx, tx, &opsconductorv1.ExecutionEvent{Type: "task.status", ExecutionId: execID, TaskId: id,
				AgentName: agentName, Status: TaskExpired, Error: why, Time: timestamppb.New(end)}); err != nil {
				return err
			}
			if afterCommit != nil {
				tx.AfterCommit(afterCommit)
			}
			return afterTaskEnded(ctx, tx, execID, end)
		})
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// EventsAfter returns up to limit events of an execution after sequence
// after, in order, with Sequence set.
func (s *Store) EventsAfter(ctx context.Context, executionID string, after int64, limit int) ([]*opsconductorv1.ExecutionEvent, error) {
	raw, err := outbox.ListAggregateAfter(ctx, s.db, executionID, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]*opsconductorv1.ExecutionEvent, 0, len(raw))
	for _, r := range raw {
		ev := &opsconductorv1.ExecutionEvent{}
		if err := protojson.Unmarshal(r.Payload, ev); err != nil {
			return nil, fmt.Errorf("decode event %d: %w", r.Seq, err)
		}
		ev.Sequence = r.AggregateSeq
		out = append(out, ev)
	}
	return out, nil
}

func timePtr(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	u := t.Time.UTC()
	return &u
}

func nullTime(t *time.Time) sql.NullTime {
	if t == nil {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: t.UTC(), Valid: true}
}

// Summary is an execution as the business metrics see it.
type Summary struct {
	JobID, JobName, Status string
	StartedAt, FinishedAt  *time.Time
}

// Summaries lists the executions created in [from, to).
func (s *Store) Summaries(ctx context.Context, from, to time.Time) ([]Summary, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT job_id, job_name, status, started_at, finished_at FROM executions
		WHERE created_at >= $1 AND created_at < $2`, from.UTC(), to.UTC())
	if err != nil {
		return nil, fmt.Errorf("summarise executions: %w", err)
	}
	defer rows.Close()
	var out []Summary
	for rows.Next() {
		var e Summary
		var started, finished sql.NullTime
		if err := rows.Scan(&e.JobID, &e.JobName, &e.Status, &started, &finished); err != nil {
			return nil, fmt.Errorf("scan execution summary: %w", err)
		}
		if started.Valid {
			t := started.Time.UTC()
			e.StartedAt = &t
		}
		if finished.Valid {
			t := finished.Time.UTC()
			e.FinishedAt = &t
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// QueuedTasks counts the tasks waiting for an agent (the queue depth).
func (s *Store) QueuedTasks(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM tasks WHERE status = $1`, TaskQueued).Scan(&n); err != nil {
		return 0, fmt.Errorf("count queued tasks: %w", err)
	}
	return n, nil
}

// Run is an execution as the compliance export shows it: who ran which
// job on which targets, and any dangerous-command override.
type Run struct {
	ID, JobName, CreatedBy, Status string
	CreatedAt                      time.Time
	Targets                        []string // agent names, or the remote hosts
	DangerousReason                string   // "" when no override
}

// Runs lists the executions created in [from, to), oldest first.
func (s *Store) Runs(ctx context.Context, from, to time.Time) ([]Run, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT e.id, e.job_name, e.created_by, e.status, e.created_at, e.allow_dangerous, e.dangerous_reason,
		COALESCE(t.agent_name, ''), COALESCE(t.host, '')
		FROM executions e LEFT JOIN tasks t ON t.execution_id = e.id
		WHERE e.created_at >= $1 AND e.created_at < $2 ORDER BY e.created_at, e.id, t.agent_name, t.host`, from.UTC(), to.UTC())
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	defer rows.Close()
	var out []Run
	for rows.Next() {
		var r Run
		var dangerous bool
		var agent, host string
		if err := rows.Scan(&r.ID, &r.JobName, &r.CreatedBy, &r.Status, &r.CreatedAt, &dangerous, &r.DangerousReason, &agent, &host); err != nil {
			return nil, fmt.Errorf("scan run: %w", err)
		}
		if !dangerous {
			r.DangerousReason = ""
		}
		target := agent
		if host != "" {
			target = host
		}
		if n := len(out); n > 0 && out[n-1].ID == r.ID {
			if target != "" {
				out[n-1].Targets = append(out[n-1].Targets, target)
			}
			continue
		}
		r.CreatedAt = r.CreatedAt.UTC()
		if target != "" {
			r.Targets = []string{target}
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// PurgeFinished deletes up to batch executions that finished before
// before, with their tasks, results, output and events (one transaction);
// it returns how many it deleted. An execution with events not yet
// published (outbox rows above published) is kept for a later run.
// Retention calls it until it returns fewer than batch, so no transaction
// holds much for long.
func (s *Store) PurgeFinished(ctx context.Context, before time.Time, published int64, batch int) (int, error) {
	deleted := 0
	err := s.db.InTx(ctx, func(tx *store.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT e.id FROM executions e WHERE e.finished_at IS NOT NULL AND e.finished_at < $1
			AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.aggregate_id = e.id AND o.seq > $3)
			ORDER BY e.finished_at LIMIT $2`, before.UTC(), batch, published)
		if err != nil {
			return fmt.Errorf("find executions to purge: %w", err)
		}
		var ids []any
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil || len(ids) == 0 {
			return err
		}
		in := placeholders(len(ids))
		tasks := `SELECT id FROM tasks WHERE execution_id IN ` + in
		for _, q := range []string{
			`DELETE FROM action_results WHERE task_id IN (` + tasks + `)`,
			`DELETE FROM task_output WHERE task_id IN (` + tasks + `)`,
			`DELETE FROM task_candidates WHERE task_id IN (` + tasks + `)`,
			`DELETE FROM tasks WHERE execution_id IN ` + in,
			`DELETE FROM outbox WHERE aggregate_id IN ` + in,
			`DELETE FROM executions WHERE id IN ` + in,
		} {
			if _, err := tx.ExecContext(ctx, q, ids...); err != nil {
				return fmt.Errorf("purge executions: %w", err)
			}
		}
		deleted = len(ids)
		return nil
	})
	return deleted, err
}

// placeholders is "($1, $2, ..., $n)".
func placeholders(n int) string {
	var b strings.Builder
	b.WriteString("(")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "$%d", i+1)
	}
	b.WriteString(")")
	return b.String()
}
