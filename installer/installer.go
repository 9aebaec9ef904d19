// Package installer holds the agent installers the control plane serves
// (GET /install.sh, GET /install.ps1): a host needs only the server's
// address and a join token. The scripts download the agent binary for
// their OS and architecture from the same server (/downloads/, built by
// `make dist`) and refuse it unless its SHA-256 matches SHA256SUMS.
package installer

import _ "embed"

// Shell is installer/install.sh (Linux, POSIX sh).
//
//go:embed install.sh
var Shell []byte

// PowerShell is installer/install.ps1 (Windows).
//
//go:embed install.ps1
var PowerShell []byte
