package safety

import (
	"regexp"
	"strings"

	"mvdan.cc/sh/v3/syntax"
)

// fallback checks a shell script the parser rejects (an unclosed quote, a
// construct it does not know). The text is split into commands at unquoted
// newlines, ; & | ( ) ` and $(, and commands into words at blanks, keeping
// quotes and backslashes as far as they go. The usual rules then run on
// each command, with every finding downgraded to possibly dangerous: a
// script that merely fails to parse stays safe unless a dangerous command
// appears in it.
func (sa *shellAnalysis) fallback(text string, sc *scope) {
	sa.unsure++
	defer func() { sa.unsure-- }()
	sa.textForkBomb(text)
	for _, pipe := range tokenizeFallback(text, sc) {
		var done []*shellCmd
		var norms []string
		for _, stage := range pipe.stages {
			in := pipeInput(done, norms, pipe.src)
			cmd := stage.command(sc)
			if cmd == nil {
				done = append(done, nil)
				norms = append(norms, strings.TrimSpace(stage.src))
				continue
			}
			text := cmd.stdin.text
			cmd.stdin = in
			if text != nil {
				cmd.stdin.text = text
			}
			if len(cmd.args) == 0 {
				cmd.norm = redirectsDisplay(cmd.redirs)
				sa.check(cmd, sc)
			} else {
				sa.run(cmd, sc)
			}
			done = append(done, cmd)
			norms = append(norms, cmd.norm)
		}
	}
}

var funcDef = regexp.MustCompile(`([^\s;&|(){}<>]+)\s*\(\s*\)\s*\{([^}]*)`)

// textForkBomb finds `name(){ name|name& }` in text that does not parse.
func (sa *shellAnalysis) textForkBomb(text string) {
	for _, m := range funcDef.FindAllStringSubmatch(text, -1) {
		name, body := m[1], strings.Join(strings.Fields(m[2]), "")
		if strings.Contains(body, name+"|"+name) || strings.Contains(strings.ReplaceAll(body, "&&", ""), name+"&") {
			sa.find("shell.fork-bomb", Critical, Dangerous,
				"fork bomb: function "+name+" starts copies of itself until the host runs out of processes",
				m[0], m[0])
		}
	}
}

// ftoken is a word or a redirection operator of unparsed text.
type ftoken struct {
	w     word
	redir string
}

// fstage is one command of unparsed text; fpipe a pipe of them.
type fstage struct {
	toks []ftoken
	src  string
}

type fpipe struct {
	stages []fstage
	src    string
}

// fallbackTokenizer splits unparsed text; see fallback.
type fallbackTokenizer struct {
	text  string
	sc    *scope
	pipes []fpipe
	pipe  fpipe
	stage fstage
	buf   strings.Builder
	// inWord is set once the current word has content (even "").
	inWord                bool
	stageStart, pipeStart int
}

func tokenizeFallback(text string, sc *scope) []fpipe {
	t := &fallbackTokenizer{text: text, sc: sc}
	for i := 0; i < len(text); i++ {
		i = t.step(i)
	}
	t.endPipe(len(text))
	return t.pipes
}

// step consumes the text at i and returns the index of the last byte used.
func (t *fallbackTokenizer) step(i int) int {
	s := t.text
	c := s[i]
	switch {
	case c == '\\' && i+1 < len(s):
		if s[i+1] != '\n' {
			t.buf.WriteByte(s[i+1])
			t.inWord = true
		}
		return i + 1
	case c == '\'':
		end := strings.IndexByte(s[i+1:], '\'')
		if end < 0 {
			end = len(s) - i - 1
		}
		t.buf.WriteString(s[i+1 : i+1+end])
		t.inWord = true
		return i + 1 + end
	case c == '"':
		return t.doubleQuoted(i)
	case c == '$' && i+1 < len(s) && s[i+1] == '(':
		t.endPipe(i)
		return i + 1
	case c == '$':
		t.inWord = true
		return t.variable(i)
	case c == '`' || c == '\n' || c == ';' || c == '(' || c == ')':
		t.endPipe(i)
	case c == '#' && !t.inWord:
		end := strings.IndexByte(s[i:], '\n')
		if end < 0 {
			return len(s) - 1
		}
		return i + end - 1
	case c == ' ' || c == '\t' || c == '\r':
		t.flushWord()
	case c == '&' && i+1 < len(s) && s[i+1] == '>':
		return t.redirect(i)
	case c == '&':
		t.endPipe(i)
		if i+1 < len(s) && s[i+1] == '&' {
			return i + 1
		}
	case c == '|':
		if i+1 < len(s) && s[i+1] == '|' {
			t.endPipe(i)
			return i + 1
		}
		t.endStage(i)
		if i+1 < len(s) && s[i+1] == '&' {
			return i + 1
		}
	case c == '<' || c == '>':
		return t.redirect(i)
	default:
		t.buf.WriteByte(c)
		t.inWord = true
	}
	return i
}

