// Command opsconductor is the control plane (`opsconductor server`), a
// single-node playground (`opsconductor dev`) and the operator CLI
// (`opsconductor job apply`, `opsconductor run`, ...). `opsconductor --help`
// lists everything.
package main

import (
	"os"

	"github.com/opsconductor/opsconductor/controlplane/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
