package safety

import (
	"strings"
)

// Commands that run code they are given as a string, a file or on their
// standard input. These tables are read-only.

// shells run a -c string, a script file, or what they read on stdin.
var shells = map[string]bool{
	"sh": true, "bash": true, "zsh": true, "dash": true, "ksh": true, "mksh": true,
	"ash": true, "fish": true, "csh": true, "tcsh": true, "rbash": true, "yash": true,
}

// interpreter describes a non-shell interpreter's command line.
type interpreter struct {
	opts optSpec
	// code are the options whose value is the program (python -c).
	code []string
	// elsewhere are the options that take the program from elsewhere
	// than stdin (python -m module, php -f file).
	elsewhere []string
}

var interpreters = map[string]interpreter{
	"python": {opts: optSpec{values: "cmWXQ"}, code: []string{"c"}, elsewhere: []string{"m"}},
	"perl":   {opts: optSpec{values: "eEIMx"}, code: []string{"e", "E"}},
	"ruby":   {opts: optSpec{values: "eIrCEF"}, code: []string{"e"}},
	"node":   {opts: optSpec{values: "erp", long: []string{"eval", "print", "require"}}, code: []string{"e", "p", "eval", "print"}},
	"php":    {opts: optSpec{values: "rfcdz"}, code: []string{"r"}, elsewhere: []string{"f"}},
}

// interpreterFor returns the interpreter a command name runs, accepting
// versioned names (python3.12, nodejs).
func interpreterFor(name string) (interpreter, bool) {
	if in, ok := interpreters[name]; ok {
		return in, true
	}
	switch {
	case strings.HasPrefix(name, "python"):
		return interpreters["python"], true
	case name == "nodejs":
		return interpreters["node"], true
	case strings.HasPrefix(name, "perl5"):
		return interpreters["perl"], true
	}
	return interpreter{}, false
}

// code follows code that a command runs from a string or its input.
func (sa *shellAnalysis) code(cmd *shellCmd, sc *scope) {
	name := cmd.name()
	if shells[name] {
		sa.shellInterpreter(cmd, sc)
		return
	}
	if in, ok := interpreterFor(name); ok {
		sa.otherInterpreter(cmd, in)
		return
	}
	switch name {
	case "eval":
		// eval runs in the current shell, so what it assigns is visible
		// afterwards; any unresolved part is code the checker cannot see.
		sa.runCode(cmd, joinWords(cmd.rest()), sc, true)
	case "su", "runuser":
		p := parseArgs(cmd.rest(), optSpec{permute: true, values: "cgGsw",
			long: []string{"command", "group", "supp-group", "shell", "whitelist-environment"}})
		if w, ok := first(p.vals, "c", "command"); ok {
			sa.runCode(cmd, w, sc.clone(), false)
		}
	case "flock":
		p := parseArgs(cmd.rest(), optSpec{permute: true, values: "wEc", long: []string{"timeout", "conflict-exit-code", "command"}})
		if w, ok := first(p.vals, "c", "command"); ok {
			sa.runCode(cmd, w, sc.clone(), false)
		}
	case "watch":
		p := parseArgs(cmd.rest(), optSpec{values: "nq", long: []string{"interval", "equexit"}})
		if len(p.operands) > 0 {
			sa.runCode(cmd, joinWords(p.operands), sc.clone(), false)
		}
	case "ssh":
		sa.ssh(cmd)
	case "find":
		sa.findCommand(cmd, sc)
	case "source", ".":
		sa.sourceCommand(cmd, sc)
	case "pwsh", "powershell", "pwsh.exe", "powershell.exe":
		// Analysed as the PowerShell command line it is.
		text := joinWords(cmd.args)
		sa.nest(cmd.norm, cmd.snippet, func() {
			for _, v := range text.vals {
				sa.windows(PowerShell, v, newWinScope())
			}
		})
	}
}

// first returns the first of the named option values present.
func first(vals map[string]word, names ...string) (word, bool) {
	for _, n := range names {
		if w, ok := vals[n]; ok {
			return w, true
		}
	}
	return word{}, false
}

// joinWords joins words with spaces into one, as eval and ssh do.
func joinWords(ws []word) word {
	vals := []string{""}
	var src []string
	download := false
	for i, w := range ws {
		sep := ""
		if i > 0 {
			sep = " "
		}
		next := make([]string, len(w.vals))
		for j, v := range w.vals {
			next[j] = sep + v
		}
		vals = product(vals, next)
		src = append(src, w.display())
		download = download || w.download
	}
	return word{vals: vals, src: strings.Join(src, " "), download: download}
}

