package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// JournalEntry is what the agent knows of a task it is running, written
// before each action and after each: if the agent dies, its next start
// reports from it what finished and what it cannot vouch for.
type JournalEntry struct {
	TaskID          string    `json:"task_id"`
	LeaseGeneration int64     `json:"lease_generation"`
	StartedAt       time.Time `json:"started_at"`
	// Actions holds the outcomes so far, each as protobuf JSON
	// (opsconductor.agent.v1.ActionOutcome).
	Actions []json.RawMessage `json:"actions"`
	// Running is the index of the action under way (-1: none).
	Running int `json:"running"`
	// Final is set once the task's outcome is decided (reporting it may
	// still have failed).
	FinalStatus string `json:"final_status,omitempty"`
	FinalError  string `json:"final_error,omitempty"`
}

// Journal keeps one file per task in flight under DIR/journal.
type Journal struct {
	Dir string
}

func (j Journal) dir() string { return filepath.Join(j.Dir, "journal") }

// path is one entry's file. It is per lease generation: a task leased
// again to this agent (after a lost lease) must not share, and lose, the
// entry of the attempt it replaces.
func (j Journal) path(taskID string, gen int64) string {
	return filepath.Join(j.dir(), fmt.Sprintf("%s.g%d.json", strings.ReplaceAll(taskID, string(filepath.Separator), "_"), gen))
}

// Save writes an entry atomically (and durably: the point is surviving a
// crash).
func (j Journal) Save(e JournalEntry) error {
	if err := os.MkdirAll(j.dir(), 0o700); err != nil {
		return fmt.Errorf("create journal dir: %w", err)
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(j.dir(), ".entry-*")
	if err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write journal: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write journal: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), j.path(e.TaskID, e.LeaseGeneration))
}

// Remove forgets one attempt at a task (once its outcome was reported).
func (j Journal) Remove(taskID string, gen int64) error {
	// Entries written before the name carried the generation.
	_ = os.Remove(filepath.Join(j.dir(), strings.ReplaceAll(taskID, string(filepath.Separator), "_")+".json"))
	err := os.Remove(j.path(taskID, gen))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Load returns every entry left behind, oldest first.
func (j Journal) Load() ([]JournalEntry, error) {
	files, err := filepath.Glob(filepath.Join(j.dir(), "*.json"))
	if err != nil {
		return nil, err
	}
	var out []JournalEntry
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read journal: %w", err)
		}
		var e JournalEntry
		if err := json.Unmarshal(b, &e); err != nil {
			return nil, fmt.Errorf("journal entry %s is unreadable: %w", f, err)
		}
		out = append(out, e)
	}
	return out, nil
}
