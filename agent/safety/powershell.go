package safety

import (
	"encoding/base64"
	"encoding/binary"
	"regexp"
	"strings"
	"unicode/utf16"
)

// winScope is what the checker knows about a PowerShell or cmd session.
type winScope struct {
	// vars are assigned variables by lowercased name; environment
	// variables are "env:name" in both languages.
	vars map[string]string
	// cwd is the working directory when a cd made it known.
	cwd string
}

func newWinScope() *winScope { return &winScope{vars: map[string]string{}} }

// winEnv holds the usual values of Windows environment variables whose
// value matters to the rules: the system drive and directories, the user
// profile (a home directory, like ~), and temporary directories (deep,
// harmless paths). Read-only.
var winEnv = map[string]string{
	"systemdrive": `C:`, "systemroot": `C:\Windows`, "windir": `C:\Windows`,
	"programfiles": `C:\Program Files`, "programfiles(x86)": `C:\Program Files (x86)`,
	"programdata": `C:\ProgramData`, "allusersprofile": `C:\ProgramData`,
	"userprofile": "~", "homedrive": `C:`, "comspec": `C:\Windows\System32\cmd.exe`,
	"temp": `C:\Users\user\AppData\Local\Temp`, "tmp": `C:\Users\user\AppData\Local\Temp`,
	"appdata": `C:\Users\user\AppData\Roaming`, "localappdata": `C:\Users\user\AppData\Local`,
}

func (s *winScope) lookup(name string) string {
	name = strings.ToLower(name)
	if v, ok := s.vars[name]; ok {
		return v
	}
	if env, ok := strings.CutPrefix(name, "env:"); ok {
		if v, ok := winEnv[env]; ok {
			return v
		}
		return hole
	}
	switch name {
	case "home":
		return "~"
	case "true", "false":
		return "$" + name
	case "null":
		return ""
	case "pwd":
		if s.cwd != "" {
			return s.cwd
		}
	}
	return hole
}

// winCmd is one PowerShell or cmd command with its words resolved.
type winCmd struct {
	// name is lowercased, without directory or .exe.
	name string
	// args are the resolved arguments (hole for unknown parts); raw the
	// arguments as written; quoted says which were string literals.
	args, raw []string
	quoted    []bool
	// producer is the command before it in a pipe.
	producer      *winCmd
	cwd           string
	norm, snippet string
}

// winAnalysis analyses one PowerShell or cmd text.
type winAnalysis struct {
	*analysis
	lang Language
	text string
	sc   *winScope
}

// windows analyses a PowerShell or cmd script.
func (a *analysis) windows(lang Language, text string, sc *winScope) {
	wa := &winAnalysis{analysis: a, lang: lang, text: text, sc: sc}
	var cmdToks, stmtToks []winToken
	var producer *winCmd
	for _, t := range tokenizeWindows(lang, text) {
		if t.op == "" || t.op == "=" || t.op == "redir" {
			cmdToks = append(cmdToks, t)
			stmtToks = append(stmtToks, t)
			continue
		}
		cmd := wa.command(cmdToks, producer)
		cmdToks = nil
		producer = nil
		if t.op == "|" {
			producer = cmd
		}
		if t.op == "\n" || t.op == ";" || t.op == "&&" || t.op == "||" || (lang == Cmd && t.op == "&") {
			wa.statement(stmtToks)
			stmtToks = nil
		}
	}
	wa.command(cmdToks, producer)
	wa.statement(stmtToks)
}

// value resolves a token, analysing $(…) subexpressions as nested code.
func (wa *winAnalysis) value(t winToken) string {
	var b strings.Builder
	for _, p := range t.parts {
		switch {
		case p.sub != nil:
			inner := *p.sub
			wa.nest(inner, inner, func() { wa.windows(PowerShell, inner, wa.sc) })
			b.WriteString(hole)
		case p.varName != "":
			if wa.lang == Cmd {
				b.WriteString(wa.sc.lookup("env:" + p.varName))
			} else {
				b.WriteString(wa.sc.lookup(p.varName))
			}
		default:
			b.WriteString(p.text)
		}
	}
	return b.String()
}

