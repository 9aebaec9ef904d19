package safety

import (
	"regexp"
	"strings"
)

// PowerShell and cmd are not parsed: a tokenizer that knows their quoting,
// escapes, comments, variables and operators is enough to find commands
// and their arguments. This file holds the tokenizer, powershell.go the
// analysis and winrules.go the rules.

// winToken is a word or an operator of PowerShell or cmd text.
type winToken struct {
	parts []winPart
	// quoted: the word came from a string literal.
	quoted bool
	// op is set for operators: newline ; | || && & ( ) { } = and
	// "redir" for a redirection (whose target is the next word).
	op         string
	start, end int
}

// winPart is a piece of a word: literal text, a variable reference, or a
// subexpression $(…) whose code is analysed on its own.
type winPart struct {
	text    string
	varName string
	sub     *string
}

type winTokenizer struct {
	lang Language
	text string
	toks []winToken
	cur  winToken
	// inTok: the current word has content (even an empty string).
	inTok bool
	// lineStart: only blanks since the last newline (cmd comments).
	lineStart bool
}

func tokenizeWindows(lang Language, text string) []winToken {
	t := &winTokenizer{lang: lang, text: text, lineStart: true}
	for i := 0; i < len(text); i++ {
		if lang == Cmd {
			i = t.stepCmd(i)
		} else {
			i = t.stepPS(i)
		}
	}
	t.flush(len(text))
	return t.toks
}

func (t *winTokenizer) lit(s string, at int) {
	if !t.inTok {
		t.cur.start = at
	}
	t.cur.parts = append(t.cur.parts, winPart{text: s})
	t.inTok = true
	t.lineStart = false
}

func (t *winTokenizer) variable(name string, at int) {
	t.lit("", at)
	t.cur.parts = append(t.cur.parts, winPart{varName: strings.ToLower(name)})
}

func (t *winTokenizer) flush(end int) {
	if !t.inTok {
		return
	}
	t.cur.end = end
	t.toks = append(t.toks, t.cur)
	t.cur = winToken{}
	t.inTok = false
}

func (t *winTokenizer) op(op string, start, end int) {
	t.flush(start)
	t.toks = append(t.toks, winToken{op: op, start: start, end: end})
	t.lineStart = op == "\n"
}

// operator handles the operators shared by both languages at i and
// reports whether there was one, with the index of its last byte.
func (t *winTokenizer) operator(i int) (int, bool) {
	s := t.text
	next := byte(0)
	if i+1 < len(s) {
		next = s[i+1]
	}
	switch c := s[i]; {
	case c == '\n':
		t.op("\n", i, i+1)
	case c == '|' && next == '|', c == '&' && next == '&':
		t.op(s[i:i+2], i, i+2)
		return i + 1, true
	case c == '|', c == '&', c == '(', c == ')':
		t.op(string(c), i, i+1)
	case c == '>' || c == '<':
		// 2>&1, >>, > file: the target is the next word, or part of this one.
		t.flush(i)
		j := i
		for j+1 < len(s) && strings.IndexByte(">&12*", s[j+1]) >= 0 {
			j++
		}
		t.op("redir", i, j+1)
		return j, true
	default:
		return i, false
	}
	return i, true
}

func (t *winTokenizer) stepPS(i int) int {
	s := t.text
	c := s[i]
	if c == '<' && strings.HasPrefix(s[i:], "<#") {
		end := strings.Index(s[i:], "#>")
		if end < 0 {
			return len(s) - 1
		}
		return i + end + 1
	}
	if j, ok := t.operator(i); ok {
		return j
	}
	switch {
	case c == '`' && i+1 < len(s):
		if s[i+1] != '\n' && s[i+1] != '\r' {
			t.lit(s[i+1:i+2], i)
		}
		return i + 1
	case c == '#' && !t.inTok:
		return skipLine(s, i)
	case c == ';' || c == '{' || c == '}':
		t.op(string(c), i, i+1)
	case c == '=' && (!t.inTok || t.startsWithVariable()):
		t.op("=", i, i+1)
	case c == ' ' || c == '\t' || c == '\r' || c == ',':
		t.flush(i)
	case c == '\'':
		return t.singleQuoted(i)
	case c == '"':
		return t.doubleQuotedPS(i, '"')
	case c == '@' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\''):
		return t.hereString(i)
	case c == '$':
		return t.dollar(i)
	default:
		t.lit(s[i:i+1], i)
	}
	return i
}

func (t *winTokenizer) startsWithVariable() bool {
	return len(t.cur.parts) > 1 && t.cur.parts[0].text == "" && t.cur.parts[1].varName != ""
}

func skipLine(s string, i int) int {
	end := strings.IndexByte(s[i:], '\n')
	if end < 0 {
		return len(s) - 1
	}
	return i + end - 1
}