// shellInterpreter handles sh/bash/...: a -c string, a script from stdin,
// or a script file that is a download (bash <(curl ...)).
func (sa *shellAnalysis) shellInterpreter(cmd *shellCmd, sc *scope) {
	p := parseArgs(cmd.rest(), optSpec{values: "oO", long: []string{"rcfile", "init-file"}})
	switch {
	case p.has("c"):
		if len(p.operands) == 0 {
			return
		}
		child := sc.clone()
		for k, v := range cmd.assigns {
			child.vars[k] = v
		}
		sa.runCode(cmd, p.operands[0], child, false)
	case p.has("s") || len(p.operands) == 0 || p.operands[0].is("-") || p.operands[0].is("/dev/stdin"):
		sa.stdinCode(cmd, sc, true)
	case p.operands[0].download:
		sa.find(ruleDownloadToShell, High, Dangerous, cmd.name()+" runs a script straight from a download", cmd.norm, cmd.snippet)
	}
}

// otherInterpreter handles python, perl, ...: the checker cannot read
// their code, but can see when it is a download.
func (sa *shellAnalysis) otherInterpreter(cmd *shellCmd, in interpreter) {
	p := parseArgs(cmd.rest(), in.opts)
	for _, o := range in.code {
		if w, ok := p.vals[o]; ok {
			if w.download {
				sa.find(ruleDownloadToShell, High, Dangerous, cmd.name()+" runs code straight from a download", cmd.norm, cmd.snippet)
			}
			return
		}
	}
	if p.has(in.elsewhere...) {
		return
	}
	if len(p.operands) == 0 || p.operands[0].is("-") || p.operands[0].is("/dev/stdin") {
		sa.stdinCode(cmd, nil, false)
		return
	}
	if p.operands[0].download {
		sa.find(ruleDownloadToShell, High, Dangerous, cmd.name()+" runs a script straight from a download", cmd.norm, cmd.snippet)
	}
}

const ruleDownloadToShell = "shell.pipe-download-to-shell"

// stdinCode handles an interpreter that reads its program on stdin: from a
// download, from a decoder, or from known text (a here-document, echo),
// which is followed when the interpreter is a shell.
func (sa *shellAnalysis) stdinCode(cmd *shellCmd, sc *scope, isShell bool) {
	in := cmd.stdin
	full := cmd.norm
	if in.pipeline != "" {
		full = in.pipeline + " | " + cmd.norm
	}
	snippet := in.snippet
	if snippet == "" {
		snippet = cmd.snippet
	}
	switch {
	case in.download != "":
		sa.find(ruleDownloadToShell, High, Dangerous,
			"pipes a download into "+cmd.name()+", running whatever the server sends", full, snippet)
	case in.decoder != "":
		sa.find("shell.decoded-code-to-shell", High, PossiblyDangerous,
			"pipes decoded data into "+cmd.name()+"; the checker cannot see the code it runs", full, snippet)
	case in.text != nil && isShell:
		sa.runCode(cmd, *in.text, sc.clone(), false)
	}
}

// runCode analyses a string a command runs as shell code, in scope child.
// A string the checker cannot resolve at all, or (strict, for eval) with
// any unresolved part, is possibly dangerous; a downloaded one dangerous.
func (sa *shellAnalysis) runCode(cmd *shellCmd, code word, child *scope, strict bool) {
	if code.download {
		sa.find(ruleDownloadToShell, High, Dangerous, cmd.name()+" runs a script straight from a download", cmd.norm, cmd.snippet)
		return
	}
	if code.opaque() || strict && !code.resolved() {
		sa.find("shell.unresolved-code", High, PossiblyDangerous,
			cmd.name()+" runs code the checker cannot resolve: "+code.display(), cmd.norm, cmd.snippet)
		if code.opaque() {
			return
		}
	}
	sa.nest(cmd.norm, cmd.snippet, func() {
		for _, v := range code.vals {
			sa.shell(v, child)
		}
	})
}

// ssh runs its remote command (the words after the host, joined) in a
// fresh remote shell, or reads the script on stdin.
func (sa *shellAnalysis) ssh(cmd *shellCmd) {
	p := parseArgs(cmd.rest(), optSpec{values: "BbcDEeFIiJLlmOopQRSWw"})
	if len(p.operands) == 0 {
		return
	}
	if len(p.operands) == 1 {
		sa.stdinCode(cmd, newScope(), true)
		return
	}
	sa.runCode(cmd, joinWords(p.operands[1:]), newScope(), false)
}

