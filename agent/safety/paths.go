package safety

import (
	"path"
	"regexp"
	"strings"
)

// The tables below are read-only: they describe Unix and Windows layouts.

// criticalDirs are the Unix directories whose recursive delete, move or
// ownership change breaks a host. Deeper paths (/var/tmp/x, /usr/local/app)
// are not critical; /var/log is handled by the log rules.
var criticalDirs = []string{
	"/", "/bin", "/boot", "/boot/efi", "/dev", "/etc", "/home", "/lib", "/lib32",
	"/lib64", "/libx32", "/opt", "/proc", "/root", "/run", "/sbin", "/srv",
	"/sys", "/usr", "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib64",
	"/usr/libexec", "/usr/local", "/usr/sbin", "/usr/share", "/var", "/var/lib",
}

// criticalFiles are single files whose loss or truncation locks everyone out
// or stops the host from booting.
var criticalFiles = map[string]bool{
	"/etc/passwd": true, "/etc/shadow": true, "/etc/group": true,
	"/etc/gshadow": true, "/etc/sudoers": true, "/etc/fstab": true,
}

// systemLogs are the logs that record who did what; wiping them destroys
// the audit trail. Rotated application logs are not in the list.
var systemLogs = []string{
	"syslog", "messages", "auth.log", "secure", "kern.log", "daemon.log",
	"wtmp", "btmp", "lastlog", "faillog", "audit.log", "audit", "journal",
}

// logDirs are the directories systemLogs live in.
var logDirs = map[string]bool{"/var/log": true, "/var/log/audit": true, "/var/log/journal": true}

// historyFiles are shell history files (their base names).
var historyFiles = map[string]bool{
	".bash_history": true, ".zsh_history": true, ".sh_history": true,
	".history": true, ".ash_history": true, ".mksh_history": true,
	".histfile": true, "fish_history": true,
}

// harmlessDevices are /dev entries that are not disks: writing to them
// loses nothing.
var harmlessDevices = map[string]bool{
	"null": true, "zero": true, "full": true, "random": true, "urandom": true,
	"stdin": true, "stdout": true, "stderr": true, "tty": true, "console": true,
	"ptmx": true, "kmsg": true, "log": true,
}

// harmlessDevicePrefixes are /dev subtrees that are not disks.
var harmlessDevicePrefixes = []string{"tty", "pts/", "fd/", "shm/", "mqueue/", "tcp/", "udp/", "hugepages"}

func hasGlob(s string) bool { return strings.ContainsAny(s, "*?[") }

// globsEverything reports whether a path element is a glob that matches
// every entry of a directory: *, .*, *.*, ?*.
func globsEverything(base string) bool {
	return hasGlob(base) && strings.Trim(base, "*?.") == ""
}

// cleanUnix cleans an absolute path, keeping glob characters.
func cleanUnix(p string) string {
	if !strings.HasPrefix(p, "/") {
		return p
	}
	return path.Clean(p)
}

// isHomeDir reports whether p names a whole home directory (~, ~user, ~/,
// ~/*), as opposed to something in it (~/.cache).
func isHomeDir(p string) bool {
	if !strings.HasPrefix(p, "~") {
		return false
	}
	i := strings.IndexByte(p, '/')
	if i < 0 {
		return true
	}
	rest := path.Clean(p[i:])
	return rest == "/" || globsEverything(rest[1:])
}

// isCriticalPath reports whether p is /, a home directory or a system
// directory, or a glob that matches one or all of its entries (/*, /e*,
// /usr/*). p is absolute, ~-relative, or relative (never critical).
func isCriticalPath(p string) bool {
	if isHomeDir(p) {
		return true
	}
	if !strings.HasPrefix(p, "/") {
		return false
	}
	p = path.Clean(p)
	if matchesCriticalDir(p) {
		return true
	}
	dir, base := path.Split(p)
	return globsEverything(base) && matchesCriticalDir(path.Clean(dir))
}

func matchesCriticalDir(p string) bool {
	for _, d := range criticalDirs {
		if p == d {
			return true
		}
		if hasGlob(p) {
			if ok, _ := path.Match(p, d); ok {
				return true
			}
		}
	}
	return false
}

