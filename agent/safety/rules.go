package safety

import (
	"strings"

	"mvdan.cc/sh/v3/syntax"
)

// shellRule is a built-in rule on one resolved shell command.
type shellRule struct {
	id       string
	severity Severity
	// names are the command names the rule looks at; "mkfs*" matches a
	// prefix; none means every command (rules on redirections).
	names []string
	// check returns Safe, or a verdict and what the command would do.
	check func(c *shellCmd) (Verdict, string)
}

func (r shellRule) applies(name string) bool {
	if len(r.names) == 0 {
		return true
	}
	for _, n := range r.names {
		if n == name || strings.HasSuffix(n, "*") && strings.HasPrefix(name, n[:len(n)-1]) {
			return true
		}
	}
	return false
}

// shellRules is read-only.
var shellRules = []shellRule{
	{"shell.rm-root", Critical, []string{"rm"}, checkRmRoot},
	{"shell.rsync-delete-root", Critical, []string{"rsync"}, checkRsyncDelete},
	{"shell.mv-system", Critical, []string{"mv"}, checkMvSystem},
	{"shell.chmod-root", Critical, []string{"chmod", "chown", "chgrp"}, checkChmodRoot},
	{"shell.mkfs", Critical, []string{"mkfs*", "mke2fs", "mkswap", "mkdosfs", "mkntfs", "mkexfatfs"}, checkMkfs},
	{"shell.wipe-device", Critical, []string{"wipefs", "shred", "blkdiscard", "hdparm", "nvme", "sg_format", "badblocks"}, checkWipeDevice},
	{"shell.write-device", Critical, nil, checkWriteDevice},
	{"shell.partition", High, []string{"fdisk", "gdisk", "cfdisk", "sfdisk", "parted", "sgdisk"}, checkPartition},
	{"shell.sysrq", Critical, nil, checkSysrq},
	{"shell.clobber-system-file", Critical, nil, checkClobberSystemFile},
	{"shell.wipe-logs", High, nil, checkWipeLogs},
	{"shell.wipe-history", Medium, nil, checkWipeHistory},
	{"shell.power", High, []string{"shutdown", "reboot", "halt", "poweroff", "init", "telinit", "systemctl", "loginctl"}, checkPower},
	{"shell.kill-all", High, []string{"kill", "killall5"}, checkKillAll},
	{"shell.crontab-remove", High, []string{"crontab"}, checkCrontab},
	{"shell.firewall-flush", High, []string{"iptables*", "ip6tables*", "nft"}, checkFirewall},
	{"shell.stop-remote-access", High, []string{"systemctl", "service"}, checkStopSSH},
	{"sql.drop-database", Critical, []string{"dropdb", "mysqladmin"}, checkDropdbTool},
}

// check runs the built-in rules, the operator's rules, SQL detection and
// the code-string analysis on one command.
func (sa *shellAnalysis) check(cmd *shellCmd, sc *scope) {
	if len(cmd.args) > 0 && len(cmd.args[0].vals) > 1 && cmd.args[0].resolved() {
		// for c in rm ls; do $c -rf /; done: check every name it may be.
		for _, v := range cmd.args[0].vals {
			alt := *cmd
			alt.args = append([]word{lit(v)}, cmd.rest()...)
			alt.norm = alt.normalize()
			sa.checkOne(&alt, sc)
		}
		return
	}
	sa.checkOne(cmd, sc)
}

func (sa *shellAnalysis) checkOne(cmd *shellCmd, sc *scope) {
	if cmd.norm != "" {
		sa.operatorRules(Shell, cmd.norm, cmd.snippet)
	}
	name := cmd.name()
	if name == hole {
		sa.unresolvedCommand(cmd)
	}
	for _, r := range shellRules {
		if !r.applies(name) {
			continue
		}
		if v, what := r.check(cmd); v != Safe {
			sa.find(r.id, r.severity, v, what, cmd.norm, cmd.snippet)
		}
	}
	sa.sqlInCommand(cmd)
	sa.code(cmd, sc)
}

// unresolvedCommand flags a command whose name is unknown ($(echo rm)) but
// which is given / or a system directory or a disk.
func (sa *shellAnalysis) unresolvedCommand(cmd *shellCmd) {
	for _, w := range cmd.rest() {
		v, what := w.mayBe(func(p string) bool { return isCriticalPath(p) || isDevice(p) }, cmd.cwd, false)
		if v == Dangerous {
			sa.find("shell.unresolved-command", High, PossiblyDangerous,
				"a command the checker cannot resolve is given "+what, cmd.norm, cmd.snippet)
			return
		}
	}
}

