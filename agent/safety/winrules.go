package safety

import (
	"regexp"
	"strings"
)

// winRule is a built-in rule on one PowerShell or cmd command.
type winRule struct {
	id       string
	severity Severity
	names    []string
	check    func(c *winCmd) (Verdict, string)
}

// removers are Remove-Item and its aliases in PowerShell and cmd.
var removers = []string{"remove-item", "rm", "del", "erase", "rd", "rmdir", "ri"}

// winRules is read-only.
var winRules = []winRule{
	{"ps.remove-root", Critical, removers, checkRemoveRoot},
	{"ps.format-volume", Critical, []string{"format-volume", "format"}, checkFormat},
	{"ps.clear-disk", Critical, []string{"clear-disk", "initialize-disk", "remove-partition"}, always("erases a disk or its partitions")},
	{"ps.power", High, []string{"stop-computer", "restart-computer", "shutdown"}, checkWinPower},
	{"ps.diskpart", High, []string{"diskpart"}, always("runs diskpart, which can delete partitions and wipe disks")},
	{"ps.bcdedit", High, []string{"bcdedit"}, checkBcdedit},
	{"ps.reg-delete-system", Critical, append([]string{"reg", "remove-itemproperty", "rp"}, removers...), checkRegDelete},
	{"ps.delete-shadows", High, []string{"vssadmin", "wmic", "wbadmin"}, checkShadows},
	{"ps.clear-eventlog", High, []string{"wevtutil", "clear-eventlog", "remove-eventlog"}, checkEventLog},
	{"ps.cipher-wipe", Medium, []string{"cipher"}, checkCipher},
	{"ps.acl-system", High, []string{"icacls", "takeown"}, checkACL},
	{"ps.stop-remote-access", High, []string{"stop-service", "spsv", "set-service", "net", "disable-psremoting"}, checkWinRemote},
}

func always(what string) func(*winCmd) (Verdict, string) {
	return func(*winCmd) (Verdict, string) { return Dangerous, what }
}

// check runs the operator's rules, the built-in rules, SQL detection and
// nested code on one command.
func (wa *winAnalysis) check(c *winCmd) {
	wa.operatorRules(wa.lang, c.norm, c.snippet)
	if slicesContainFold(c.args, "-whatif") {
		return // a dry run
	}
	for _, r := range winRules {
		for _, n := range r.names {
			if n != c.name {
				continue
			}
			if v, what := r.check(c); v != Safe {
				wa.find(r.id, r.severity, v, what, c.norm, c.snippet)
			}
			break
		}
	}
	if runsSQLClient(append([]word{lit(c.name)}, winWords(c.args)...)) {
		for _, a := range c.args {
			wa.sql(sqlArgument(a), c.norm, c.snippet)
		}
	}
	wa.nestedCode(c)
}

func winWords(args []string) []word {
	out := make([]word, len(args))
	for i, a := range args {
		out[i] = lit(strings.ToLower(a))
	}
	return out
}

// mayBe tests Windows path arguments like word.mayBe does.
func (c *winCmd) mayBe(args []string, pred func(string) bool, bare bool) (Verdict, string) {
	words := make([]word, len(args))
	for i, a := range args {
		words[i] = word{vals: []string{winAbs(a, c.cwd)}, src: c.written(a)}
	}
	return worst(words, pred, "", bare)
}

// written returns how an argument with this value was written.
func (c *winCmd) written(value string) string {
	for i, a := range c.args {
		if a == value && i < len(c.raw) {
			return c.raw[i]
		}
	}
	return strings.ReplaceAll(value, hole, holeDisplay)
}

func checkRemoveRoot(c *winCmd) (Verdict, string) {
	recursive := c.hasParam("recurse") || c.hasSwitch("s")
	for _, a := range c.args {
		if a == "-rf" || a == "-fr" {
			recursive = true
		}
	}
	if !recursive {
		return Safe, ""
	}
	targets := c.operands([]string{"include", "exclude", "filter", "credential", "stream"})
	from, piped := c, ""
	if len(targets) == 0 && c.producer != nil && isLister(c.producer.name) {
		// Get-ChildItem C:\ | Remove-Item -Recurse
		from, piped = c.producer, ", piped from "+c.producer.norm
		targets = from.operands([]string{"include", "exclude", "filter", "depth"})
	}
	v, what := from.mayBe(targets, isWindowsCritical, true)
	if v == Safe {
		return Safe, ""
	}
	return v, "recursive delete of " + what + piped + unresolvedNote(v)
}

func isLister(name string) bool {
	switch name {
	case "get-childitem", "gci", "ls", "dir", "get-item", "gi":
		return true
	}
	return false
}

var driveLetter = regexp.MustCompile(`^[A-Za-z]:\\?$`)