func (wa *winAnalysis) source(toks []winToken) string {
	if len(toks) == 0 {
		return ""
	}
	s, e := toks[0].start, toks[len(toks)-1].end
	if s < 0 || e > len(wa.text) || s > e {
		return ""
	}
	return wa.text[s:e]
}

// command resolves and checks one command; it returns nil for an
// assignment or an empty command.
func (wa *winAnalysis) command(toks []winToken, producer *winCmd) *winCmd {
	var words []winToken
	for i := 0; i < len(toks); i++ {
		if toks[i].op != "redir" {
			words = append(words, toks[i])
			continue
		}
		// A redirection's target is not an argument; 2>&1 has none.
		if raw := wa.source(toks[i : i+1]); !strings.HasSuffix(raw, "&1") && !strings.HasSuffix(raw, "&2") {
			i++
		}
	}
	if len(words) == 0 {
		return nil
	}
	if wa.assignment(words) {
		return nil
	}
	vals := make([]string, len(words))
	raw := make([]string, len(words))
	quoted := make([]bool, len(words))
	for i, w := range words {
		if w.op == "=" {
			vals[i], raw[i] = "=", "="
			continue
		}
		vals[i] = wa.value(w)
		raw[i] = wa.source(words[i : i+1])
		quoted[i] = w.quoted
	}
	vals, raw, quoted = stripCmdKeywords(wa.lang, vals, raw, quoted)
	if len(vals) == 0 {
		return nil
	}
	c := &winCmd{
		name:     winName(vals[0]),
		args:     vals[1:],
		raw:      raw[1:],
		quoted:   quoted[1:],
		producer: producer,
		cwd:      wa.sc.cwd,
		snippet:  wa.source(words),
	}
	c.norm = winNormalize(vals, raw)
	wa.check(c)
	wa.effects(c)
	return c
}

func winNormalize(vals, raw []string) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = v
		if strings.Contains(v, hole) {
			parts[i] = strings.ReplaceAll(raw[i], hole, holeDisplay)
		}
	}
	return strings.Join(parts, " ")
}

// winName returns a command's name: lowercased, without its directory or
// module and without .exe, .com, .bat or .cmd.
func winName(v string) string {
	v = strings.ToLower(v)
	if i := strings.LastIndexAny(v, `\/`); i >= 0 {
		v = v[i+1:]
	}
	for _, ext := range []string{".exe", ".com", ".bat", ".cmd"} {
		v = strings.TrimSuffix(v, ext)
	}
	return v
}

// assignment records `$x = 'value'` (PowerShell) and `set X=value` (cmd).
func (wa *winAnalysis) assignment(words []winToken) bool {
	if wa.lang == PowerShell {
		if len(words) < 2 || words[1].op != "=" || !isVariableToken(words[0]) {
			return false
		}
		name := words[0].parts[1].varName
		if len(words) == 3 {
			wa.sc.vars[name] = wa.value(words[2])
		} else {
			delete(wa.sc.vars, name)
		}
		return true
	}
	if len(words) < 2 || !strings.EqualFold(wa.value(words[0]), "set") {
		return false
	}
	arg := wa.value(words[1])
	if strings.HasPrefix(arg, "/") {
		if len(words) > 2 {
			name, _, _ := strings.Cut(wa.value(words[2]), "=")
			delete(wa.sc.vars, "env:"+strings.ToLower(name))
		}
		return true
	}
	values := make([]string, 0, len(words)-1)
	for _, w := range words[1:] {
		values = append(values, wa.value(w))
	}
	name, val, ok := strings.Cut(strings.Join(values, " "), "=")
	if ok {
		wa.sc.vars["env:"+strings.ToLower(strings.TrimSpace(name))] = val
	}
	return true
}

func isVariableToken(t winToken) bool {
	return len(t.parts) == 2 && t.parts[0].text == "" && t.parts[1].varName != ""
}