// worst tests every word and returns the worst verdict with its value.
func worst(words []word, pred func(string) bool, cwd string, bare bool) (Verdict, string) {
	verdict, what := Safe, ""
	for _, w := range words {
		v, s := w.mayBe(pred, cwd, bare)
		if v == Dangerous {
			return v, s
		}
		if v == PossiblyDangerous && verdict == Safe {
			verdict, what = v, s
		}
	}
	return verdict, what
}

// unresolvedNote explains a PossiblyDangerous verdict.
func unresolvedNote(v Verdict) string {
	if v == PossiblyDangerous {
		return ", which the checker cannot fully resolve"
	}
	return ""
}

func checkRmRoot(c *shellCmd) (Verdict, string) {
	p := parseArgs(c.rest(), optSpec{permute: true, values: ""})
	recursive := p.has("r", "R", "recursive")
	if !recursive && !p.unresolved {
		return Safe, ""
	}
	v, what := worst(p.operands, isCriticalPath, c.cwd, recursive)
	if v == Safe {
		return Safe, ""
	}
	if !recursive {
		// rm $FLAGS /: the flags may be -rf.
		return PossiblyDangerous, "delete of " + what + " with options the checker cannot resolve"
	}
	return v, "recursive delete of " + what + unresolvedNote(v)
}

// checkRsyncDelete flags rsync --delete onto / or a system directory,
// which deletes everything there that the source lacks.
func checkRsyncDelete(c *shellCmd) (Verdict, string) {
	p := parseArgs(c.rest(), optSpec{permute: true, values: "eBfT", long: []string{"rsh", "filter", "exclude", "include", "temp-dir"}})
	deletes := false
	for _, o := range p.opts {
		if strings.HasPrefix(o, "delete") || o == "remove-source-files" {
			deletes = true
		}
	}
	if !deletes || p.has("n", "dry-run") || len(p.operands) < 2 {
		return Safe, ""
	}
	v, what := p.operands[len(p.operands)-1].mayBe(isCriticalPath, c.cwd, false)
	if v == Safe {
		return Safe, ""
	}
	return v, "rsync --delete onto " + what + " deletes everything there that the source lacks" + unresolvedNote(v)
}

func checkMvSystem(c *shellCmd) (Verdict, string) {
	p := parseArgs(c.rest(), optSpec{permute: true, values: "tS", long: []string{"target-directory", "suffix"}})
	sources := p.operands
	if _, ok := p.vals["t"]; !ok && !p.has("target-directory") && len(sources) > 0 {
		sources = sources[:len(sources)-1]
	}
	v, what := worst(sources, isCriticalPath, c.cwd, false)
	if v == Safe {
		return Safe, ""
	}
	return v, "moves " + what + " away" + unresolvedNote(v)
}

func checkChmodRoot(c *shellCmd) (Verdict, string) {
	p := parseArgs(c.rest(), optSpec{permute: true, long: []string{"reference", "from"}})
	if !p.has("R", "recursive") {
		return Safe, ""
	}
	targets := p.operands
	if len(targets) > 0 && !looksLikePath(targets[0]) {
		targets = targets[1:] // the mode or owner
	}
	v, what := worst(targets, isCriticalPath, c.cwd, false)
	if v == Safe {
		return Safe, ""
	}
	return v, "recursive " + c.name() + " of " + what + unresolvedNote(v)
}

func looksLikePath(w word) bool {
	for _, v := range w.vals {
		if strings.ContainsAny(v, "/~") || v == "." || v == ".." || strings.HasPrefix(v, hole) {
			return true
		}
	}
	return false
}

func checkMkfs(c *shellCmd) (Verdict, string) {
	p := parseArgs(c.rest(), optSpec{permute: true, values: "tLbcCeEgGiIjJmMNoOrsUz"})
	if len(p.operands) == 0 {
		return Safe, ""
	}
	v, what := worst(p.operands, isDevice, c.cwd, false)
	if v == Safe {
		// The device is the last operand; an unresolved one may be a disk.
		v, what = p.operands[len(p.operands)-1].mayBe(isDevice, c.cwd, true)
	}
	if v == Safe {
		return Safe, ""
	}
	return v, "makes a new filesystem on " + what + ", erasing it" + unresolvedNote(v)
}

