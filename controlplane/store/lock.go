package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"time"
)

// SessionLock is a Postgres session-level advisory lock held on a
// connection of its own: it lasts until Release or until that connection
// dies (a crashed holder loses it when the server notices), which makes it
// a leader election. On SQLite, a single node, it is always granted.
type SessionLock struct {
	conn *sql.Conn // nil on SQLite
}

// TryLock takes the lock named key if no one holds it, without waiting.
func (db *DB) TryLock(ctx context.Context, key string) (*SessionLock, bool, error) {
	if db.dialect != Postgres {
		return &SessionLock{}, true, nil
	}
	conn, err := db.sql.Conn(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("connection for lock %s: %w", key, err)
	}
	var got bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, key).Scan(&got); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("try lock %s: %w", key, err)
	}
	if !got {
		conn.Close()
		return nil, false, nil
	}
	// A holder whose host vanishes without closing the connection is
	// noticed by the server's keepalives in about 11s, not the
	// operating system's default two hours.
	for _, set := range []string{`SET tcp_keepalives_idle = 5`, `SET tcp_keepalives_interval = 2`, `SET tcp_keepalives_count = 3`} {
		_, _ = conn.ExecContext(ctx, set)
	}
	return &SessionLock{conn: conn}, true, nil
}

// Held checks the lock's connection still works (and so the lock holds).
func (l *SessionLock) Held(ctx context.Context) bool {
	if l.conn == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return l.conn.PingContext(ctx) == nil
}

// Release gives the lock up.
func (l *SessionLock) Release() {
	if l.conn == nil {
		return
	}
	if _, err := l.conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock_all()`); err != nil {
		// Make database/sql discard the connection (ending its session)
		// rather than pool it with the lock still on it.
		_ = l.conn.Raw(func(any) error { return driver.ErrBadConn })
	}
	_ = l.conn.Close()
}
