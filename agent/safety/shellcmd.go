package safety

import (
	"path"
	"regexp"
	"slices"
	"strings"

	"mvdan.cc/sh/v3/syntax"
)

// shellCmd is one simple command with its words resolved.
type shellCmd struct {
	// args is argv, after wrappers such as sudo are stripped.
	args []word
	// assigns are variables set for this command only (X=1 cmd, env X=1).
	assigns map[string][]string
	redirs  []redirect
	stdin   input
	// cwd is the working directory if known.
	cwd string
	// snippet is the command as written; norm its normalized form.
	snippet, norm string
}

// redirect is one redirection with its target resolved. For here-documents
// and here-strings the target is the text fed to the command.
type redirect struct {
	op     syntax.RedirOperator
	target word
}

// writes reports whether the redirection writes to its target.
func (r redirect) writes() bool {
	switch r.op {
	case syntax.RdrOut, syntax.AppOut, syntax.RdrInOut, syntax.RdrClob, syntax.AppClob,
		syntax.RdrAll, syntax.RdrAllClob, syntax.AppAll, syntax.AppAllClob:
		return true
	}
	return false
}

// truncates reports whether the redirection empties its target first.
func (r redirect) truncates() bool {
	switch r.op {
	case syntax.RdrOut, syntax.RdrClob, syntax.RdrAll, syntax.RdrAllClob:
		return true
	}
	return false
}

// input is what the checker knows about a command's standard input.
type input struct {
	// text is known text fed to it: a here-document, a here-string, or
	// what an echo or printf before it in a pipe prints.
	text *word
	// download and decoder are the normalized commands, earlier in the
	// pipe, that download data (curl) or decode it (base64 -d).
	download, decoder string
	// pipeline is the normalized pipe before the command; snippet the
	// whole pipe as written.
	pipeline, snippet string
	// producer is the command right before in the pipe.
	producer *shellCmd
}

// name is the base name of the command, "" when there is none and hole
// when it is not resolved.
func (c *shellCmd) name() string {
	if len(c.args) == 0 {
		return ""
	}
	v, ok := c.args[0].known()
	if !ok {
		return hole
	}
	return baseName(v)
}

// rest returns the arguments after the command name.
func (c *shellCmd) rest() []word {
	if len(c.args) == 0 {
		return nil
	}
	return c.args[1:]
}

func baseName(v string) string {
	if v == "" {
		return ""
	}
	return path.Base(v)
}

func (c *shellCmd) normalize() string {
	parts := make([]string, len(c.args))
	for i, w := range c.args {
		parts[i] = w.display()
	}
	return strings.Join(parts, " ")
}

// call resolves a simple command and checks it. in describes its standard
// input when it is a pipe stage. It returns the command for the next
// stage, or nil when there is none (only assignments or redirections).
func (sa *shellAnalysis) call(st *syntax.Stmt, ce *syntax.CallExpr, sc *scope, in *input) *shellCmd {
	var args []word
	for _, w := range ce.Args {
		args = append(args, sa.fields(w, sc)...)
	}
	if len(args) == 0 {
		for _, as := range ce.Assigns {
			sa.assign(st, as, sc, sc)
		}
		sa.bareRedirects(st, sc)
		return nil
	}
	// X=1 cmd: the values are evaluated now but only cmd sees them.
	env := newScope()
	for _, as := range ce.Assigns {
		sa.assign(st, as, sc, env)
	}
	cmd := &shellCmd{args: args, assigns: env.vars, cwd: sc.cwd, snippet: sa.source(st)}
	if in != nil {
		cmd.stdin = *in
	}
	cmd.redirs = sa.redirects(st, sc, cmd)
	sa.run(cmd, sc)
	return cmd
}

