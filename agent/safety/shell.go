package safety

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"mvdan.cc/sh/v3/syntax"
)

// shellAnalysis walks one parsed shell text: the script itself, or a string
// it runs (bash -c, eval, ssh, a here-document fed to a shell).
type shellAnalysis struct {
	*analysis
	// text is the source the syntax tree's positions refer to.
	text string
}

// shell parses and analyses a shell script in scope sc. A script that does
// not parse is tokenized line by line instead (see fallback).
func (a *analysis) shell(text string, sc *scope) {
	parser := syntax.NewParser(syntax.Variant(syntax.LangBash))
	file, err := parser.Parse(strings.NewReader(text), "")
	sa := &shellAnalysis{analysis: a, text: text}
	if err != nil {
		sa.fallback(text, sc)
		return
	}
	sa.stmts(file.Stmts, sc)
}

// source returns the text of a node as written.
func (sa *shellAnalysis) source(n syntax.Node) string {
	if n == nil {
		return ""
	}
	if w, ok := n.(*syntax.Word); ok && len(w.Parts) == 0 {
		return ""
	}
	start, end := n.Pos(), n.End()
	if !start.IsValid() || !end.IsValid() {
		return ""
	}
	s, e := int(start.Offset()), int(end.Offset())
	if s < 0 || e > len(sa.text) || s > e {
		return ""
	}
	return sa.text[s:e]
}

func (sa *shellAnalysis) stmts(list []*syntax.Stmt, sc *scope) {
	for _, st := range list {
		sa.stmt(st, sc)
	}
}

// conditional runs fn on code that may or may not run.
func conditional(sc *scope, fn func()) {
	sc.cond++
	defer func() { sc.cond-- }()
	fn()
}

func (sa *shellAnalysis) stmt(st *syntax.Stmt, sc *scope) {
	if st == nil {
		return
	}
	switch c := st.Cmd.(type) {
	case nil:
		// Only redirections: "> /dev/sda".
		sa.bareRedirects(st, sc)
	case *syntax.CallExpr:
		sa.call(st, c, sc, nil)
	case *syntax.BinaryCmd:
		sa.bareRedirects(st, sc)
		if c.Op == syntax.Pipe || c.Op == syntax.PipeAll {
			sa.pipeline(st, sc)
			return
		}
		sa.stmt(c.X, sc)
		conditional(sc, func() { sa.stmt(c.Y, sc) })
	case *syntax.Subshell:
		sa.bareRedirects(st, sc)
		sa.stmts(c.Stmts, sc.clone())
	case *syntax.Block:
		sa.bareRedirects(st, sc)
		sa.stmts(c.Stmts, sc)
	case *syntax.IfClause:
		sa.bareRedirects(st, sc)
		sa.ifClause(c, sc)
	case *syntax.WhileClause:
		sa.bareRedirects(st, sc)
		sa.stmts(c.Cond, sc)
		conditional(sc, func() { sa.stmts(c.Do, sc) })
	case *syntax.ForClause:
		sa.bareRedirects(st, sc)
		sa.forClause(c, sc)
	case *syntax.CaseClause:
		sa.bareRedirects(st, sc)
		sa.resolve(c.Word, sc)
		for _, item := range c.Items {
			for _, p := range item.Patterns {
				sa.nested(p, sc)
			}
			conditional(sc, func() { sa.stmts(item.Stmts, sc) })
		}
	case *syntax.FuncDecl:
		sa.funcDecl(c, sc)
	case *syntax.DeclClause:
		sa.bareRedirects(st, sc)
		sa.declClause(st, c, sc)
	case *syntax.TimeClause:
		sa.stmt(c.Stmt, sc)
	case *syntax.CoprocClause:
		sa.stmt(c.Stmt, sc.clone())
	case *syntax.TestDecl:
		conditional(sc, func() { sa.stmt(c.Body, sc.clone()) })
	default:
		// [[ ]], (( )), let: only command substitutions inside can act.
		sa.bareRedirects(st, sc)
		sa.nested(c, sc)
	}
}

