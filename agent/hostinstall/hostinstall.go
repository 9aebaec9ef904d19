// Package hostinstall puts the agent on a Linux host as a systemd
// service and takes it off again: the binary, its configuration (an
// environment file, mode 0600), a hardened unit, a system user and the
// state directory. `opsconductor-agent install|uninstall|status` run it
// on hosts that already have the binary; installer/install.sh downloads
// and verifies the binary, then runs the same `install`, so both write
// the same files.
//
// Every step is printed before it is done; with DryRun it is only
// printed. With Root set, the files go under that directory (an image
// being built, or a test) and no user is created or removed: the image's
// own tooling owns its users.
package hostinstall

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"
)

// ServiceName is the systemd unit the agent runs as.
const ServiceName = "opsconductor-agent.service"

// UserName is the system user the agent runs as unless RunAsRoot.
const UserName = "opsconductor-agent"

//go:embed opsconductor-agent.service
var unitTemplate string

var unitTmpl = template.Must(template.New("unit").Parse(unitTemplate))

// Paths are where the agent's files live on the host: the absolute paths
// the unit and the configuration name, whatever Root the files are
// written under.
type Paths struct {
	Bin      string // the agent binary
	ConfDir  string // the configuration directory
	EnvFile  string // the configuration: KEY=VALUE lines the unit loads
	Unit     string // the systemd unit
	StateDir string // identity, key and task journal
}

// DefaultPaths are the paths on a Linux host.
var DefaultPaths = Paths{
	Bin:      "/usr/local/bin/opsconductor-agent",
	ConfDir:  "/etc/opsconductor-agent",
	EnvFile:  "/etc/opsconductor-agent/agent.env",
	Unit:     "/etc/systemd/system/" + ServiceName,
	StateDir: "/var/lib/opsconductor-agent",
}

// Config is what an install writes into the configuration.
type Config struct {
	Server      string // control plane URL
	JoinToken   string // needed for the first install only
	Labels      string // k=v,k2=v2
	Name        string // shown to operators; empty: the hostname
	Fingerprint string // hex SHA-256 of the server certificate to pin
}

// Options are an install's or uninstall's settings.
type Options struct {
	Root      string // write under this directory; "" or "/" is the host itself
	Config    Config
	RunAsRoot bool   // run the agent as root (no user, looser hardening)
	Binary    string // the binary to install; empty: this process's own
	DryRun    bool   // print the steps, change nothing
	Purge     bool   // uninstall: also remove the identity, state and user
	// Reconfigure rewrites an existing configuration from Config (the
	// identity stays); without it a re-run keeps the configuration.
	Reconfigure bool
	// EnrollWait is how long Install waits for the agent to enroll on the
	// host itself (0: 30 s); under Root it does not wait.
	EnrollWait time.Duration
	Out        io.Writer // where the steps are printed; nil: os.Stdout
}

// Installer does the steps of Options. Its zero value is not usable:
// build it with New.
type Installer struct {
	opts  Options
	paths Paths // under Root
	out   io.Writer
}

// New checks opts and returns the installer for them.
func New(opts Options) (*Installer, error) {
	root := strings.TrimSuffix(opts.Root, "/")
	if root != "" && !filepath.IsAbs(root) {
		abs, err := filepath.Abs(root)
		if err != nil {
			return nil, fmt.Errorf("--root: %w", err)
		}
		root = abs
	}
	opts.Root = root
	if err := opts.Config.validate(); err != nil {
		return nil, err
	}
	out := opts.Out
	if out == nil {
		out = os.Stdout
	}
	under := func(p string) string { return filepath.Join("/", root, p) }
	return &Installer{opts: opts, out: out, paths: Paths{
		Bin: under(DefaultPaths.Bin), ConfDir: under(DefaultPaths.ConfDir), EnvFile: under(DefaultPaths.EnvFile),
		Unit: under(DefaultPaths.Unit), StateDir: under(DefaultPaths.StateDir),
	}}, nil
}

// onHost reports whether the install is on the running system (not under
// a Root), where users are created and the agent is waited for.
func (in *Installer) onHost() bool { return in.opts.Root == "" }