// redirects resolves a statement's redirections. A here-document or
// here-string becomes cmd's standard input text.
func (sa *shellAnalysis) redirects(st *syntax.Stmt, sc *scope, cmd *shellCmd) []redirect {
	var out []redirect
	for _, r := range st.Redirs {
		if r == nil {
			continue
		}
		switch r.Op {
		case syntax.Hdoc, syntax.DashHdoc:
			text := sa.resolve(r.Hdoc, sc)
			if cmd != nil {
				cmd.stdin.text = &text
			}
		case syntax.WordHdoc:
			text := sa.resolve(r.Word, sc)
			if cmd != nil {
				cmd.stdin.text = &text
			}
		case syntax.DplIn, syntax.DplOut:
			sa.resolve(r.Word, sc)
		default:
			out = append(out, redirect{op: r.Op, target: sa.resolve(r.Word, sc)})
		}
	}
	return out
}

// bareRedirects checks the redirections of a statement that is not a
// simple command: "> /dev/sda", "{ ...; } > /dev/sda".
func (sa *shellAnalysis) bareRedirects(st *syntax.Stmt, sc *scope) {
	if len(st.Redirs) == 0 {
		return
	}
	cmd := &shellCmd{cwd: sc.cwd, snippet: sa.source(st)}
	cmd.redirs = sa.redirects(st, sc, cmd)
	cmd.norm = redirectsDisplay(cmd.redirs)
	sa.check(cmd, sc)
}

func redirectsDisplay(rs []redirect) string {
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		parts = append(parts, r.op.String()+" "+r.target.display())
	}
	return strings.Join(parts, " ")
}

// run strips wrappers off a resolved command, checks it and applies its
// effects on the shell's state.
func (sa *shellAnalysis) run(cmd *shellCmd, sc *scope) {
	unwrap(cmd)
	cmd.norm = cmd.normalize()
	if len(cmd.redirs) > 0 {
		cmd.norm = strings.TrimSpace(cmd.norm + " " + redirectsDisplay(cmd.redirs))
	}
	sa.check(cmd, sc)
	effects(cmd, sc)
}

// effects records what a command changes in the shell: cd, unset, read.
func effects(cmd *shellCmd, sc *scope) {
	switch cmd.name() {
	case "cd", "pushd":
		ops := parseArgs(cmd.rest(), optSpec{}).operands
		if len(ops) == 0 {
			sc.chdir(lit("~"))
		} else {
			sc.chdir(ops[0])
		}
	case "popd":
		sc.cwd = ""
	case "unset", "read", "mapfile", "readarray":
		p := parseArgs(cmd.rest(), optSpec{values: "adinNptuCcs"})
		for _, w := range p.operands {
			if v, ok := w.known(); ok {
				sc.forget(v)
			}
		}
		for _, w := range p.vals {
			if v, ok := w.known(); ok {
				sc.forget(v)
			}
		}
	case "printf":
		if w, ok := parseArgs(cmd.rest(), optSpec{values: "v"}).vals["v"]; ok {
			if v, ok := w.known(); ok {
				sc.forget(v)
			}
		}
	}
}

// optSpec describes a command's options for parseArgs.
type optSpec struct {
	// values are the short options that take a value ("u" for sudo -u).
	values string
	// long are the long options that take a value when not given as
	// --name=value.
	long []string
	// permute: options may follow operands, as with GNU getopt. Otherwise
	// the first operand ends the options (sudo rm -rf: -rf is rm's).
	permute bool
}

// parsedArgs is a command line split into options and operands.
type parsedArgs struct {
	// opts are the option names seen: one letter for short options, the
	// name without dashes for long ones.
	opts []string
	// vals are option values by name.
	vals map[string]word
	// operands are the non-option words.
	operands []word
	// unresolved is set when a word that may be an option could not be
	// resolved, so the command may have options the checker cannot see.
	unresolved bool
}

func (p parsedArgs) has(names ...string) bool {
	for _, n := range names {
		if slices.Contains(p.opts, n) {
			return true
		}
	}
	return false
}

