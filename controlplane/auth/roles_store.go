package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/outbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
)

// RoleRecord is a custom role.
type RoleRecord struct {
	Name           string
	Description    string
	Permissions    []string
	JobSelector    string
	TargetSelector string
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

// UserRecord is a user: a named principal whose roles its API tokens (and
// JWTs with its name as sub) get.
type UserRecord struct {
	Name      string
	Roles     []string
	Disabled  bool
	CreatedAt time.Time
	UpdatedAt time.Time
}

// RolePut creates or replaces a custom role.
func (s *Store) RolePut(ctx context.Context, r RoleRecord, create bool) error {
	perms, err := json.Marshal(r.Permissions)
	if err != nil {
		return err
	}
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		var err error
		if create {
			_, err = tx.ExecContext(ctx, `INSERT INTO roles (name, description, permissions, job_selector, target_selector, created_at, updated_at)
				VALUES ($1, $2, $3, $4, $5, $6, $6)`, r.Name, r.Description, string(perms), r.JobSelector, r.TargetSelector, r.UpdatedAt.UTC())
		} else {
			var res interface{ RowsAffected() (int64, error) }
			res, err = tx.ExecContext(ctx, `UPDATE roles SET description = $1, permissions = $2, job_selector = $3, target_selector = $4, updated_at = $5
				WHERE name = $6`, r.Description, string(perms), r.JobSelector, r.TargetSelector, r.UpdatedAt.UTC(), r.Name)
			if err == nil {
				if n, _ := res.RowsAffected(); n != 1 {
					err = store.ErrNotFound
				}
			}
		}
		if err != nil {
			return fmt.Errorf("store role %s: %w", r.Name, store.Translate(err))
		}
		_, err = outbox.Append(ctx, tx, "role.changed", r.Name, 0, map[string]any{"role": r.Name, "permissions": r.Permissions,
			"job_selector": r.JobSelector, "target_selector": r.TargetSelector})
		return err
	})
}

const roleColumns = `SELECT name, description, permissions, job_selector, target_selector, created_at, updated_at FROM roles`

func scanRole(row interface{ Scan(...any) error }) (RoleRecord, error) {
	var r RoleRecord
	var perms string
	if err := row.Scan(&r.Name, &r.Description, &perms, &r.JobSelector, &r.TargetSelector, &r.CreatedAt, &r.UpdatedAt); err != nil {
		return RoleRecord{}, store.Translate(err)
	}
	if err := json.Unmarshal([]byte(perms), &r.Permissions); err != nil {
		return RoleRecord{}, fmt.Errorf("decode permissions of role %s: %w", r.Name, err)
	}
	return r, nil
}

// RoleGet returns a custom role.
func (s *Store) RoleGet(ctx context.Context, name string) (RoleRecord, error) {
	r, err := scanRole(s.db.QueryRowContext(ctx, roleColumns+` WHERE name = $1`, name))
	if err != nil {
		return RoleRecord{}, fmt.Errorf("get role %s: %w", name, err)
	}
	return r, nil
}

// RoleList returns every custom role by name.
func (s *Store) RoleList(ctx context.Context) ([]RoleRecord, error) {
	rows, err := s.db.QueryContext(ctx, roleColumns+` ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list roles: %w", err)
	}
	defer rows.Close()
	var out []RoleRecord
	for rows.Next() {
		r, err := scanRole(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// RoleDelete removes a custom role.
func (s *Store) RoleDelete(ctx context.Context, name string) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM roles WHERE name = $1`, name)
		if err != nil {
			return fmt.Errorf("delete role %s: %w", name, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("delete role %s: %w", name, store.ErrNotFound)
		}
		_, err = outbox.Append(ctx, tx, "role.deleted", name, 0, map[string]any{"role": name})
		return err
	})
}

// UserPut creates or replaces a user.
func (s *Store) UserPut(ctx context.Context, u UserRecord, create bool) error {
	roles, err := json.Marshal(u.Roles)
	if err != nil {
		return err
	}
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		var err error
		if create {
			_, err = tx.ExecContext(ctx, `INSERT INTO users (name, roles, disabled, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)`,
				u.Name, string(roles), u.Disabled, u.UpdatedAt.UTC())
		} else {
			var res interface{ RowsAffected() (int64, error) }
			res, err = tx.ExecContext(ctx, `UPDATE users SET roles = $1, disabled = $2, updated_at = $3 WHERE name = $4`,
				string(roles), u.Disabled, u.UpdatedAt.UTC(), u.Name)
			if err == nil {
				if n, _ := res.RowsAffected(); n != 1 {
					err = store.ErrNotFound
				}
			}
		}
		if err != nil {
			return fmt.Errorf("store user %s: %w", u.Name, store.Translate(err))
		}
		_, err = outbox.Append(ctx, tx, "user.changed", u.Name, 0, map[string]any{"user": u.Name, "roles": u.Roles, "disabled": u.Disabled})
		return err
	})
}

const userColumns = `SELECT name, roles, disabled, created_at, updated_at FROM users`

func scanUser(row interface{ Scan(...any) error }) (UserRecord, error) {
	var u UserRecord
	var roles string
	if err := row.Scan(&u.Name, &roles, &u.Disabled, &u.CreatedAt, &u.UpdatedAt); err != nil {
		return UserRecord{}, store.Translate(err)
	}
	if err := json.Unmarshal([]byte(roles), &u.Roles); err != nil {
		return UserRecord{}, fmt.Errorf("decode roles of user %s: %w", u.Name, err)
	}
	return u, nil
}

// UserGet returns a user.
func (s *Store) UserGet(ctx context.Context, name string) (UserRecord, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, userColumns+` WHERE name = $1`, name))
	if err != nil {
		return UserRecord{}, fmt.Errorf("get user %s: %w", name, err)
	}
	return u, nil
}

// UserList returns every user by name.
func (s *Store) UserList(ctx context.Context) ([]UserRecord, error) {
	rows, err := s.db.QueryContext(ctx, userColumns+` ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	var out []UserRecord
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// UserDelete removes a user and revokes its API tokens.
func (s *Store) UserDelete(ctx context.Context, name string, now time.Time) error {
	return s.db.InTx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM users WHERE name = $1`, name)
		if err != nil {
			return fmt.Errorf("delete user %s: %w", name, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("delete user %s: %w", name, store.ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL`, now.UTC(), name); err != nil {
			return fmt.Errorf("revoke tokens of user %s: %w", name, err)
		}
		_, err = outbox.Append(ctx, tx, "user.deleted", name, 0, map[string]any{"user": name})
		return err
	})
}

// RoleInUse reports who still refers to a role (users and live API
// tokens), so it is not deleted from under them.
func (s *Store) RoleInUse(ctx context.Context, name string) ([]string, error) {
	var users []string
	us, err := s.UserList(ctx)
	if err != nil {
		return nil, err
	}
	for _, u := range us {
		for _, r := range u.Roles {
			if r == name {
				users = append(users, "user "+u.Name)
			}
		}
	}
	ts, err := s.TokenList(ctx)
	if err != nil {
		return nil, err
	}
	for _, t := range ts {
		if t.RevokedAt != nil {
			continue
		}
		for _, r := range t.Roles {
			if r == name {
				users = append(users, "token "+t.Name)
			}
		}
	}
	return users, nil
}
