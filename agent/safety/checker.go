// Package safety is the dangerous-command checker. Before a task's script
// runs, the agent (and the control plane, when a job is saved) asks it
// whether the script would do something an operator rarely means to do:
// delete / or a system directory, format or overwrite a disk, power the host
// off, pipe a download into a shell, drop a database.
//
// Shell scripts are parsed with mvdan.cc/sh rather than matched as text, so
// quoting, sudo and env wrappers, `bash -c` strings, `;` chains, pipes,
// subshells and variables assigned earlier in the script are seen through.
// PowerShell and cmd are tokenized, and SQL is looked for in the arguments
// of database clients. What the checker cannot resolve in a dangerous
// position (rm -rf $UNKNOWN, eval of a computed string) is reported as
// possibly dangerous, and blocked like dangerous.
//
// It is a safety net against mistakes, not a security boundary: someone who
// wants to do harm can always hide it better than a static check can see.
//
// The package must not import control-plane code: the agent binary uses it.
package safety

import (
	"cmp"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Language is the interpreter a script is written for.
type Language string

// The languages the checker understands.
const (
	// Shell is a POSIX shell or bash script.
	Shell Language = "shell"
	// PowerShell is a Windows PowerShell or pwsh script.
	PowerShell Language = "powershell"
	// Cmd is a cmd.exe batch script.
	Cmd Language = "cmd"
)

// Severity says how bad a matched command would be if it ran.
type Severity string

// The severities, worst first.
const (
	// Critical loses data or the host: rm -rf /, mkfs, DROP DATABASE.
	Critical Severity = "critical"
	// High interrupts service or is hard to undo: reboot, iptables -F.
	High Severity = "high"
	// Medium hides tracks or wipes something minor: history -c.
	Medium Severity = "medium"
)

// Verdict is the checker's conclusion about a command or a whole script.
type Verdict string

// The verdicts.
const (
	// Safe: no rule matched.
	Safe Verdict = "safe"
	// Dangerous: a rule matched a command the checker fully resolved.
	Dangerous Verdict = "dangerous"
	// PossiblyDangerous: a rule would match for some value of a part the
	// checker could not resolve (a variable, a command substitution, a
	// string run by eval), or the script did not parse and a dangerous
	// token sequence appears in it. It is blocked like Dangerous.
	PossiblyDangerous Verdict = "possibly_dangerous"
)

// Finding is one rule matching one command.
type Finding struct {
	// Rule is a stable id, e.g. "shell.rm-root"; operator rules use their
	// own ids.
	Rule string
	// Severity is the rule's severity.
	Severity Severity
	// Verdict is Dangerous or PossiblyDangerous.
	Verdict Verdict
	// Reason says why in one sentence, e.g. "recursive delete of / (rm -rf /)".
	Reason string
	// Snippet is the offending command as written in the script (or in the
	// string a `bash -c` or eval ran).
	Snippet string
	// Command is the normalized command that matched: its words after
	// quoting, known variables and wrappers such as sudo are resolved,
	// joined by single spaces; words the checker could not resolve keep
	// their source text. Stages of a pipeline are joined by " | ". Allow
	// entries are matched against it.
	Command string
}

// Report is the outcome of checking one script.
type Report struct {
	// Verdict is the worst verdict of the findings: Dangerous over
	// PossiblyDangerous over Safe.
	Verdict Verdict
	// Findings lists every match in the order found; empty when Safe.
	Findings []Finding
}

// Blocked reports whether the script must not run as is: true for
// Dangerous and PossiblyDangerous.
func (r Report) Blocked() bool {
	return r.Verdict == Dangerous || r.Verdict == PossiblyDangerous
}

// Rule is an operator-defined rule, added to the built-in ones.
type Rule struct {
	// ID names the rule in findings, e.g. "site.terraform-destroy".
	ID string `json:"id"`
	// Severity defaults to High.
	Severity Severity `json:"severity,omitempty"`
	// Reason is shown when the rule matches (default: "matches operator
	// rule ID"); the matched command is appended in parentheses.
	Reason string `json:"reason,omitempty"`
	// Pattern is a Go regular expression searched for in each normalized
	// command (see Finding.Command), e.g. `^terraform destroy\b`. It is not
	// anchored: use ^ and $ to match a whole command.
	Pattern string `json:"pattern"`
	// Languages the rule applies to; empty means all of them.
	Languages []Language `json:"languages,omitempty"`
}

// Config is the operator's part of the checker's configuration.
type Config struct {
	// ExtraRules are matched besides the built-in rules.
	ExtraRules []Rule `json:"extra_rules,omitempty"`
	// Allow holds Go regular expressions. A finding whose normalized
	// command (Finding.Command) matches one entry as a whole is dropped:
	// entries are anchored at both ends, so `rm -rf /srv/cache` does not
	// also allow `rm -rf /srv/cache /`.
	Allow []string `json:"allow,omitempty"`
}

// ErrInvalidConfig is wrapped by New's error when the configuration is bad.
var ErrInvalidConfig = errors.New("invalid safety config")

// Checker checks scripts. It is immutable once built and safe for
// concurrent use.
type Checker struct {
	extra []extraRule
	allow []*regexp.Regexp
}

// extraRule is a validated operator Rule.
type extraRule struct {
	id        string
	severity  Severity
	reason    string
	pattern   *regexp.Regexp
	languages []Language
}

// New validates cfg and builds a Checker. The error names every bad entry.
func New(cfg Config) (*Checker, error) {
	var errs []error
	c := &Checker{}
	seen := map[string]bool{}
	for i, r := range cfg.ExtraRules {
		er, err := compileRule(r)
		if err == nil && seen[r.ID] {
			err = errors.New("duplicate id")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("extra_rules[%d] %q: %w", i, r.ID, err))
			continue
		}
		seen[r.ID] = true
		c.extra = append(c.extra, er)
	}
	for i, a := range cfg.Allow {
		if strings.TrimSpace(a) == "" {
			errs = append(errs, fmt.Errorf("allow[%d]: empty pattern", i))
			continue
		}
		re, err := regexp.Compile(`^(?:` + a + `)$`)
		if err != nil {
			errs = append(errs, fmt.Errorf("allow[%d] %q: %w", i, a, err))
			continue
		}
		c.allow = append(c.allow, re)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return c, nil
}

// compileRule fills a rule's defaults and checks it.
func compileRule(r Rule) (extraRule, error) {
	if strings.TrimSpace(r.ID) == "" {
		return extraRule{}, errors.New("id is required")
	}
	sev := cmp.Or(r.Severity, High)
	if sev != Critical && sev != High && sev != Medium {
		return extraRule{}, fmt.Errorf("severity must be critical, high or medium, not %q", r.Severity)
	}
	for _, l := range r.Languages {
		if !validLanguage(l) {
			return extraRule{}, fmt.Errorf("language must be shell, powershell or cmd, not %q", l)
		}
	}
	if r.Pattern == "" {
		return extraRule{}, errors.New("pattern is required")
	}
	re, err := regexp.Compile(r.Pattern)
	if err != nil {
		return extraRule{}, fmt.Errorf("pattern: %w", err)
	}
	return extraRule{
		id:        r.ID,
		severity:  sev,
		reason:    cmp.Or(r.Reason, "matches operator rule "+r.ID),
		pattern:   re,
		languages: slices.Clone(r.Languages),
	}, nil
}

func validLanguage(l Language) bool {
	return l == Shell || l == PowerShell || l == Cmd
}

// Check analyses a script written in lang. It never panics: input the
// checker cannot make sense of yields PossiblyDangerous findings, not a
// crash, because the agent must keep running whatever a job contains.
func (c *Checker) Check(lang Language, text string) (rep Report) {
	a := &analysis{checker: c}
	defer func() {
		// A panic here is a bug in the checker. Failing closed keeps the
		// agent alive and the script from running; the fuzz test looks for
		// this rule so such bugs are found before release.
		if r := recover(); r != nil {
			a.unsure = 0
			a.add(Finding{
				Rule:     ruleInternalError,
				Severity: High,
				Verdict:  PossiblyDangerous,
				Reason:   fmt.Sprintf("the checker failed on this script (%v); it is blocked to be safe", r),
				Snippet:  truncate(text, maxSnippet),
			})
			rep = a.result()
		}
	}()
	switch lang {
	case Shell:
		a.shell(text, newScope())
	case PowerShell, Cmd:
		a.windows(lang, text, newWinScope())
	default:
		a.add(Finding{
			Rule:     "checker.unknown-language",
			Severity: High,
			Verdict:  PossiblyDangerous,
			Reason:   fmt.Sprintf("unknown script language %q; the checker cannot analyse it", lang),
			Snippet:  truncate(text, maxSnippet),
		})
	}
	return a.result()
}

// ruleInternalError marks a checker panic turned into a finding.
const ruleInternalError = "checker.internal-error"

const (
	// maxDepth bounds nesting of code run from strings (bash -c, eval,
	// ssh, powershell -Command, ...). Deeper nesting is itself suspicious.
	maxDepth = 8
	// maxNested bounds how many code strings one Check follows in all:
	// each may have several possible values, each with nested strings of
	// its own, and the product must not grow without bound.
	maxNested = 1024
	// maxSnippet and maxCommandInReason keep findings readable.
	maxSnippet         = 400
	maxCommandInReason = 160
)

// analysis collects the findings of one Check call.
type analysis struct {
	checker  *Checker
	findings []Finding
	// depth is the current nesting of code strings.
	depth int
	// unsure is >0 while analysing text that did not parse; findings made
	// then are downgraded to PossiblyDangerous.
	unsure int
	// nested counts the code strings followed so far (see maxNested).
	nested int
}

// add records f unless an allow entry matches its command or it repeats
// an earlier finding.
func (a *analysis) add(f Finding) {
	if a.unsure > 0 && f.Verdict == Dangerous {
		f.Verdict = PossiblyDangerous
		f.Reason += "; the script does not parse, so this is a best guess"
	}
	f.Snippet = truncate(f.Snippet, maxSnippet)
	if a.allowed(f.Command) {
		return
	}
	for _, g := range a.findings {
		if g.Rule == f.Rule && g.Verdict == f.Verdict && g.Command == f.Command && g.Snippet == f.Snippet {
			return
		}
	}
	a.findings = append(a.findings, f)
}

func (a *analysis) allowed(command string) bool {
	if command == "" {
		return false
	}
	for _, re := range a.checker.allow {
		if re.MatchString(command) {
			return true
		}
	}
	return false
}

// find records a built-in rule's match on a command.
func (a *analysis) find(rule string, sev Severity, v Verdict, what, command, snippet string) {
	a.add(Finding{
		Rule:     rule,
		Severity: sev,
		Verdict:  v,
		Reason:   what + " (" + truncate(command, maxCommandInReason) + ")",
		Snippet:  snippet,
		Command:  command,
	})
}

// operatorRules matches the operator's extra rules against one normalized
// command.
func (a *analysis) operatorRules(lang Language, command, snippet string) {
	for _, r := range a.checker.extra {
		if len(r.languages) > 0 && !slices.Contains(r.languages, lang) {
			continue
		}
		if r.pattern.MatchString(command) {
			a.find(r.id, r.severity, Dangerous, r.reason, command, snippet)
		}
	}
}

// nest runs fn one code-string level deeper, or reports the code as
// possibly dangerous when it is nested too deeply or there is too much of
// it to follow.
func (a *analysis) nest(command, snippet string, fn func()) {
	if a.depth >= maxDepth {
		a.find("checker.too-complex", High, PossiblyDangerous,
			"code strings nested too deeply to follow", command, snippet)
		return
	}
	if a.nested >= maxNested {
		a.find("checker.too-complex", High, PossiblyDangerous,
			"too many code strings to follow", command, snippet)
		return
	}
	a.nested++
	a.depth++
	defer func() { a.depth-- }()
	fn()
}

// result builds the report.
func (a *analysis) result() Report {
	r := Report{Verdict: Safe, Findings: a.findings}
	for _, f := range a.findings {
		switch {
		case f.Verdict == Dangerous:
			r.Verdict = Dangerous
		case f.Verdict == PossiblyDangerous && r.Verdict == Safe:
			r.Verdict = PossiblyDangerous
		}
	}
	return r
}

// truncate shortens s to about n bytes, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !isRuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// UploadCommand is the shell command an upload to dest amounts to, for
// checking: writing a file is judged like redirecting into it, so an
// upload over /etc/shadow or onto a disk device is blocked like
// `cat > /etc/shadow` would be.
func UploadCommand(dest string) string {
	return "cat > '" + strings.ReplaceAll(dest, "'", `'\''`) + "'"
}