// stripCmdKeywords drops cmd's `if …` and `for … do` prefixes so the
// command they run is checked.
func stripCmdKeywords(lang Language, vals, raw []string, quoted []bool) ([]string, []string, []bool) {
	if lang != Cmd {
		return vals, raw, quoted
	}
	for len(vals) > 0 {
		skip := 0
		switch strings.ToLower(vals[0]) {
		case "if":
			skip = 1
			for skip < len(vals) && (strings.EqualFold(vals[skip], "/i") || strings.EqualFold(vals[skip], "not")) {
				skip++
			}
			if skip < len(vals) {
				switch strings.ToLower(vals[skip]) {
				case "exist", "errorlevel", "defined", "cmdextversion":
					skip += 2
				default:
					skip++
					if skip < len(vals) && (vals[skip] == "==" || isCompareOp(vals[skip])) {
						skip += 2
					}
				}
			}
		case "for":
			skip = len(vals)
			for i, v := range vals {
				if strings.EqualFold(v, "do") {
					skip = i + 1
					break
				}
			}
		case "else", "do":
			skip = 1
		default:
			return vals, raw, quoted
		}
		skip = min(skip, len(vals))
		vals, raw, quoted = vals[skip:], raw[skip:], quoted[skip:]
	}
	return vals, raw, quoted
}

func isCompareOp(v string) bool {
	switch strings.ToLower(v) {
	case "equ", "neq", "lss", "leq", "gtr", "geq":
		return true
	}
	return false
}

// effects records cd / Set-Location.
func (wa *winAnalysis) effects(c *winCmd) {
	switch c.name {
	case "cd", "chdir", "set-location", "sl", "pushd", "push-location":
		targets := c.operands(nil)
		if len(targets) == 0 {
			return
		}
		dir := targets[0]
		if strings.Contains(dir, hole) {
			wa.sc.cwd = ""
			return
		}
		wa.sc.cwd = winAbs(dir, wa.sc.cwd)
	case "popd", "pop-location":
		wa.sc.cwd = ""
	}
}