// isCriticalFile reports whether p is one of criticalFiles.
func isCriticalFile(p string) bool {
	return strings.HasPrefix(p, "/") && criticalFiles[path.Clean(p)]
}

// isDevice reports whether p is under /dev and not a harmless pseudo
// device: writing to it may overwrite a disk.
func isDevice(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	p = path.Clean(p)
	rest, ok := strings.CutPrefix(p, "/dev/")
	if !ok || rest == "" {
		return false
	}
	if harmlessDevices[rest] {
		return false
	}
	for _, pre := range harmlessDevicePrefixes {
		if strings.HasPrefix(rest, pre) {
			return false
		}
	}
	return true
}

// isSystemLog reports whether p is /var/log itself, a system log in it,
// or a glob matching those.
func isSystemLog(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	p = path.Clean(p)
	if p == "/var/log" {
		return true
	}
	dir, base := path.Split(p)
	if !logDirs[path.Clean(dir)] {
		return false
	}
	if globsEverything(base) {
		return true
	}
	for _, l := range systemLogs {
		if base == l {
			return true
		}
		if ok, _ := path.Match(base, l); ok && hasGlob(base) {
			return true
		}
	}
	return false
}

// isHistoryFile reports whether p is a shell history file.
func isHistoryFile(p string) bool {
	return historyFiles[path.Base(p)]
}

// Windows paths.

// windowsSystemDirs are, without their drive letter and lowercased, the
// Windows directories whose recursive delete breaks the host.
var windowsSystemDirs = map[string]bool{
	`\windows`: true, `\windows\system32`: true, `\windows\syswow64`: true,
	`\program files`: true, `\program files (x86)`: true, `\programdata`: true,
	`\users`: true, `\boot`: true, `\system volume information`: true,
}

var drivePrefix = regexp.MustCompile(`^[a-z]:`)

// cleanWindows lowercases p, uses backslashes, drops a PowerShell
// FileSystem provider prefix, repeated separators and a trailing \, \* or
// \*.* (the contents of a directory count as the directory).
func cleanWindows(p string) string {
	p = strings.ToLower(strings.ReplaceAll(p, "/", `\`))
	if i := strings.Index(p, "filesystem::"); i >= 0 {
		p = p[i+len("filesystem::"):]
	}
	for strings.Contains(p, `\\`) {
		p = strings.ReplaceAll(p, `\\`, `\`)
	}
	for {
		trimmed := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(p, `\*.*`), `\*`), `\`)
		if trimmed == p {
			return p
		}
		p = trimmed
	}
}

// isWindowsCritical reports whether p is a drive root (C:\, C:, \), the
// user profile (~) or a Windows system directory, or their contents.
func isWindowsCritical(p string) bool {
	if p == "" {
		return false
	}
	c := cleanWindows(p)
	switch {
	case c == "~":
		return true
	case drivePrefix.MatchString(c):
		c = c[2:]
		if c == "" || c == "*" || c == "*.*" {
			return true
		}
	case c == "":
		// \ or \*: the root of the current drive.
		return true
	}
	return windowsSystemDirs[c]
}

// isCriticalRegistryKey reports whether key is HKLM itself, anything under
// HKLM\SYSTEM, or the SOFTWARE, SAM or SECURITY hives, in reg.exe spelling
// (HKLM\..., HKEY_LOCAL_MACHINE\...) or PowerShell's (HKLM:\...,
// Registry::HKEY_LOCAL_MACHINE\...).
func isCriticalRegistryKey(key string) bool {
	k := strings.ToLower(strings.ReplaceAll(key, "/", `\`))
	k = strings.TrimPrefix(k, "microsoft.powershell.core\\")
	k = strings.TrimPrefix(k, "registry::")
	k = strings.Replace(k, "hkey_local_machine", "hklm", 1)
	k = strings.Replace(k, "hklm:", "hklm", 1)
	k = strings.TrimRight(strings.TrimSuffix(k, `\*`), `\`)
	switch {
	case k == "hklm", k == `hklm\system`, strings.HasPrefix(k, `hklm\system\`):
		return true
	case k == `hklm\software`, k == `hklm\sam`, k == `hklm\security`:
		return true
	}
	return false
}