func parseArgs(args []word, spec optSpec) parsedArgs {
	p := parsedArgs{vals: map[string]word{}}
	for i := 0; i < len(args); i++ {
		w := args[i]
		v, ok := w.known()
		switch {
		case !ok:
			if len(w.vals) > 0 && (strings.HasPrefix(w.vals[0], hole) || strings.HasPrefix(w.vals[0], "-")) {
				p.unresolved = true
			}
		case v == "--":
			p.operands = append(p.operands, args[i+1:]...)
			return p
		case strings.HasPrefix(v, "--"):
			name, val, inline := strings.Cut(v[2:], "=")
			p.opts = append(p.opts, name)
			if inline {
				p.vals[name] = lit(val)
			} else if slices.Contains(spec.long, name) && i+1 < len(args) {
				i++
				p.vals[name] = args[i]
			}
			continue
		case len(v) > 1 && v[0] == '-':
			i = p.short(v, args, i, spec)
			continue
		}
		p.operands = append(p.operands, w)
		if !spec.permute {
			p.operands = append(p.operands, args[i+1:]...)
			return p
		}
	}
	return p
}

// short parses a cluster of short options (-rf, -uroot, -u root) at
// args[i] and returns the index of the last word it used.
func (p *parsedArgs) short(v string, args []word, i int, spec optSpec) int {
	for j := 1; j < len(v); j++ {
		c := v[j : j+1]
		p.opts = append(p.opts, c)
		if !strings.Contains(spec.values, c) {
			continue
		}
		switch {
		case j+1 < len(v):
			p.vals[c] = lit(v[j+1:])
		case i+1 < len(args):
			i++
			p.vals[c] = args[i]
		}
		break
	}
	return i
}

// wrapper describes a command that runs another command given as its
// arguments.
type wrapper struct {
	opts optSpec
	// skip is how many operands come before the wrapped command
	// (timeout's duration, chroot's directory).
	skip int
	// assigns: NAME=value words before the command set variables.
	assigns bool
}

// wrappers is read-only.
var wrappers = map[string]wrapper{
	"sudo": {opts: optSpec{values: "ugphCDrtUT", long: []string{"user", "group", "host", "prompt",
		"close-from", "chdir", "role", "type", "other-user", "command-timeout"}}, assigns: true},
	"doas":    {opts: optSpec{values: "uC"}},
	"env":     {opts: optSpec{values: "uCSP", long: []string{"unset", "chdir", "split-string"}}, assigns: true},
	"nice":    {opts: optSpec{values: "n", long: []string{"adjustment"}}},
	"nohup":   {},
	"timeout": {opts: optSpec{values: "sk", long: []string{"signal", "kill-after"}}, skip: 1},
	"xargs": {opts: optSpec{values: "aEdeIiLlnPs", long: []string{"arg-file", "eof", "delimiter",
		"replace", "max-lines", "max-args", "max-procs", "max-chars", "process-slot-var"}}},
	"command":  {},
	"exec":     {opts: optSpec{values: "a"}},
	"builtin":  {},
	"stdbuf":   {opts: optSpec{values: "ioe", long: []string{"input", "output", "error"}}},
	"ionice":   {opts: optSpec{values: "cnt", long: []string{"class", "classdata"}}},
	"setsid":   {},
	"time":     {opts: optSpec{values: "fo", long: []string{"format", "output"}}},
	"chroot":   {opts: optSpec{long: []string{"userspec", "groups"}}, skip: 1},
	"busybox":  {},
	"toybox":   {},
	"gosu":     {skip: 1},
	"su-exec":  {skip: 1},
	"unbuffer": {},
	"runuser":  {opts: optSpec{values: "ugGlsw", long: []string{"user", "group", "supp-group", "shell", "whitelist-environment"}}},
	"flock":    {opts: optSpec{values: "wE", long: []string{"timeout", "conflict-exit-code"}}, skip: 1},
}

