package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/opsconductor/opsconductor/agent/hostinstall"
	"github.com/opsconductor/opsconductor/proto/protocol"
)

// subcommands are the verbs besides running the agent (the default).
var subcommands = map[string]func(args []string) error{
	"install":   runInstall,
	"uninstall": runUninstall,
	"status":    runStatus,
	"version": func([]string) error {
		fmt.Printf("opsconductor-agent %s (agent protocol %d)\n", protocol.Version, protocol.AgentProtocolVersion)
		return nil
	},
}

// installFlags are the flags install, uninstall and status share; their
// environment variables are install.sh's.
type installFlags struct {
	fs   *pflag.FlagSet
	opts hostinstall.Options
}

func newInstallFlags(verb string) *installFlags {
	f := &installFlags{fs: pflag.NewFlagSet("opsconductor-agent "+verb, pflag.ContinueOnError)}
	f.fs.StringVar(&f.opts.Root, "root", env("OPSCONDUCTOR_INSTALL_ROOT", ""), "work under DIR, e.g. an image being built (env OPSCONDUCTOR_INSTALL_ROOT)")
	f.fs.BoolVar(&f.opts.DryRun, "dry-run", false, "print every step, change nothing")
	return f
}

func (f *installFlags) installer(args []string) (*hostinstall.Installer, error) {
	if err := f.fs.Parse(args); err != nil {
		return nil, err
	}
	if f.fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", f.fs.Arg(0))
	}
	if runtime.GOOS != "linux" {
		return nil, fmt.Errorf("%s works with systemd on Linux; on Windows use install.ps1 from the control plane", f.fs.Name())
	}
	return hostinstall.New(f.opts)
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// runInstall installs this binary as the agent service, or upgrades it.
func runInstall(args []string) error {
	f := newInstallFlags("install")
	c := &f.opts.Config
	f.fs.StringVar(&c.Server, "server", env("OPSCONDUCTOR_SERVER", ""), "the control plane URL (env OPSCONDUCTOR_SERVER)")
	f.fs.StringVar(&c.JoinToken, "token", env("OPSCONDUCTOR_JOIN_TOKEN", ""), "join token, needed for the first install (env OPSCONDUCTOR_JOIN_TOKEN)")
	f.fs.StringVar(&c.Labels, "labels", env("OPSCONDUCTOR_LABELS", ""), "labels jobs select on, k=v,... (env OPSCONDUCTOR_LABELS)")
	f.fs.StringVar(&c.Name, "name", env("OPSCONDUCTOR_AGENT_NAME", ""), "name shown to operators; default the hostname (env OPSCONDUCTOR_AGENT_NAME)")
	f.fs.StringVar(&c.Fingerprint, "server-fingerprint", env("OPSCONDUCTOR_SERVER_FINGERPRINT", ""), "hex SHA-256 of the server's certificate to pin (env OPSCONDUCTOR_SERVER_FINGERPRINT)")
	f.fs.BoolVar(&f.opts.RunAsRoot, "run-as-root", envBool("OPSCONDUCTOR_RUN_AS_ROOT"), "run the agent as root, for jobs that need it (env OPSCONDUCTOR_RUN_AS_ROOT)")
	f.fs.BoolVar(&f.opts.Reconfigure, "reconfigure", false, "rewrite an existing configuration from these flags (the identity stays)")
	in, err := f.installer(args)
	if err != nil {
		return err
	}
	if _, err := ParseLabels(c.Labels); err != nil {
		return fmt.Errorf("--labels: %w", err)
	}
	ctx, stop := signalContext()
	defer stop()
	return in.Install(ctx)
}

// runUninstall stops and removes the agent service.
func runUninstall(args []string) error {
	f := newInstallFlags("uninstall")
	f.fs.BoolVar(&f.opts.Purge, "purge", false, "also remove the agent's identity, state and user")
	in, err := f.installer(args)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	return in.Uninstall(ctx)
}

// errNotInstalled makes status exit non-zero when there is no agent.
var errNotInstalled = errors.New("the agent is not installed")

// runStatus prints what is installed, whether it runs and its agent id.
func runStatus(args []string) error {
	in, err := newInstallFlags("status").installer(args)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	s := in.Status(ctx)
	s.Print(os.Stdout)
	if !s.Installed {
		return errNotInstalled
	}
	return nil
}