func (t *fallbackTokenizer) doubleQuoted(i int) int {
	s := t.text
	t.inWord = true
	j := i + 1
	for ; j < len(s) && s[j] != '"'; j++ {
		switch {
		case s[j] == '\\' && j+1 < len(s) && strings.IndexByte("$`\"\\\n", s[j+1]) >= 0:
			j++
			t.buf.WriteByte(s[j])
		case s[j] == '$':
			j = t.variable(j)
		default:
			t.buf.WriteByte(s[j])
		}
	}
	return j
}

var fallbackVar = regexp.MustCompile(`^\$(\{[^}]*\}?|[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-])`)

// variable expands $NAME or ${NAME} at i with its known value, or a hole.
func (t *fallbackTokenizer) variable(i int) int {
	m := fallbackVar.FindString(t.text[i:])
	if m == "" {
		t.buf.WriteByte('$')
		return i
	}
	name := strings.Trim(m[1:], "{}")
	vals := t.sc.lookup(name)
	if len(vals) == 1 {
		t.buf.WriteString(vals[0])
	} else {
		t.buf.WriteString(hole)
	}
	return i + len(m) - 1
}

// redirect reads a redirection operator at i; a file descriptor number
// just before it is dropped.
func (t *fallbackTokenizer) redirect(i int) int {
	if t.inWord && strings.Trim(t.buf.String(), "0123456789") == "" {
		t.buf.Reset()
		t.inWord = false
	}
	t.flushWord()
	j := i
	for j < len(t.text) && j-i < 3 && strings.IndexByte("<>&|", t.text[j]) >= 0 {
		j++
	}
	t.stage.toks = append(t.stage.toks, ftoken{redir: t.text[i:j]})
	return j - 1
}

func (t *fallbackTokenizer) flushWord() {
	if !t.inWord {
		return
	}
	v := t.buf.String()
	t.stage.toks = append(t.stage.toks, ftoken{w: word{vals: []string{v}, src: v}})
	t.buf.Reset()
	t.inWord = false
}

func (t *fallbackTokenizer) endStage(i int) {
	t.flushWord()
	if i > len(t.text) {
		i = len(t.text)
	}
	if t.stageStart <= i {
		t.stage.src = t.text[t.stageStart:i]
	}
	if len(t.stage.toks) > 0 {
		t.pipe.stages = append(t.pipe.stages, t.stage)
	}
	t.stage = fstage{}
	t.stageStart = i + 1
}

func (t *fallbackTokenizer) endPipe(i int) {
	t.endStage(i)
	if i > len(t.text) {
		i = len(t.text)
	}
	if t.pipeStart <= i {
		t.pipe.src = t.text[t.pipeStart:i]
	}
	if len(t.pipe.stages) > 0 {
		t.pipes = append(t.pipes, t.pipe)
	}
	t.pipe = fpipe{}
	t.pipeStart = i + 1
}

// fallbackKeywords start compound commands; the command follows them.
var fallbackKeywords = map[string]bool{
	"if": true, "then": true, "else": true, "elif": true, "fi": true, "do": true,
	"done": true, "while": true, "until": true, "{": true, "}": true, "!": true,
	"time": true, "esac": true,
}

var fallbackRedirs = map[string]syntax.RedirOperator{
	">": syntax.RdrOut, ">>": syntax.AppOut, ">|": syntax.RdrClob, "&>": syntax.RdrAll,
	"&>>": syntax.AppAll, "<>": syntax.RdrInOut, "<": syntax.RdrIn,
}

// command builds a shellCmd from a stage; assignments alone update sc.
func (st fstage) command(sc *scope) *shellCmd {
	cmd := &shellCmd{cwd: sc.cwd, snippet: strings.TrimSpace(st.src)}
	var args []word
	for i := 0; i < len(st.toks); i++ {
		tok := st.toks[i]
		if tok.redir == "" {
			args = append(args, tok.w)
			continue
		}
		if i+1 >= len(st.toks) || st.toks[i+1].redir != "" {
			continue
		}
		i++
		target := st.toks[i].w
		if op, ok := fallbackRedirs[tok.redir]; ok {
			cmd.redirs = append(cmd.redirs, redirect{op: op, target: target})
		} else if tok.redir == "<<<" {
			cmd.stdin.text = &target
		}
	}
	for len(args) > 0 && fallbackKeywords[args[0].vals[0]] {
		args = args[1:]
	}
	if len(args) > 0 && (args[0].is("for") || args[0].is("case") || args[0].is("select")) {
		return nil
	}
	for len(args) > 0 && assignWord.MatchString(args[0].vals[0]) {
		name, val, _ := strings.Cut(args[0].vals[0], "=")
		if len(args) == 1 {
			sc.set(name, []string{val})
		} else {
			if cmd.assigns == nil {
				cmd.assigns = map[string][]string{}
			}
			cmd.assigns[name] = []string{val}
		}
		args = args[1:]
	}
	cmd.args = args
	if len(args) == 0 && len(cmd.redirs) == 0 {
		return nil
	}
	return cmd
}