var assignWord = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// unwrap replaces a wrapper command (sudo rm -rf /) by the command it runs
// (rm -rf /). It stops at a wrapper without a command (sudo -i) or one that
// only looks a command up (command -v rm).
func unwrap(cmd *shellCmd) {
	for range 16 {
		name := cmd.name()
		w, ok := wrappers[name]
		if !ok {
			return
		}
		p := parseArgs(cmd.rest(), w.opts)
		rest := p.operands
		switch name {
		case "command":
			if p.has("v", "V") {
				return
			}
		case "runuser":
			if !p.has("u", "user") {
				return // runuser USER -c CMD is handled like su
			}
		case "flock":
			if p.has("c", "command") {
				return // flock -c CMD is handled as a code string
			}
		case "env":
			if s, ok := p.vals["S"]; ok {
				rest = append(splitWords(s), rest...)
			} else if s, ok := p.vals["split-string"]; ok {
				rest = append(splitWords(s), rest...)
			}
		}
		if w.assigns {
			for len(rest) > 0 {
				v, ok := rest[0].known()
				if !ok || !assignWord.MatchString(v) {
					break
				}
				k, val, _ := strings.Cut(v, "=")
				if cmd.assigns == nil {
					cmd.assigns = map[string][]string{}
				}
				cmd.assigns[k] = []string{val}
				rest = rest[1:]
			}
		}
		if len(rest) <= w.skip {
			return
		}
		rest = rest[w.skip:]
		if name == "xargs" {
			rest = xargsCommand(rest, p, cmd.stdin)
		}
		cmd.args = rest
	}
}

// splitWords splits env -S's string into words.
func splitWords(w word) []word {
	v, ok := w.known()
	if !ok {
		return []word{w}
	}
	var out []word
	for _, f := range strings.Fields(v) {
		out = append(out, lit(strings.Trim(f, `'"`)))
	}
	return out
}

// xargsCommand adds to xargs's command the arguments it reads on stdin,
// when the checker knows them: known text (a here-string, echo or printf
// before it in the pipe), or the start paths of a find that prints
// everything under them.
func xargsCommand(cmd []word, p parsedArgs, in input) []word {
	var items []word
	if in.text != nil {
		items = fieldsOf(*in.text)
	} else if in.producer != nil && in.producer.name() == "find" {
		if starts, filtered, _ := findParts(in.producer); !filtered {
			items = starts
		}
	}
	if len(items) == 0 {
		return cmd
	}
	placeholder := ""
	if w, ok := p.vals["I"]; ok {
		placeholder, _ = w.known()
	} else if w, ok := p.vals["replace"]; ok {
		placeholder, _ = w.known()
	} else if p.has("i") {
		placeholder = "{}"
	}
	if placeholder == "" {
		return append(slices.Clone(cmd), items...)
	}
	var vals []string
	for _, it := range items {
		vals = union(vals, it.vals)
	}
	out := make([]word, len(cmd))
	for i, w := range cmd {
		out[i] = w
		if v, ok := w.known(); ok && strings.Contains(v, placeholder) {
			var subst []string
			for _, x := range vals {
				subst = union(subst, []string{strings.ReplaceAll(v, placeholder, x)})
			}
			out[i] = word{vals: subst, src: w.src}
		}
	}
	return out
}

// fieldsOf splits known text into blank-separated words, as xargs does.
func fieldsOf(text word) []word {
	if len(text.vals) != 1 || strings.Contains(text.vals[0], hole) {
		return []word{{vals: []string{hole}, src: text.src}}
	}
	var out []word
	for _, f := range strings.Fields(text.vals[0]) {
		out = append(out, lit(f))
	}
	return out
}

// printedText is what echo or printf prints: echo's arguments joined by
// spaces, printf's format applied to its arguments; backslash escapes are
// decoded (dash's echo decodes them too).
func printedText(c *shellCmd) word {
	args := c.rest()
	isPrintf := c.name() == "printf"
	for len(args) > 0 && !isPrintf {
		v, ok := args[0].known()
		if !ok || (v != "-n" && v != "-e" && v != "-E" && v != "-ne" && v != "-en") {
			break
		}
		args = args[1:]
	}
	if isPrintf && len(args) > 0 && args[0].is("--") {
		args = args[1:]
	}
	var src []string
	for _, a := range args {
		src = append(src, a.display())
	}
	if isPrintf && len(args) > 0 {
		if format, ok := args[0].known(); ok {
			if text, ok := printfText(format, args[1:]); ok {
				return word{vals: []string{text}, src: strings.Join(src, " ")}
			}
		}
	}
	vals := []string{""}
	for i, a := range args {
		sep := ""
		if i > 0 {
			sep = " "
		}
		decoded := make([]string, len(a.vals))
		for j, v := range a.vals {
			decoded[j] = sep + decodeANSIC(v)
		}
		vals = product(vals, decoded)
	}
	return word{vals: vals, src: strings.Join(src, " ")}
}