func checkFormat(c *winCmd) (Verdict, string) {
	if c.name == "format-volume" {
		return Dangerous, "formats a volume, erasing it"
	}
	for _, a := range c.operands(nil) {
		if driveLetter.MatchString(a) {
			return Dangerous, "formats drive " + strings.ToUpper(a[:2]) + ", erasing it"
		}
	}
	return Safe, ""
}

func checkWinPower(c *winCmd) (Verdict, string) {
	if c.name != "shutdown" {
		return Dangerous, "shuts the host down or restarts it"
	}
	var letters []string
	for _, a := range c.args {
		letters = append(letters, cmdSwitches(a)...)
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			letters = append(letters, strings.ToLower(a[1:2]))
		}
	}
	if contains(letters, "a") || contains(letters, "?") {
		return Safe, ""
	}
	for _, l := range []string{"s", "r", "p", "g", "h"} {
		if contains(letters, l) {
			return Dangerous, "shuts the host down or restarts it"
		}
	}
	return Safe, ""
}

func checkBcdedit(c *winCmd) (Verdict, string) {
	switch c.arg(0) {
	case "", "/enum", "/v", "/?", "/export", "-enum", "-v":
		return Safe, ""
	}
	return Dangerous, "changes the boot configuration, which can leave the host unbootable"
}

func checkRegDelete(c *winCmd) (Verdict, string) {
	var keys []string
	switch c.name {
	case "reg":
		if c.arg(0) != "delete" || len(c.args) < 2 {
			return Safe, ""
		}
		keys = c.args[1:2]
	default:
		keys = c.operands([]string{"include", "exclude", "filter", "name"})
	}
	v, what := c.mayBe(keys, isCriticalRegistryKey, false)
	if v == Safe {
		return Safe, ""
	}
	return v, "deletes the registry key " + what + ", which Windows needs to boot" + unresolvedNote(v)
}

func checkShadows(c *winCmd) (Verdict, string) {
	switch c.name {
	case "vssadmin":
		if c.arg(0) == "delete" && c.arg(1) == "shadows" {
			return Dangerous, "deletes the volume shadow copies, the host's local backups"
		}
	case "wmic":
		if slicesContainFold(c.args, "shadowcopy") && slicesContainFold(c.args, "delete") {
			return Dangerous, "deletes the volume shadow copies, the host's local backups"
		}
	case "wbadmin":
		if c.arg(0) == "delete" {
			return Dangerous, "deletes Windows backups"
		}
	}
	return Safe, ""
}

func slicesContainFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

func checkEventLog(c *winCmd) (Verdict, string) {
	if c.name == "wevtutil" && c.arg(0) != "cl" && c.arg(0) != "clear-log" {
		return Safe, ""
	}
	return Dangerous, "clears Windows event logs, destroying the audit trail"
}

func checkCipher(c *winCmd) (Verdict, string) {
	for _, a := range c.args {
		if strings.HasPrefix(strings.ToLower(a), "/w") {
			return Dangerous, "overwrites all free space on a volume (cipher /w), making deleted data unrecoverable"
		}
	}
	return Safe, ""
}

func checkACL(c *winCmd) (Verdict, string) {
	var target string
	recursive := false
	switch c.name {
	case "icacls":
		recursive = c.hasSwitch("t")
		if len(c.args) > 0 {
			target = c.args[0]
		}
	case "takeown":
		recursive = c.hasSwitch("r")
		for i, a := range c.args {
			if strings.EqualFold(a, "/f") && i+1 < len(c.args) {
				target = c.args[i+1]
			}
		}
	}
	if !recursive || target == "" {
		return Safe, ""
	}
	v, what := c.mayBe([]string{target}, isWindowsCritical, false)
	if v == Safe {
		return Safe, ""
	}
	return v, "recursively changes ownership or permissions of " + what + unresolvedNote(v)
}

func checkWinRemote(c *winCmd) (Verdict, string) {
	remote := func(s string) bool {
		s = strings.ToLower(s)
		return s == "winrm" || s == "sshd" || s == "termservice"
	}
	switch c.name {
	case "disable-psremoting":
		return Dangerous, "disables PowerShell remoting, cutting off remote access"
	case "net":
		if c.arg(0) == "stop" && remote(c.arg(1)) {
			return Dangerous, "stops a remote-access service, cutting off remote access"
		}
		return Safe, ""
	case "set-service":
		if !slicesContainFold(c.args, "disabled") && !slicesContainFold(c.args, "stopped") {
			return Safe, ""
		}
	}
	for _, a := range c.operands([]string{"startuptype", "status", "computername"}) {
		if remote(a) {
			return Dangerous, "stops a remote-access service, cutting off remote access"
		}
	}
	return Safe, ""
}