func (sa *shellAnalysis) ifClause(c *syntax.IfClause, sc *scope) {
	sa.stmts(c.Cond, sc)
	conditional(sc, func() {
		sa.stmts(c.Then, sc)
		for e := c.Else; e != nil; e = e.Else {
			sa.stmts(e.Cond, sc)
			sa.stmts(e.Then, sc)
		}
	})
}

func (sa *shellAnalysis) forClause(c *syntax.ForClause, sc *scope) {
	switch loop := c.Loop.(type) {
	case *syntax.WordIter:
		var vals []string
		if loop.InPos.IsValid() {
			for _, w := range loop.Items {
				for _, f := range sa.fields(w, sc) {
					vals = union(vals, f.vals)
				}
			}
		} else {
			vals = []string{hole} // for x; do: the positional parameters
		}
		if loop.Name != nil {
			sc.vars[loop.Name.Value] = vals
		}
	case *syntax.CStyleLoop:
		sa.nested(loop, sc)
	}
	conditional(sc, func() { sa.stmts(c.Do, sc) })
}

// funcDecl looks for fork bombs and analyses the body once, as code that
// may run, with arguments unknown.
func (sa *shellAnalysis) funcDecl(fd *syntax.FuncDecl, sc *scope) {
	names := fd.Names
	if fd.Name != nil {
		names = append([]*syntax.Lit{fd.Name}, names...)
	}
	for _, n := range names {
		if n != nil && forkBomb(n.Value, fd.Body) {
			sa.find("shell.fork-bomb", Critical, Dangerous,
				"fork bomb: function "+n.Value+" starts copies of itself in the background or a pipe until the host runs out of processes",
				sa.source(fd), sa.source(fd))
		}
	}
	inner := sc.clone()
	conditional(inner, func() { sa.stmt(fd.Body, inner) })
}

// forkBomb reports whether a function body calls the function itself in
// the background or as a pipe stage: `:(){ :|:& };:` and its renamings.
func forkBomb(name string, body *syntax.Stmt) bool {
	if body == nil {
		return false
	}
	callsSelf := func(st *syntax.Stmt) bool {
		if st == nil {
			return false
		}
		ce, ok := st.Cmd.(*syntax.CallExpr)
		return ok && len(ce.Args) > 0 && ce.Args[0].Lit() == name
	}
	found := false
	syntax.Walk(body, func(n syntax.Node) bool {
		switch n := n.(type) {
		case *syntax.Stmt:
			if n.Background && callsSelf(n) {
				found = true
			}
		case *syntax.BinaryCmd:
			if (n.Op == syntax.Pipe || n.Op == syntax.PipeAll) && (callsSelf(n.X) || callsSelf(n.Y)) {
				found = true
			}
		}
		return !found
	})
	return found
}

// declClause handles export, local, declare, readonly, typeset.
func (sa *shellAnalysis) declClause(st *syntax.Stmt, d *syntax.DeclClause, sc *scope) {
	for _, as := range d.Args {
		if as == nil {
			continue
		}
		if as.Name == nil {
			// declare -x, or a word argument: resolve for substitutions.
			if as.Value != nil {
				sa.resolve(as.Value, sc)
			}
			continue
		}
		if as.Naked {
			continue
		}
		sa.assign(st, as, sc, sc)
	}
}

// assign evaluates an assignment in sc and stores it in target.
func (sa *shellAnalysis) assign(st *syntax.Stmt, as *syntax.Assign, sc, target *scope) {
	if as.Name == nil {
		return
	}
	name := as.Name.Value
	var vals []string
	switch {
	case as.Array != nil || as.Index != nil:
		sa.nested(as.Array, sc)
		if as.Index != nil {
			sa.nested(as.Index, sc)
		}
		if as.Value != nil {
			sa.resolve(as.Value, sc)
		}
		vals = []string{hole}
	case as.Value != nil:
		vals = sa.resolve(as.Value, sc).vals
	default:
		vals = []string{""}
	}
	if as.Append {
		vals = product(sc.lookup(name), vals)
	}
	sa.historySetting(name, vals, st)
	target.set(name, vals)
}