func checkWipeDevice(c *shellCmd) (Verdict, string) {
	name := c.name()
	p := parseArgs(c.rest(), optSpec{permute: true, values: "nsoptu", long: []string{"offset", "types", "iterations", "size"}})
	onDevice := func(what string) (Verdict, string) {
		v, dev := worst(p.operands, isDevice, c.cwd, false)
		if v == Safe {
			return Safe, ""
		}
		return v, what + " " + dev + unresolvedNote(v)
	}
	switch name {
	case "wipefs":
		if p.has("a", "all", "o", "offset") && !p.has("n", "no-act") {
			return onDevice("erases the filesystem signatures of")
		}
	case "shred":
		return onDevice("overwrites the device")
	case "blkdiscard":
		return onDevice("discards every block of")
	case "hdparm":
		if p.has("security-erase", "security-erase-enhanced", "trim-sector-ranges", "write-sector", "make-bad-sector") {
			return Dangerous, "erases or overwrites disk sectors"
		}
	case "nvme":
		if len(p.operands) > 0 && (p.operands[0].is("format") || p.operands[0].is("sanitize")) {
			return Dangerous, "formats or sanitizes an NVMe drive"
		}
	case "sg_format":
		if p.has("format", "F") {
			return Dangerous, "low-level formats a disk"
		}
	case "badblocks":
		if p.has("w") {
			return onDevice("runs a destructive write test on")
		}
	}
	return Safe, ""
}

func checkWriteDevice(c *shellCmd) (Verdict, string) {
	var writes []word
	for _, r := range c.redirs {
		if r.writes() {
			writes = append(writes, r.target)
		}
	}
	if v, what := worst(writes, isDevice, c.cwd, false); v != Safe {
		return v, "redirects output onto the device " + what + ", overwriting it" + unresolvedNote(v)
	}
	p := parseArgs(c.rest(), optSpec{permute: true, values: "tS", long: []string{"target-directory"}})
	var targets []word
	bare := false
	switch c.name() {
	case "dd":
		targets, bare = ddOutputs(c.rest()), true
	case "tee":
		targets = p.operands
	case "cp", "install", "rsync":
		if len(p.operands) > 1 {
			targets = p.operands[len(p.operands)-1:]
		}
	case "ddrescue":
		if len(p.operands) > 1 {
			targets = p.operands[1:2]
		}
	}
	if v, what := worst(targets, isDevice, c.cwd, bare); v != Safe {
		return v, "writes onto the device " + what + ", overwriting it" + unresolvedNote(v)
	}
	return Safe, ""
}

// ddOutputs returns the of= operands of dd.
func ddOutputs(args []word) []word {
	var out []word
	for _, w := range args {
		var vals []string
		for _, v := range w.vals {
			if t, ok := strings.CutPrefix(v, "of="); ok {
				vals = append(vals, t)
			}
		}
		if len(vals) > 0 {
			out = append(out, word{vals: vals, src: strings.TrimPrefix(w.src, "of=")})
		}
	}
	return out
}

func checkPartition(c *shellCmd) (Verdict, string) {
	p := parseArgs(c.rest(), optSpec{permute: true, values: "bcuLhA"})
	edits := "edits the partition table of"
	switch c.name() {
	case "fdisk", "gdisk", "cfdisk":
		if p.has("l", "list", "help", "V", "version") {
			return Safe, ""
		}
	case "sfdisk":
		if p.has("d", "dump", "l", "list", "J", "json", "V", "verify", "s", "show-size", "F", "list-free", "list-types", "T", "help") {
			return Safe, ""
		}
	case "parted":
		if !anyOperand(p.operands, "mklabel", "mktable", "mkpart", "rm", "resizepart", "rescue", "mkpartfs") {
			return Safe, ""
		}
	case "sgdisk":
		if !p.has("Z", "zap-all", "z", "zap", "o", "clear", "d", "delete", "n", "new", "g", "mbrtogpt") {
			return Safe, ""
		}
		edits = "rewrites the partition table of"
	}
	v, what := worst(p.operands, isDevice, c.cwd, false)
	if v == Safe {
		return Safe, ""
	}
	return v, edits + " " + what + unresolvedNote(v)
}

func anyOperand(ops []word, names ...string) bool {
	for _, w := range ops {
		for _, n := range names {
			if w.is(n) {
				return true
			}
		}
	}
	return false
}

func checkSysrq(c *shellCmd) (Verdict, string) {
	isTrigger := func(p string) bool { return cleanUnix(p) == "/proc/sysrq-trigger" }
	var targets []word
	for _, r := range c.redirs {
		if r.writes() {
			targets = append(targets, r.target)
		}
	}
	if c.name() == "tee" {
		targets = append(targets, parseArgs(c.rest(), optSpec{permute: true}).operands...)
	}
	if v, _ := worst(targets, isTrigger, c.cwd, false); v == Dangerous {
		return v, "writes to /proc/sysrq-trigger, which can crash, reboot or power off the host at once"
	}
	return Safe, ""
}