var printfDirective = regexp.MustCompile(`%[-+ #0-9.]*[sbdiqcxXouefgEG]`)

// printfText applies a printf format to known arguments, reusing the
// format while arguments remain, as printf does.
func printfText(format string, args []word) (string, bool) {
	format = decodeANSIC(format)
	n := len(printfDirective.FindAllString(format, -1))
	if n == 0 {
		return format, true
	}
	var b strings.Builder
	for i := 0; i == 0 || i < len(args); i += n {
		k := i
		b.WriteString(printfDirective.ReplaceAllStringFunc(format, func(string) string {
			if k >= len(args) {
				return ""
			}
			v, ok := args[k].known()
			k++
			if !ok {
				return hole
			}
			return v
		}))
		if b.Len() > 1<<16 {
			return "", false
		}
	}
	return b.String(), true
}

// flattenPipe lists the stages of a pipe.
func flattenPipe(st *syntax.Stmt) []*syntax.Stmt {
	if b, ok := st.Cmd.(*syntax.BinaryCmd); ok && (b.Op == syntax.Pipe || b.Op == syntax.PipeAll) && len(st.Redirs) == 0 {
		return append(flattenPipe(b.X), flattenPipe(b.Y)...)
	}
	return []*syntax.Stmt{st}
}

// pipeline checks the stages of a pipe in order, each in its own subshell
// and each knowing what the stages before it feed it.
func (sa *shellAnalysis) pipeline(st *syntax.Stmt, sc *scope) {
	var done []*shellCmd
	var norms []string
	for _, stage := range flattenPipe(st) {
		in := pipeInput(done, norms, sa.source(st))
		stageScope := sc.clone()
		var cmd *shellCmd
		if ce, ok := stage.Cmd.(*syntax.CallExpr); ok {
			cmd = sa.call(stage, ce, stageScope, &in)
		} else {
			sa.stmt(stage, stageScope)
		}
		done = append(done, cmd)
		if cmd != nil {
			norms = append(norms, cmd.norm)
		} else {
			norms = append(norms, sa.source(stage))
		}
	}
}

// pipeInput describes the input of the next stage of a pipe.
func pipeInput(done []*shellCmd, norms []string, snippet string) input {
	in := input{pipeline: strings.Join(norms, " | "), snippet: snippet}
	for _, c := range done {
		if c == nil {
			continue
		}
		if downloaders[c.name()] {
			in.download = c.norm
		}
		if decodes(c) {
			in.decoder = c.norm
		}
	}
	if len(done) > 0 && done[len(done)-1] != nil {
		last := done[len(done)-1]
		in.producer = last
		switch n := last.name(); {
		case n == "echo" || n == "printf":
			text := printedText(last)
			in.text = &text
		case n == "cat" && len(last.args) == 1:
			// cat <<EOF | psql: cat passes its here-document on.
			in.text = last.stdin.text
		}
	}
	return in
}

// downloaders fetch data from the network to standard output. Read-only.
var downloaders = map[string]bool{
	"curl": true, "wget": true, "fetch": true, "http": true, "https": true, "xh": true,
	"aria2c": true, "lwp-request": true, "GET": true, "nc": true, "ncat": true,
	"netcat": true, "socat": true,
}

// decodes reports whether a command decodes or unpacks its input, which
// hides from the checker what a shell after it runs.
func decodes(c *shellCmd) bool {
	p := parseArgs(c.rest(), optSpec{permute: true})
	switch c.name() {
	case "base64", "base32", "basenc":
		return p.has("d", "decode", "D")
	case "xxd":
		return p.has("r", "revert")
	case "openssl":
		return p.has("d", "base64")
	case "gzip", "bzip2", "xz", "zstd", "lz4":
		return p.has("d", "decompress")
	case "rev", "gunzip", "zcat", "bzcat", "xzcat", "zstdcat", "uudecode", "tr":
		return true
	}
	return false
}