// nested analyses the command substitutions inside a node the checker does
// not otherwise resolve (arithmetic, [[ ]], case patterns, array values).
func (sa *shellAnalysis) nested(n syntax.Node, sc *scope) {
	if n == nil {
		return
	}
	syntax.Walk(n, func(n syntax.Node) bool {
		switch n := n.(type) {
		case *syntax.CmdSubst:
			sa.stmts(n.Stmts, sc.clone())
			return false
		case *syntax.ProcSubst:
			sa.stmts(n.Stmts, sc.clone())
			return false
		}
		return true
	})
}

// fields resolves a command argument into the words the command receives:
// an unquoted variable holding spaces splits, a brace expansion gives one
// word per element, an unquoted empty variable gives none.
func (sa *shellAnalysis) fields(w *syntax.Word, sc *scope) []word {
	r := sa.resolver(sc)
	res := r.word(w)
	switch {
	case r.braces && len(res.vals) > 1:
		out := make([]word, 0, len(res.vals))
		for _, v := range res.vals {
			out = append(out, word{vals: []string{v}, src: res.src, download: res.download})
		}
		return out
	case r.split && len(res.vals) == 1:
		v := res.vals[0]
		if !strings.ContainsAny(v, " \t\n") {
			if v == "" {
				return nil
			}
			return []word{res}
		}
		var out []word
		for _, f := range strings.Fields(v) {
			out = append(out, word{vals: []string{f}, src: res.src, download: res.download})
		}
		return out
	}
	return []word{res}
}

// resolve resolves a word without field splitting (assignments, redirect
// targets, here-documents).
func (sa *shellAnalysis) resolve(w *syntax.Word, sc *scope) word {
	return sa.resolver(sc).word(w)
}

func (sa *shellAnalysis) resolver(sc *scope) *resolver {
	return &resolver{sa: sa, sc: sc}
}

// resolver turns one word into its possible values.
type resolver struct {
	sa *shellAnalysis
	sc *scope
	// split and braces record, for fields, whether the word had an
	// unquoted expansion or a brace expansion.
	split, braces bool
	download      bool
}

func (r *resolver) word(w *syntax.Word) word {
	if w == nil {
		return lit("")
	}
	src := r.sa.source(w)
	r.braces = syntax.SplitBraces(w) || r.braces
	vals := []string{""}
	for _, part := range w.Parts {
		vals = product(vals, r.part(part, false))
	}
	return word{vals: vals, src: src, download: r.download}
}

func (r *resolver) part(p syntax.WordPart, quoted bool) []string {
	switch p := p.(type) {
	case *syntax.Lit:
		if quoted {
			return []string{unescapeDouble(p.Value)}
		}
		return []string{unescapeUnquoted(p.Value)}
	case *syntax.SglQuoted:
		if p.Dollar {
			return []string{decodeANSIC(p.Value)}
		}
		return []string{p.Value}
	case *syntax.DblQuoted:
		vals := []string{""}
		for _, inner := range p.Parts {
			vals = product(vals, r.part(inner, true))
		}
		return vals
	case *syntax.ParamExp:
		if !quoted {
			r.split = true
		}
		return r.param(p)
	case *syntax.CmdSubst:
		return r.cmdSubst(p.Stmts)
	case *syntax.ProcSubst:
		r.cmdSubst(p.Stmts)
		return []string{hole}
	case *syntax.ArithmExp:
		r.sa.nested(p, r.sc)
		return []string{hole}
	case *syntax.ExtGlob:
		return []string{r.sa.source(p)}
	case *syntax.BraceExp:
		if p.Sequence {
			return []string{r.sa.source(p)}
		}
		var vals []string
		for _, e := range p.Elems {
			sub := &resolver{sa: r.sa, sc: r.sc}
			vals = union(vals, sub.word(e).vals)
			r.download = r.download || sub.download
		}
		if len(vals) == 0 {
			return []string{""}
		}
		return vals
	}
	return []string{hole}
}