// validate refuses values the environment file cannot hold: one line
// each, no quotes or backslashes (systemd would interpret them).
func (c Config) validate() error {
	for _, f := range []struct{ flag, value string }{
		{"--server", c.Server}, {"--token", c.JoinToken}, {"--labels", c.Labels}, {"--name", c.Name}, {"--server-fingerprint", c.Fingerprint},
	} {
		if strings.ContainsAny(f.value, "\"'\\\r\n\x00") {
			return fmt.Errorf("%s: quotes, backslashes and line breaks are not allowed", f.flag)
		}
	}
	if c.Server != "" && !strings.HasPrefix(c.Server, "http://") && !strings.HasPrefix(c.Server, "https://") {
		return fmt.Errorf("--server %q: want an http:// or https:// URL", c.Server)
	}
	if c.Fingerprint != "" && len(c.Fingerprint) != 64 {
		return fmt.Errorf("--server-fingerprint: want the 64 hex digits of a SHA-256")
	}
	return nil
}

// EnvFile renders the configuration the unit loads.
func EnvFile(c Config) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# The OpsConductor agent's configuration (opsconductor-agent --help lists every variable).\n")
	fmt.Fprintf(&b, "OPSCONDUCTOR_SERVER=%s\n", strings.TrimSuffix(c.Server, "/"))
	fmt.Fprintf(&b, "OPSCONDUCTOR_JOIN_TOKEN=%s\n", c.JoinToken)
	fmt.Fprintf(&b, "OPSCONDUCTOR_LABELS=%s\n", c.Labels)
	fmt.Fprintf(&b, "OPSCONDUCTOR_STATE_DIR=%s\n", DefaultPaths.StateDir)
	if c.Name != "" {
		fmt.Fprintf(&b, "OPSCONDUCTOR_AGENT_NAME=%s\n", c.Name)
	}
	if c.Fingerprint != "" {
		fmt.Fprintf(&b, "OPSCONDUCTOR_SERVER_FINGERPRINT=%s\n", strings.ToLower(c.Fingerprint))
	}
	return b.Bytes()
}

// Unit renders the systemd unit, naming the host paths.
func Unit(runAsRoot bool) []byte {
	var b bytes.Buffer
	err := unitTmpl.Execute(&b, struct {
		Paths
		User      string
		RunAsRoot bool
	}{DefaultPaths, UserName, runAsRoot})
	if err != nil {
		panic(fmt.Sprintf("render the agent unit: %v", err)) // the template is ours and fixed
	}
	return b.Bytes()
}

func (in *Installer) say(format string, args ...any) {
	fmt.Fprintf(in.out, "==> "+format+"\n", args...)
}

// do prints a step and, unless DryRun, does it.
func (in *Installer) do(what string, f func() error) error {
	if in.opts.DryRun {
		fmt.Fprintf(in.out, "    would %s\n", what)
		return nil
	}
	if err := f(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// command runs name with args as a step.
func (in *Installer) command(ctx context.Context, name string, args ...string) error {
	return in.do("run "+name+" "+strings.Join(args, " "), func() error {
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, bytes.TrimSpace(out))
		}
		return nil
	})
}