// destroyed returns the paths whose content the command deletes or
// empties: truncating redirections, rm, unlink, shred, truncate, copying or
// linking /dev/null over a file, moving a file onto /dev/null.
func destroyed(c *shellCmd) []word {
	var out []word
	for _, r := range c.redirs {
		if r.truncates() {
			out = append(out, r.target)
		}
	}
	if len(c.args) == 0 {
		return out
	}
	args := c.rest()
	switch c.name() {
	case "rm", "unlink":
		out = append(out, parseArgs(args, optSpec{permute: true}).operands...)
	case "shred":
		out = append(out, parseArgs(args, optSpec{permute: true, values: "ns", long: []string{"iterations", "size", "random-source"}}).operands...)
	case "truncate":
		out = append(out, parseArgs(args, optSpec{permute: true, values: "sr", long: []string{"size", "reference"}}).operands...)
	case "cp", "ln", "mv":
		p := parseArgs(args, optSpec{permute: true, values: "tS"})
		ops := p.operands
		if len(ops) < 2 {
			break
		}
		last := ops[len(ops)-1]
		switch {
		case c.name() != "mv" && ops[0].is("/dev/null"):
			out = append(out, last)
		case c.name() == "mv" && last.is("/dev/null"):
			out = append(out, ops[:len(ops)-1]...)
		}
	}
	return out
}

func checkClobberSystemFile(c *shellCmd) (Verdict, string) {
	v, what := worst(destroyed(c), isCriticalFile, c.cwd, false)
	if v == Safe {
		return Safe, ""
	}
	return v, "deletes or empties " + what + ", which the host needs to let anyone log in or boot" + unresolvedNote(v)
}

func checkWipeLogs(c *shellCmd) (Verdict, string) {
	v, what := worst(destroyed(c), isSystemLog, c.cwd, false)
	if v == Safe {
		return Safe, ""
	}
	return v, "deletes or empties the system log " + what + ", destroying the audit trail" + unresolvedNote(v)
}

func checkWipeHistory(c *shellCmd) (Verdict, string) {
	p := parseArgs(nil, optSpec{})
	if len(c.args) > 0 {
		p = parseArgs(c.rest(), optSpec{permute: true, values: "adrwn"})
	}
	switch c.name() {
	case "history":
		if p.has("c") {
			return Dangerous, "clears the shell history"
		}
		if w, ok := p.vals["w"]; ok && w.is("/dev/null") {
			return Dangerous, "overwrites the history file with nothing"
		}
	case "unset":
		if anyOperand(p.operands, "HISTFILE") {
			return Dangerous, "stops the shell from saving its history"
		}
	case "set":
		if len(c.args) > 2 && c.args[1].is("+o") && c.args[2].is("history") {
			return Dangerous, "turns shell history off"
		}
	}
	v, what := worst(destroyed(c), isHistoryFile, c.cwd, false)
	if v == Safe {
		return Safe, ""
	}
	return v, "deletes or empties the history file " + what + unresolvedNote(v)
}

// historySetting flags assignments that stop history being saved:
// HISTFILE=/dev/null, HISTSIZE=0.
func (sa *shellAnalysis) historySetting(name string, vals []string, st *syntax.Stmt) {
	off := false
	for _, v := range vals {
		switch name {
		case "HISTFILE":
			off = off || v == "/dev/null" || v == ""
		case "HISTSIZE", "HISTFILESIZE", "SAVEHIST":
			off = off || v == "0"
		}
	}
	if off {
		snippet := sa.source(st)
		sa.find("shell.wipe-history", Medium, Dangerous, "stops the shell from saving its history", snippet, snippet)
	}
}

