package safety

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// FuzzCheck runs the checker on arbitrary scripts. It must not panic (a
// panic shows up as a checker.internal-error finding, because Check
// recovers to keep the agent alive), must not hang, and its report must
// agree with its findings.
func FuzzCheck(f *testing.F) {
	for _, file := range []string{"dangerous.txt", "benign.txt"} {
		for _, tc := range loadCorpus(f, file) {
			f.Add(string(tc.lang), tc.text)
		}
	}
	c := newTestChecker(f)
	f.Fuzz(func(t *testing.T, lang, text string) {
		l := Language(lang)
		if !validLanguage(l) {
			// Spread arbitrary inputs over the real languages.
			l = []Language{Shell, PowerShell, Cmd}[len(lang)%3]
		}
		// A hang would stall the fuzzer without a report; crashing the
		// worker makes the engine save the input as a crasher.
		watchdog := time.AfterFunc(hangLimit, func() {
			panic(fmt.Sprintf("Check(%s, %q) took more than %s", l, text, hangLimit))
		})
		r := c.Check(l, text)
		watchdog.Stop()
		want := Safe
		for _, f := range r.Findings {
			if f.Rule == ruleInternalError {
				t.Fatalf("checker panicked on %s %q: %s", l, text, f.Reason)
			}
			switch f.Verdict {
			case Dangerous:
				want = Dangerous
			case PossiblyDangerous:
				if want == Safe {
					want = PossiblyDangerous
				}
			default:
				t.Errorf("finding %s has verdict %q", f.Rule, f.Verdict)
			}
			if f.Rule == "" || strings.TrimSpace(f.Reason) == "" {
				t.Errorf("finding without rule or reason: %+v", f)
			}
			if f.Severity != Critical && f.Severity != High && f.Severity != Medium {
				t.Errorf("finding %s has severity %q", f.Rule, f.Severity)
			}
		}
		if r.Verdict != want {
			t.Errorf("report verdict %s, findings say %s", r.Verdict, want)
		}
		if r.Blocked() != (want != Safe) {
			t.Errorf("Blocked() = %v with verdict %s", r.Blocked(), r.Verdict)
		}
	})
}

// hangLimit is far above what any input should take (well under a
// millisecond for typical scripts), leaving room for -race and slow CI.
const hangLimit = 10 * time.Second