func (t *winTokenizer) singleQuoted(i int) int {
	s := t.text
	var b strings.Builder
	j := i + 1
	for ; j < len(s); j++ {
		if s[j] == '\'' {
			if j+1 < len(s) && s[j+1] == '\'' {
				b.WriteByte('\'')
				j++
				continue
			}
			break
		}
		b.WriteByte(s[j])
	}
	t.lit(b.String(), i)
	t.cur.quoted = true
	return j
}

// doubleQuotedPS reads "…" with backtick escapes, "" for a quote, and
// variables and subexpressions expanded.
func (t *winTokenizer) doubleQuotedPS(i int, quote byte) int {
	s := t.text
	t.lit("", i)
	t.cur.quoted = true
	j := i + 1
	for ; j < len(s); j++ {
		switch {
		case s[j] == quote && j+1 < len(s) && s[j+1] == quote:
			t.lit(string(quote), j)
			j++
		case s[j] == quote:
			return j
		case s[j] == '`' && j+1 < len(s):
			j++
			t.lit(psEscape(s[j]), j)
		case s[j] == '$':
			j = t.dollar(j)
		default:
			t.lit(s[j:j+1], j)
		}
	}
	return j
}

func psEscape(c byte) string {
	switch c {
	case 'n':
		return "\n"
	case 't':
		return "\t"
	case 'r':
		return "\r"
	case '0':
		return ""
	}
	return string(c)
}

// hereString reads @"…"@ or @'…'@.
func (t *winTokenizer) hereString(i int) int {
	s := t.text
	q := s[i+1]
	end := strings.Index(s[i+2:], "\n"+string(q)+"@")
	body := ""
	stop := len(s) - 1
	if end >= 0 {
		body = s[i+2 : i+2+end]
		stop = i + 2 + end + 2
	} else {
		body = s[i+2:]
	}
	body = strings.TrimPrefix(strings.TrimPrefix(body, "\r"), "\n")
	t.lit(body, i)
	t.cur.quoted = true
	return stop
}

var psVariable = regexp.MustCompile(`^\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*(:[A-Za-z_][A-Za-z0-9_()]*)?|[?$^_])`)

// dollar reads $name, ${name}, $env:NAME or a $(…) subexpression at i.
func (t *winTokenizer) dollar(i int) int {
	s := t.text
	if i+1 < len(s) && s[i+1] == '(' {
		end := matchingParen(s, i+1)
		inner := s[i+2 : max(i+2, end)]
		t.lit("", i)
		t.cur.parts = append(t.cur.parts, winPart{sub: &inner})
		return min(end, len(s)-1)
	}
	m := psVariable.FindString(s[i:])
	if m == "" {
		t.lit("$", i)
		return i
	}
	t.variable(strings.Trim(m[1:], "{}"), i)
	return i + len(m) - 1
}

// matchingParen returns the index of the ) closing the ( at open, or
// len(s) when there is none.
func matchingParen(s string, open int) int {
	depth := 0
	for j := open; j < len(s); j++ {
		switch s[j] {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return j
			}
		}
	}
	return len(s)
}

func (t *winTokenizer) stepCmd(i int) int {
	s := t.text
	c := s[i]
	if t.lineStart && !t.inTok {
		rest := strings.ToLower(strings.TrimLeft(s[i:], "@ \t"))
		if strings.HasPrefix(rest, "::") || rest == "rem" || strings.HasPrefix(rest, "rem ") || strings.HasPrefix(rest, "rem\t") {
			return skipLine(s, i)
		}
	}
	if j, ok := t.operator(i); ok {
		return j
	}
	switch {
	case c == '^' && i+1 < len(s):
		if s[i+1] != '\n' {
			t.lit(s[i+1:i+2], i)
		}
		return i + 1
	case c == ' ' || c == '\t' || c == '\r' || c == ',' || c == ';':
		t.flush(i)
	case c == '@' && !t.inTok:
	case c == '"':
		t.lit("", i)
		t.cur.quoted = true
		j := i + 1
		for ; j < len(s) && s[j] != '"' && s[j] != '\n'; j++ {
			j = t.percent(j)
		}
		return j
	default:
		return t.percent(i)
	}
	return i
}

var cmdVariable = regexp.MustCompile(`^(%[A-Za-z_][A-Za-z0-9_()#$'{}\[\]~.-]*%|![A-Za-z_][A-Za-z0-9_]*!)`)

// percent reads %NAME% or !NAME! at i, or a literal byte. %1, %%i and
// %~dp0 are unresolved.
func (t *winTokenizer) percent(i int) int {
	s := t.text
	if s[i] == '%' || s[i] == '!' {
		if m := cmdVariable.FindString(s[i:]); m != "" {
			t.variable(m[1:len(m)-1], i)
			return i + len(m) - 1
		}
		if s[i] == '%' && i+1 < len(s) && s[i+1] != ' ' {
			t.lit(hole, i)
			j := i + 1
			for j < len(s) && s[j] == '%' {
				j++
			}
			if j < len(s) && s[j] == '~' {
				for j+1 < len(s) && isAlnum(s[j+1]) {
					j++
				}
			}
			return j
		}
	}
	t.lit(s[i:i+1], i)
	return i
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