// param resolves $NAME, ${NAME}, ${NAME:-default} and ${NAME:?message}
// from the scope. Other expansions (length, substrings, replacements,
// arrays, indirection) are unresolved.
func (r *resolver) param(p *syntax.ParamExp) []string {
	r.sa.nested(p, r.sc) // ${X:-$(cmd)} runs cmd
	if p.Param == nil || p.Excl || p.Length || p.Width || p.Index != nil || p.Slice != nil ||
		p.Repl != nil || p.Names != 0 || p.NestedParam != nil || len(p.Modifiers) > 0 {
		return []string{hole}
	}
	vals := r.sc.lookup(p.Param.Value)
	if p.Exp == nil {
		return vals
	}
	switch p.Exp.Op {
	case syntax.DefaultUnset, syntax.DefaultUnsetOrNull, syntax.ErrorUnset, syntax.ErrorUnsetOrNull:
		// A known variable keeps its value; an unknown one stays unknown.
		return vals
	}
	return []string{hole}
}

// cmdSubst analyses the commands of $(…) or <(…), which run in a subshell.
// Their output is unknown, except for mktemp, whose output is always a
// fresh path and never a system directory.
func (r *resolver) cmdSubst(stmts []*syntax.Stmt) []string {
	r.sa.stmts(stmts, r.sc.clone())
	if downloads(stmts) {
		r.download = true
	}
	if len(stmts) == 1 {
		if ce, ok := stmts[0].Cmd.(*syntax.CallExpr); ok && len(ce.Args) > 0 && ce.Args[0].Lit() == "mktemp" {
			return []string{"/tmp/mktemp.XXXXXX"}
		}
	}
	return []string{hole}
}

// downloads reports whether any command in stmts is a download.
func downloads(stmts []*syntax.Stmt) bool {
	found := false
	for _, st := range stmts {
		syntax.Walk(st, func(n syntax.Node) bool {
			if ce, ok := n.(*syntax.CallExpr); ok && len(ce.Args) > 0 {
				for _, a := range ce.Args {
					if downloaders[baseName(a.Lit())] {
						found = true
					}
				}
			}
			return !found
		})
	}
	return found
}

// unescapeUnquoted removes the backslashes of an unquoted literal: \x is x,
// and a backslash-newline disappears.
func unescapeUnquoted(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
			if s[i] != '\n' {
				b.WriteByte(s[i])
			}
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unescapeDouble removes the backslashes that escape inside double quotes
// (before $, `, ", \ and newline) and keeps the others.
func unescapeDouble(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
			i++
			if s[i] != '\n' {
				b.WriteByte(s[i])
			}
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// decodeANSIC decodes the body of a $'…' string.
func decodeANSIC(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch c := s[i]; c {
		case 'a':
			b.WriteByte('\a')
		case 'b':
			b.WriteByte('\b')
		case 'e', 'E':
			b.WriteByte(0x1b)
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'v':
			b.WriteByte('\v')
		case 'x', 'u', 'U':
			limit := map[byte]int{'x': 2, 'u': 4, 'U': 8}[c]
			j := i + 1
			for j < len(s) && j-i-1 < limit && isHex(s[j]) {
				j++
			}
			if j == i+1 {
				b.WriteByte('\\')
				b.WriteByte(c)
				continue
			}
			n, _ := strconv.ParseUint(s[i+1:j], 16, 32)
			if c == 'x' {
				b.WriteByte(byte(n))
			} else if r := rune(n); utf8.ValidRune(r) {
				b.WriteRune(r)
			}
			i = j - 1
		case '0', '1', '2', '3', '4', '5', '6', '7':
			j := i
			for j < len(s) && j-i < 3 && s[j] >= '0' && s[j] <= '7' {
				j++
			}
			n, _ := strconv.ParseUint(s[i:j], 8, 16)
			b.WriteByte(byte(n))
			i = j - 1
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