func haveSystemctl() bool {
	_, err := exec.LookPath("systemctl")
	return err == nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// writeFile writes body to path through a new temporary file (created
// 0600, so a secret is never readable by others on the way), synced,
// then renamed: a crash or power loss leaves the old file or the new one,
// never half of one.
func writeFile(path string, body []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the rename there is nothing left to remove
	if _, err := f.Write(body); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Install installs or upgrades the agent. A re-run upgrades in place:
// the binary and unit are replaced, the configuration and the identity
// stay (unless Reconfigure), and the service is restarted.
func (in *Installer) Install(ctx context.Context) error {
	p := in.paths
	src := in.opts.Binary
	if src == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find this binary to install it: %w", err)
		}
		src = self
	}
	// An upgrade keeps a configuration the agent has enrolled with. One
	// it has not (the first install failed, or the token was wrong) is
	// rewritten when a token is given: a re-run is how to fix it.
	_, idErr := AgentID(p.StateDir)
	enrolled := idErr == nil
	upgrade := exists(p.EnvFile)
	writeConfig := !upgrade || in.opts.Reconfigure || (!enrolled && in.opts.Config.JoinToken != "")
	if writeConfig && in.opts.Config.Server == "" {
		return errors.New("--server is required for the first install")
	}
	if !upgrade && in.opts.Config.JoinToken == "" {
		return errors.New("--token is required for the first install (a join token: opsconductor agent token create)")
	}
	// An agent installed to run as root stays so on an upgrade that does
	// not say (a self-upgrade job, say); --reconfigure decides anew.
	if !in.opts.RunAsRoot && !in.opts.Reconfigure && runsAsRoot(p.Unit) {
		in.say("keeping the agent running as root (installed with --run-as-root; --reconfigure without it changes that)")
		in.opts.RunAsRoot = true
	}

	if in.onHost() && !in.opts.RunAsRoot {
		if err := in.ensureUser(ctx); err != nil {
			return err
		}
	}
	in.say("installing the agent at %s", p.Bin)
	if err := in.do("create "+strings.Join([]string{filepath.Dir(p.Bin), p.ConfDir, p.StateDir, filepath.Dir(p.Unit)}, " "), func() error {
		for _, d := range []string{filepath.Dir(p.Bin), p.ConfDir, filepath.Dir(p.Unit)} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		return os.MkdirAll(p.StateDir, 0o700)
	}); err != nil {
		return err
	}
	if err := in.do("copy "+src+" to "+p.Bin, func() error { return copyBinary(src, p.Bin) }); err != nil {
		return err
	}
	if err := in.do("restrict "+p.StateDir+" to the agent (0700)", func() error {
		if err := os.Chmod(p.StateDir, 0o700); err != nil {
			return err
		}
		if in.onHost() && !in.opts.RunAsRoot {
			return chownToUser(ctx, p.StateDir)
		}
		return nil
	}); err != nil {
		return err
	}

	if writeConfig {
		in.say("writing the configuration to %s (mode 0600)", p.EnvFile)
		if err := in.do("write "+p.EnvFile, func() error { return writeFile(p.EnvFile, EnvFile(in.opts.Config), 0o600) }); err != nil {
			return err
		}
	} else {
		in.say("keeping the configuration in %s (upgrade; --reconfigure rewrites it)", p.EnvFile)
	}
	upgrade = upgrade && enrolled
	in.say("writing the systemd unit %s", p.Unit)
	if err := in.do("write "+p.Unit, func() error { return writeFile(p.Unit, Unit(in.opts.RunAsRoot), 0o644) }); err != nil {
		return err
	}

	if !haveSystemctl() {
		in.say("no systemctl here: start %s with the environment in %s", DefaultPaths.Bin, DefaultPaths.EnvFile)
		return nil
	}
	if !in.onHost() {
		// An image being built: enable the unit in it (offline); the
		// running system's systemd is not this one's business.
		in.say("enabling the agent in %s (it starts with that system)", in.opts.Root)
		return in.command(ctx, "systemctl", "--root="+in.opts.Root, "enable", ServiceName)
	}
	if err := in.command(ctx, "systemctl", "daemon-reload"); err != nil {
		return err
	}
	// Enabled either way: a first install that failed before it was
	// enabled is finished by the re-run.
	if err := in.command(ctx, "systemctl", "enable", ServiceName); err != nil {
		return err
	}
	if upgrade {
		in.say("restarting the agent (upgrade: it keeps its identity)")
	} else {
		in.say("starting the agent")
	}
	if err := in.command(ctx, "systemctl", "restart", ServiceName); err != nil {
		return err
	}
	if in.opts.DryRun {
		return nil
	}
	return in.waitEnrolled(ctx)
}

// waitEnrolled waits for the agent to write its identity, which it does
// once the control plane has accepted its join token, and prints its id.
func (in *Installer) waitEnrolled(ctx context.Context) error {
	wait := in.opts.EnrollWait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if id, err := AgentID(in.paths.StateDir); err == nil {
			in.say("agent enrolled: %s", id)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	in.say("installed; the agent has not enrolled yet: journalctl -u %s", ServiceName)
	return nil
}

// runsAsRoot reports whether the unit at path was written for an agent
// running as root (it has no User= line).
func runsAsRoot(path string) bool {
	raw, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "User=") {
			return false
		}
	}
	return true
}

// AgentID reads the id the agent was given when it enrolled.
func AgentID(stateDir string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(stateDir, "identity.json"))
	if err != nil {
		return "", err
	}
	var id struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(raw, &id); err != nil {
		return "", fmt.Errorf("%s: %w", filepath.Join(stateDir, "identity.json"), err)
	}
	return id.AgentID, nil
}

// copyBinary installs src at dst through a temporary file and a rename:
// the running agent keeps its old file until it restarts. Copying a binary
// onto itself is a no-op.
func copyBinary(src, dst string) error {
	if a, err := os.Stat(src); err == nil {
		if b, err := os.Stat(dst); err == nil && os.SameFile(a, b) {
			return nil
		}
	}
	body, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeFile(dst, body, 0o755)
}

