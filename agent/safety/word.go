package safety

import (
	"maps"
	"path"
	"strings"
)

// hole stands for a part of a word the checker could not resolve: an
// unknown variable, a command substitution, an arithmetic expansion. It is a
// private-use rune, so it survives being re-parsed inside a `bash -c`
// string, where it keeps meaning "unknown".
const hole = "\uE000"

// holeDisplay shows a hole in normalized commands.
const holeDisplay = "<unresolved>"

// maxValues bounds how many values a word or variable may have (brace
// expansions, variables assigned in several branches, for-loop items).
// Beyond it the word is treated as unresolved.
const maxValues = 64

// word is a shell word after quoting, escapes, brace expansion and known
// variables are resolved.
type word struct {
	// vals are the values the word may take: one, unless a variable with
	// several possible values or a brace expansion is involved. Unresolved
	// parts appear as hole.
	vals []string
	// src is the word as written, shown when it has no single known value.
	src string
	// download is set when a command substitution or process substitution
	// in the word downloads something (curl, wget, ...).
	download bool
}

// lit makes a word with one known value.
func lit(s string) word { return word{vals: []string{s}, src: s} }

// known returns the word's value when it has exactly one and it is fully
// resolved.
func (w word) known() (string, bool) {
	if len(w.vals) != 1 || strings.Contains(w.vals[0], hole) {
		return "", false
	}
	return w.vals[0], true
}

// is reports whether the word is known to be s.
func (w word) is(s string) bool {
	v, ok := w.known()
	return ok && v == s
}

// resolved reports whether every value of the word is fully known.
func (w word) resolved() bool {
	for _, v := range w.vals {
		if strings.Contains(v, hole) {
			return false
		}
	}
	return len(w.vals) > 0
}

// opaque reports whether nothing of the word is known: it is only
// unresolved parts and whitespace, like "$CMD" or "$(…)".
func (w word) opaque() bool {
	for _, v := range w.vals {
		if !strings.Contains(v, hole) || strings.TrimSpace(strings.ReplaceAll(v, hole, "")) != "" {
			return false
		}
	}
	return len(w.vals) > 0
}

// display renders the word for normalized commands.
func (w word) display() string {
	if v, ok := w.known(); ok {
		return v
	}
	if w.src != "" {
		return strings.ReplaceAll(w.src, hole, holeDisplay)
	}
	if len(w.vals) > 0 {
		return strings.ReplaceAll(w.vals[0], hole, holeDisplay)
	}
	return ""
}

// mayBe tests whether the word names something pred matches, resolving
// relative paths against cwd when it is known. Dangerous: a known value
// matches. PossiblyDangerous: a value with unresolved parts could match
// because the known parts match once the unknown ones are empty or some
// name ("/home/$USER" may be "/home/"), or, when bare is set, because
// nothing but path punctuation is known ("$DIR", "$DIR/*"); bare is for
// positions where any unknown path is dangerous, like rm -rf's operands.
// The matching value, or the word as written, is returned for the reason.
func (w word) mayBe(pred func(string) bool, cwd string, bare bool) (Verdict, string) {
	verdict := Safe
	for _, v := range w.vals {
		if !strings.Contains(v, hole) {
			if abs := absolute(v, cwd); pred(abs) {
				return Dangerous, abs
			}
			continue
		}
		empty := strings.ReplaceAll(v, hole, "")
		named := strings.ReplaceAll(v, hole, "x")
		if bare && strings.Trim(empty, `/\*.: `) == "" || pred(absolute(empty, cwd)) || pred(absolute(named, cwd)) {
			verdict = PossiblyDangerous
		}
	}
	return verdict, w.display()
}

// absolute resolves a relative path against a known working directory.
func absolute(p, cwd string) string {
	if cwd == "" || p == "" || strings.HasPrefix(p, "/") || strings.HasPrefix(p, "~") {
		return p
	}
	if strings.HasPrefix(cwd, "~") {
		return cwd + "/" + p
	}
	return path.Join(cwd, p)
}

// product concatenates every value of a with every value of b. Beyond
// maxValues the result is a single unresolved value.
func product(a, b []string) []string {
	if len(a)*len(b) > maxValues {
		return []string{hole}
	}
	out := make([]string, 0, len(a)*len(b))
	for _, x := range a {
		for _, y := range b {
			out = append(out, x+y)
		}
	}
	return out
}

// union merges value lists, dropping duplicates. Beyond maxValues the
// result is a single unresolved value.
func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, v := range b {
		if !contains(out, v) {
			out = append(out, v)
		}
	}
	if len(out) > maxValues {
		return []string{hole}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// scope is what the checker knows about the shell's state at a point of
// the script.
type scope struct {
	// vars holds variables assigned in the script with their possible
	// values. A variable not in the map is unknown (it may come from the
	// environment).
	vars map[string][]string
	// cwd is the working directory when a `cd` made it known, else "".
	cwd string
	// cond is >0 inside code that may or may not run (a branch, a loop
	// body, the right side of && or ||, a function body). Assignments
	// there add possible values instead of replacing them.
	cond int
}

func newScope() *scope { return &scope{vars: map[string][]string{}} }

// clone copies the scope for a subshell, whose changes do not leak out.
func (s *scope) clone() *scope {
	return &scope{vars: maps.Clone(s.vars), cwd: s.cwd, cond: s.cond}
}

// lookup returns a variable's possible values; unknown variables are a
// hole, except HOME and HISTFILE, whose usual values are known.
func (s *scope) lookup(name string) []string {
	if v, ok := s.vars[name]; ok {
		return v
	}
	switch name {
	case "HOME":
		return []string{"~"}
	case "HISTFILE":
		return []string{"~/.bash_history"}
	case "PWD":
		if s.cwd != "" {
			return []string{s.cwd}
		}
	}
	return []string{hole}
}

// set assigns a variable. In conditional code the old values stay
// possible; an unknown old value (the variable was never assigned) stays
// possible as a hole.
func (s *scope) set(name string, vals []string) {
	if s.cond > 0 {
		vals = union(s.lookup(name), vals)
	}
	s.vars[name] = vals
}

// forget makes a variable unknown (unset, read, ...).
func (s *scope) forget(name string) {
	delete(s.vars, name)
}

// chdir records a `cd`. A relative directory needs a known cwd; anything
// unresolved, or a change in conditional code, makes the cwd unknown.
func (s *scope) chdir(dir word) {
	v, ok := dir.known()
	next := ""
	switch {
	case !ok:
	case strings.HasPrefix(v, "/"):
		next = path.Clean(v)
	case strings.HasPrefix(v, "~"):
		next = v
	case s.cwd != "" && v != "-":
		next = absolute(v, s.cwd)
	}
	if s.cond > 0 && next != s.cwd {
		next = ""
	}
	s.cwd = next
}