// sourceCommand handles `. file` and `source file`: a downloaded file, or
// /dev/stdin fed by a pipe.
func (sa *shellAnalysis) sourceCommand(cmd *shellCmd, sc *scope) {
	if len(cmd.args) < 2 {
		return
	}
	f := cmd.args[1]
	switch {
	case f.download:
		sa.find(ruleDownloadToShell, High, Dangerous, "sources a script straight from a download", cmd.norm, cmd.snippet)
	case f.is("/dev/stdin") || f.is("-"):
		sa.stdinCode(cmd, sc, true)
	}
}

// findFilters are find tests that select some files only, so that -delete
// or -exec does not act on everything under the start paths.
var findFilters = map[string]bool{
	"-name": true, "-iname": true, "-path": true, "-ipath": true, "-wholename": true,
	"-iwholename": true, "-regex": true, "-iregex": true, "-newer": true, "-mtime": true,
	"-mmin": true, "-atime": true, "-amin": true, "-ctime": true, "-cmin": true,
	"-user": true, "-group": true, "-uid": true, "-gid": true, "-size": true,
	"-empty": true, "-perm": true, "-inum": true, "-links": true, "-lname": true,
	"-ilname": true, "-samefile": true, "-nouser": true, "-nogroup": true,
	"-newermt": true, "-used": true,
}

// findParts splits a find command into its start paths and expression,
// and says whether the expression filters what it acts on.
func findParts(c *shellCmd) (starts []word, filtered bool, expr []word) {
	args := c.rest()
	for len(args) > 0 {
		v, _ := args[0].known()
		if v == "-H" || v == "-L" || v == "-P" || strings.HasPrefix(v, "-O") {
			args = args[1:]
			continue
		}
		if v == "-D" && len(args) > 1 {
			args = args[2:]
			continue
		}
		break
	}
	i := 0
	for ; i < len(args); i++ {
		v, ok := args[i].known()
		if ok && (strings.HasPrefix(v, "-") || v == "(" || v == "!" || v == ",") {
			break
		}
		starts = append(starts, args[i])
	}
	if len(starts) == 0 {
		starts = []word{lit(".")}
	}
	expr = args[i:]
	for _, w := range expr {
		if v, ok := w.known(); ok && findFilters[v] {
			filtered = true
		}
	}
	return starts, filtered, expr
}

// findCommand checks -delete as a recursive rm of the start paths and each -exec
// command with {} standing for the start paths, unless the expression
// filters which files it acts on.
func (sa *shellAnalysis) findCommand(cmd *shellCmd, sc *scope) {
	starts, filtered, expr := findParts(cmd)
	var found []string
	for _, s := range starts {
		for _, v := range s.vals {
			if filtered {
				v += "/{}"
			}
			found = union(found, []string{v})
		}
	}
	for i := 0; i < len(expr); i++ {
		v, _ := expr[i].known()
		switch v {
		case "-delete":
			if !filtered {
				rm := append([]word{lit("rm"), lit("-r")}, starts...)
				sa.subCommand(cmd, rm, sc)
			}
		case "-exec", "-execdir", "-ok", "-okdir":
			j := i + 1
			for j < len(expr) && !expr[j].is(";") && !expr[j].is("+") {
				j++
			}
			sa.subCommand(cmd, substitute(expr[i+1:j], "{}", found), sc)
			i = j
		}
	}
}

// substitute replaces placeholder in known words by each of vals.
func substitute(ws []word, placeholder string, vals []string) []word {
	out := make([]word, len(ws))
	for i, w := range ws {
		out[i] = w
		v, ok := w.known()
		if !ok || !strings.Contains(v, placeholder) {
			continue
		}
		var subst []string
		for _, x := range vals {
			subst = union(subst, []string{strings.ReplaceAll(v, placeholder, x)})
		}
		out[i] = word{vals: subst, src: w.src}
	}
	return out
}

// subCommand checks a command another command runs (find -exec), reported
// with the outer command's text.
func (sa *shellAnalysis) subCommand(outer *shellCmd, args []word, sc *scope) {
	if len(args) == 0 {
		return
	}
	sub := &shellCmd{args: args, cwd: outer.cwd, snippet: outer.snippet}
	unwrap(sub)
	sub.norm = outer.norm
	sa.check(sub, sc.clone())
}