// winAbs resolves a relative path against a known working directory.
func winAbs(p, cwd string) string {
	if cwd == "" || p == "" || strings.HasPrefix(p, hole) || strings.ContainsAny(p[:1], `\/~`) ||
		drivePrefix.MatchString(strings.ToLower(p)) {
		return p
	}
	if !drivePrefix.MatchString(strings.ToLower(cwd)) && !strings.HasPrefix(cwd, `\`) {
		return p
	}
	return strings.TrimRight(cwd, `\/`) + `\` + p
}

// psParam reports whether arg is the PowerShell parameter full, maybe
// abbreviated (-rec) or with a value (-Recurse:$true).
func psParam(arg, full string) bool {
	if len(arg) < 2 || arg[0] != '-' {
		return false
	}
	name, _, _ := strings.Cut(strings.ToLower(arg[1:]), ":")
	return name != "" && strings.HasPrefix(full, name)
}

var cmdSwitchWord = regexp.MustCompile(`^(/[A-Za-z?](:[^/]*)?)+$`)

// cmdSwitches returns the letters of a cmd-style switch word: /s/q gives
// s and q, /a:h gives a.
func cmdSwitches(arg string) []string {
	if !cmdSwitchWord.MatchString(arg) {
		return nil
	}
	var out []string
	for _, part := range strings.Split(arg[1:], "/") {
		if part != "" {
			out = append(out, strings.ToLower(part[:1]))
		}
	}
	return out
}

func (c *winCmd) hasSwitch(letter string) bool {
	for _, a := range c.args {
		for _, s := range cmdSwitches(a) {
			if s == letter {
				return true
			}
		}
	}
	return false
}

// hasParam reports whether the switch full is given and not turned off
// (-Recurse:$false).
func (c *winCmd) hasParam(full string) bool {
	for _, a := range c.args {
		if !psParam(a, full) {
			continue
		}
		_, val, _ := strings.Cut(strings.ToLower(a), ":")
		if val != "$false" && val != "false" && val != "0" {
			return true
		}
	}
	return false
}

// commonValued are PowerShell's common parameters that take a value.
var commonValued = []string{"erroraction", "warningaction", "informationaction", "errorvariable",
	"warningvariable", "informationvariable", "outvariable", "outbuffer", "pipelinevariable"}

// operands returns the arguments that are neither parameters (-Name) nor
// cmd switches (/s), nor the values of the parameters in valued.
func (c *winCmd) operands(valued []string) []string {
	var out []string
	valued = append(valued, commonValued...)
	for i := 0; i < len(c.args); i++ {
		a := c.args[i]
		if strings.HasPrefix(a, "-") && !c.quoted[i] {
			for _, v := range valued {
				if psParam(a, v) && !strings.Contains(a, ":") {
					i++
					break
				}
			}
			continue
		}
		if cmdSwitches(a) != nil && !c.quoted[i] {
			continue
		}
		out = append(out, a)
	}
	return out
}

func (c *winCmd) arg(i int) string {
	if i < len(c.args) {
		return strings.ToLower(c.args[i])
	}
	return ""
}

// nestedCode follows powershell -Command / -EncodedCommand and cmd /c.
func (wa *winAnalysis) nestedCode(c *winCmd) {
	switch c.name {
	case "powershell", "pwsh", "powershell_ise":
		wa.powershellCommandLine(c)
	case "start-process", "saps", "start":
		wa.startProcess(c)
	case "cmd":
		for i, a := range c.args {
			if strings.EqualFold(a, "/c") || strings.EqualFold(a, "/k") || strings.EqualFold(a, "/r") {
				code := joinCode(c.args[i+1:], c.quoted[i+1:])
				wa.nestedText(c, Cmd, code)
				return
			}
		}
	}
}

// startProcess follows Start-Process powershell|cmd -ArgumentList '…'.
func (wa *winAnalysis) startProcess(c *winCmd) {
	ops := c.operands([]string{"argumentlist", "workingdirectory", "verb", "credential", "windowstyle"})
	if len(ops) == 0 {
		return
	}
	program := winName(ops[0])
	if program != "powershell" && program != "pwsh" && program != "cmd" {
		return
	}
	for i, a := range c.args {
		if psParam(a, "argumentlist") && len(a) > 2 && i+1 < len(c.args) {
			code := program + " " + c.args[i+1]
			wa.nestedText(c, wa.lang, code)
			return
		}
	}
}

// psValueParams are powershell.exe parameters that take a value.
var psValueParams = []string{"executionpolicy", "windowstyle", "version", "configurationname",
	"workingdirectory", "outputformat", "inputformat", "psconsolefile", "settingsfile", "custompipename"}

func (wa *winAnalysis) powershellCommandLine(c *winCmd) {
	for i := 0; i < len(c.args); i++ {
		a := c.args[i]
		switch {
		case isEncodedParam(a):
			if i+1 < len(c.args) {
				wa.encoded(c, c.args[i+1])
			}
			return
		case psParam(a, "command"):
			wa.nestedText(c, PowerShell, joinCode(c.args[i+1:], c.quoted[i+1:]))
			return
		case psParam(a, "file"):
			return
		case strings.HasPrefix(a, "-") && !c.quoted[i]:
			for _, p := range psValueParams {
				if psParam(a, p) && len(a) > 2 {
					i++
					break
				}
			}
		default:
			// powershell.exe runs leftover arguments as a command.
			wa.nestedText(c, PowerShell, joinCode(c.args[i:], c.quoted[i:]))
			return
		}
	}
}

// isEncodedParam recognises -EncodedCommand and its short forms -e, -ec,
// -enc (pwsh resolves -e to it, not to -ExecutionPolicy).
func isEncodedParam(a string) bool {
	if len(a) < 2 || a[0] != '-' {
		return false
	}
	n := strings.ToLower(a[1:])
	return n == "e" || n == "ec" || len(n) >= 2 && strings.HasPrefix("encodedcommand", n)
}

// encoded decodes a base64 UTF-16LE -EncodedCommand and analyses it.
func (wa *winAnalysis) encoded(c *winCmd, b64 string) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw)%2 != 0 || strings.Contains(b64, hole) {
		wa.find("ps.unresolved-code", High, PossiblyDangerous,
			"runs an encoded command the checker cannot decode", c.norm, c.snippet)
		return
	}
	units := make([]uint16, len(raw)/2)
	for i := range units {
		units[i] = binary.LittleEndian.Uint16(raw[2*i:])
	}
	wa.nestedText(c, PowerShell, string(utf16.Decode(units)))
}

// joinCode rebuilds the code a command line passes on.
func joinCode(args []string, quoted []bool) string {
	if len(args) == 1 {
		return args[0]
	}
	parts := make([]string, len(args))
	for i, a := range args {
		parts[i] = a
		if quoted[i] && strings.ContainsAny(a, " \t") {
			parts[i] = "'" + strings.ReplaceAll(a, "'", "''") + "'"
		}
	}
	return strings.Join(parts, " ")
}

func (wa *winAnalysis) nestedText(c *winCmd, lang Language, code string) {
	if strings.TrimSpace(strings.ReplaceAll(code, hole, "")) == "" {
		if strings.Contains(code, hole) {
			wa.find("ps.unresolved-code", High, PossiblyDangerous,
				c.name+" runs code the checker cannot resolve", c.norm, c.snippet)
		}
		return
	}
	wa.nest(c.norm, c.snippet, func() { wa.windows(lang, code, newWinScope()) })
}

// downloadMarkers are PowerShell words that fetch content from the network.
var downloadMarkers = []string{"downloadstring", "downloadfile", "downloaddata", "net.webclient",
	"invoke-webrequest", "invoke-restmethod", "start-bitstransfer", "bitsadmin"}

var downloadCommands = map[string]bool{"iwr": true, "irm": true, "curl": true, "wget": true}

// statement looks for Invoke-Expression in one statement: of a download
// it is dangerous; of anything but a literal string, possibly dangerous.
func (wa *winAnalysis) statement(toks []winToken) {
	if wa.lang != PowerShell || len(toks) == 0 {
		return
	}
	exec, download := -1, false
	for i, t := range toks {
		if t.quoted || t.op != "" {
			continue
		}
		v := strings.ToLower(wa.literal(t))
		if v == "iex" || v == "invoke-expression" || strings.Contains(v, "[scriptblock]::create") {
			exec = i
		}
		if downloadCommands[v] {
			download = true
		}
		for _, m := range downloadMarkers {
			if strings.Contains(v, m) {
				download = true
			}
		}
	}
	if exec < 0 {
		return
	}
	snippet := wa.source(toks)
	command := strings.Join(strings.Fields(snippet), " ")
	switch {
	case download:
		wa.find("ps.download-exec", High, Dangerous,
			"runs code downloaded from the network (Invoke-Expression of a download)", command, snippet)
	case exec+1 < len(toks) && toks[exec+1].quoted && (exec+2 == len(toks) || toks[exec+2].op != ""):
		code := wa.value(toks[exec+1])
		if strings.Contains(code, hole) {
			wa.find("ps.unresolved-code", High, PossiblyDangerous,
				"Invoke-Expression runs code the checker cannot resolve", command, snippet)
			return
		}
		wa.nest(command, snippet, func() { wa.windows(PowerShell, code, wa.sc) })
	default:
		wa.find("ps.unresolved-code", High, PossiblyDangerous,
			"Invoke-Expression runs code the checker cannot resolve", command, snippet)
	}
}

// literal is a token's text without expanding anything (for keywords).
func (wa *winAnalysis) literal(t winToken) string {
	var b strings.Builder
	for _, p := range t.parts {
		b.WriteString(p.text)
	}
	return b.String()
}