func (in *Installer) ensureUser(ctx context.Context) error {
	if exec.CommandContext(ctx, "id", UserName).Run() == nil {
		return nil
	}
	in.say("creating the system user %s", UserName)
	return in.command(ctx, "useradd", "--system", "--no-create-home", "--home-dir", DefaultPaths.StateDir,
		"--shell", "/usr/sbin/nologin", UserName)
}

func chownToUser(ctx context.Context, path string) error {
	out, err := exec.CommandContext(ctx, "chown", "-R", UserName+":", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("chown %s: %w: %s", path, err, bytes.TrimSpace(out))
	}
	return nil
}

// Uninstall stops the agent and removes its binary, unit and
// configuration; with Purge also its identity, state and user.
func (in *Installer) Uninstall(ctx context.Context) error {
	p := in.paths
	in.say("stopping and removing the agent")
	if haveSystemctl() && exists(p.Unit) {
		args := []string{"disable", "--now", ServiceName}
		if !in.onHost() {
			args = []string{"--root=" + in.opts.Root, "disable", ServiceName} // the image's, not this system's
		}
		// A unit that is not loaded cannot be disabled: not an error here.
		if err := in.command(ctx, "systemctl", args...); err != nil {
			fmt.Fprintf(in.out, "    (ignored: %v)\n", err)
		}
	}
	for _, f := range []string{p.Unit, p.EnvFile, p.Bin} {
		if err := in.do("remove "+f, func() error { return removeFile(f) }); err != nil {
			return err
		}
	}
	if err := in.do("remove "+p.ConfDir+" if empty", func() error { return removeEmptyDir(p.ConfDir) }); err != nil {
		return err
	}
	if in.opts.Purge {
		in.say("removing its identity and state (%s)", p.StateDir)
		if err := in.do("remove "+p.StateDir, func() error { return os.RemoveAll(p.StateDir) }); err != nil {
			return err
		}
		if in.onHost() && exec.CommandContext(ctx, "id", UserName).Run() == nil {
			if err := in.command(ctx, "userdel", UserName); err != nil {
				return err
			}
		}
	}
	if haveSystemctl() && in.onHost() {
		if err := in.command(ctx, "systemctl", "daemon-reload"); err != nil {
			fmt.Fprintf(in.out, "    (ignored: %v)\n", err)
		}
	}
	in.say("uninstalled")
	return nil
}

func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func removeEmptyDir(path string) error {
	entries, err := os.ReadDir(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		return nil // files an operator put there are theirs
	}
	return os.Remove(path)
}

// Status is what is installed and whether it runs.
type Status struct {
	Installed bool   // the binary is at its path
	Version   string // what the installed binary says of itself
	Unit      bool   // the unit file exists
	Active    string // systemctl is-active; "" without systemctl
	Server    string // from the configuration
	AgentID   string // "" until the agent has enrolled
}

// Status reports what is installed under the installer's root.
func (in *Installer) Status(ctx context.Context) Status {
	p := in.paths
	var s Status
	s.Installed = exists(p.Bin)
	if s.Installed {
		if out, err := exec.CommandContext(ctx, p.Bin, "version").Output(); err == nil {
			s.Version = strings.TrimSpace(string(out))
		}
	}
	s.Unit = exists(p.Unit)
	if raw, err := os.ReadFile(p.EnvFile); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "OPSCONDUCTOR_SERVER="); ok {
				s.Server = strings.TrimSpace(v)
			}
		}
	}
	s.AgentID, _ = AgentID(p.StateDir)
	if s.Unit && haveSystemctl() && in.onHost() {
		out, _ := exec.CommandContext(ctx, "systemctl", "is-active", ServiceName).Output()
		s.Active = strings.TrimSpace(string(out))
	}
	return s
}

// Print writes s for an operator.
func (s Status) Print(w io.Writer) {
	binary, unit, active, server, id := "not installed", "none", s.Active, s.Server, s.AgentID
	if s.Installed {
		version := s.Version
		if version == "" {
			version = "version unknown"
		}
		binary = DefaultPaths.Bin + " (" + version + ")"
	}
	if s.Unit {
		unit = DefaultPaths.Unit
	}
	if active == "" {
		active = "unknown (no systemctl, or not on this host)"
	}
	if server == "" {
		server = "not configured"
	}
	if id == "" {
		id = "not enrolled yet"
	}
	fmt.Fprintf(w, "binary:   %s\nunit:     %s\nservice:  %s\nserver:   %s\nagent id: %s\n", binary, unit, active, server, id)
}