func checkPower(c *shellCmd) (Verdict, string) {
	name := c.name()
	p := parseArgs(c.rest(), optSpec{permute: true, values: "tpHMnos", long: []string{"type", "property", "host", "machine", "lines", "output", "signal"}})
	switch name {
	case "shutdown":
		if p.has("c", "help") {
			return Safe, ""
		}
		return Dangerous, "shuts the host down or reboots it"
	case "reboot", "halt", "poweroff":
		if p.has("help") {
			return Safe, ""
		}
		return Dangerous, map[string]string{"reboot": "reboots", "halt": "halts", "poweroff": "powers off"}[name] + " the host"
	case "init", "telinit":
		if anyOperand(p.operands, "0", "6") {
			return Dangerous, "switches to runlevel 0 or 6, powering the host off or rebooting it"
		}
	case "systemctl", "loginctl":
		ops := p.operands
		if len(ops) == 0 {
			return Safe, ""
		}
		if anyOperand(ops[:1], "poweroff", "reboot", "halt", "kexec", "soft-reboot", "emergency", "rescue") {
			return Dangerous, "powers the host off, reboots it or leaves multi-user mode"
		}
		if anyOperand(ops[:1], "isolate", "start") && anyOperand(ops[1:], "poweroff.target", "reboot.target",
			"halt.target", "rescue.target", "emergency.target", "kexec.target") {
			return Dangerous, "powers the host off, reboots it or leaves multi-user mode"
		}
	}
	return Safe, ""
}

func checkKillAll(c *shellCmd) (Verdict, string) {
	if c.name() == "killall5" {
		return Dangerous, "signals every process on the host"
	}
	args := c.rest()
	if len(args) > 0 {
		switch v, _ := args[0].known(); {
		case v == "-s" || v == "-n" || v == "--signal":
			args = args[min(2, len(args)):]
		case v == "-l" || v == "-L" || v == "--list" || v == "--table":
			return Safe, ""
		case strings.HasPrefix(v, "-") && v != "--":
			args = args[1:]
		}
	}
	if len(args) > 0 && args[0].is("--") {
		args = args[1:]
	}
	if anyOperand(args, "-1") && !c.args[1].is("-0") {
		return Dangerous, "kill -1 signals every process the user may signal"
	}
	return Safe, ""
}

func checkCrontab(c *shellCmd) (Verdict, string) {
	if parseArgs(c.rest(), optSpec{permute: true, values: "u"}).has("r", "remove") {
		return Dangerous, "removes the whole crontab"
	}
	return Safe, ""
}

func checkFirewall(c *shellCmd) (Verdict, string) {
	if c.name() == "nft" {
		for i := 1; i+1 < len(c.args); i++ {
			if c.args[i].is("flush") && c.args[i+1].is("ruleset") {
				return Dangerous, "flushes the whole nftables ruleset"
			}
		}
		return Safe, ""
	}
	for i := 1; i < len(c.args); i++ {
		switch {
		case c.args[i].is("-F") || c.args[i].is("--flush"):
			return Dangerous, "flushes firewall rules"
		case (c.args[i].is("-P") || c.args[i].is("--policy")) && i+2 < len(c.args) &&
			(c.args[i+1].is("INPUT") || c.args[i+1].is("OUTPUT")) &&
			(c.args[i+2].is("DROP") || c.args[i+2].is("REJECT")):
			return Dangerous, "sets a default DROP policy, which can cut off remote access to the host"
		}
	}
	return Safe, ""
}

func checkStopSSH(c *shellCmd) (Verdict, string) {
	isSSH := func(w word) bool {
		v, ok := w.known()
		if !ok {
			return false
		}
		v = strings.TrimSuffix(strings.TrimSuffix(v, ".service"), ".socket")
		return v == "ssh" || v == "sshd" || v == "openssh-server"
	}
	ops := parseArgs(c.rest(), optSpec{permute: true}).operands
	switch c.name() {
	case "systemctl":
		if len(ops) > 1 && anyOperand(ops[:1], "stop", "disable", "mask", "kill") {
			for _, w := range ops[1:] {
				if isSSH(w) {
					return Dangerous, "stops the SSH server, cutting off remote access to the host"
				}
			}
		}
	case "service":
		if len(ops) > 1 && isSSH(ops[0]) && ops[1].is("stop") {
			return Dangerous, "stops the SSH server, cutting off remote access to the host"
		}
	}
	return Safe, ""
}

func checkDropdbTool(c *shellCmd) (Verdict, string) {
	p := parseArgs(c.rest(), optSpec{permute: true, values: "hpUuSP", long: []string{"host", "port", "username", "user", "socket", "maintenance-db"}})
	switch c.name() {
	case "dropdb":
		if len(p.operands) > 0 {
			return Dangerous, "drops the database " + p.operands[0].display()
		}
	case "mysqladmin":
		for i, w := range p.operands {
			if w.is("drop") {
				target := "a database"
				if i+1 < len(p.operands) {
					target = "the database " + p.operands[i+1].display()
				}
				return Dangerous, "drops " + target
			}
		}
	}
	return Safe, ""
}
