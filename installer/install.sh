#!/bin/sh
# OpsConductor agent installer for Linux (POSIX sh). The control plane
# serves it:
#
#   curl -fsSL https://CONTROL-PLANE/install.sh | sudo sh -s -- \
#     --server https://CONTROL-PLANE --token JOIN-TOKEN --labels role=web,env=prod
#
# It downloads the agent for this OS and architecture from the same
# server and refuses it unless its SHA-256 matches the server's
# SHA256SUMS. Then the downloaded agent installs itself
# (`opsconductor-agent install`): it creates a system user, writes the
# configuration (mode 0600) and a hardened systemd unit, and starts the
# agent, which enrolls with the join token. Run again to upgrade in place (the agent keeps its identity);
# --uninstall removes it (--purge also removes its identity and state).
# Every option has an environment variable for unattended use; --dry-run
# prints each step without doing it.
set -eu

SERVER="${OPSCONDUCTOR_SERVER:-}"
TOKEN="${OPSCONDUCTOR_JOIN_TOKEN:-}"
LABELS="${OPSCONDUCTOR_LABELS:-}"
NAME="${OPSCONDUCTOR_AGENT_NAME:-}"
FINGERPRINT="${OPSCONDUCTOR_SERVER_FINGERPRINT:-}"
ROOT="${OPSCONDUCTOR_INSTALL_ROOT:-/}"
RUN_AS_ROOT=no
case "${OPSCONDUCTOR_RUN_AS_ROOT:-}" in 1 | true | yes) RUN_AS_ROOT=yes ;; esac
unset OPSCONDUCTOR_RUN_AS_ROOT # passed on as --run-as-root
DRY_RUN=no
UNINSTALL=no
PURGE=no

usage() {
	cat <<'EOF'
usage: install.sh --server URL [--token JOIN-TOKEN] [options]
       install.sh --uninstall [--purge] [--root DIR]

  --server URL          the control plane (env OPSCONDUCTOR_SERVER)
  --token TOKEN         join token, needed for the first install (env OPSCONDUCTOR_JOIN_TOKEN)
  --labels k=v,...      labels jobs select on (env OPSCONDUCTOR_LABELS)
  --name NAME           name shown to operators; default the hostname (env OPSCONDUCTOR_AGENT_NAME)
  --server-fingerprint  hex SHA-256 of the server's certificate to pin (env OPSCONDUCTOR_SERVER_FINGERPRINT)
  --run-as-root         run the agent as root, for jobs that need it (default: its own user)
  --root DIR            install under DIR, e.g. an image being built (env OPSCONDUCTOR_INSTALL_ROOT)
  --dry-run             print every step, change nothing
  --uninstall           stop and remove the agent; --purge also removes its identity and state
EOF
}

die() {
	echo "install.sh: $*" >&2
	exit 1
}

say() {
	echo "==> $*"
}

while [ $# -gt 0 ]; do
	case "$1" in
	--server) SERVER="${2:?--server needs a URL}"; shift 2 ;;
	--token) TOKEN="${2:?--token needs a value}"; shift 2 ;;
	--labels) LABELS="${2:?--labels needs k=v,...}"; shift 2 ;;
	--name) NAME="${2:?--name needs a value}"; shift 2 ;;
	--server-fingerprint) FINGERPRINT="${2:?--server-fingerprint needs a value}"; shift 2 ;;
	--root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
	--run-as-root) RUN_AS_ROOT=yes; shift ;;
	--dry-run) DRY_RUN=yes; shift ;;
	--uninstall) UNINSTALL=yes; shift ;;
	--purge) PURGE=yes; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown option: $1" ;;
	esac
done

ROOT="${ROOT%/}"
BIN="$ROOT/usr/local/bin/opsconductor-agent"

# The agent binary writes the configuration and the unit itself
# (`opsconductor-agent install`, the same code for hosts that already have
# the binary); this script finds, downloads and verifies it. The settings
# reach it in the environment, not on a command line others can read.
export OPSCONDUCTOR_SERVER="$SERVER" OPSCONDUCTOR_JOIN_TOKEN="$TOKEN" OPSCONDUCTOR_LABELS="$LABELS" \
	OPSCONDUCTOR_AGENT_NAME="$NAME" OPSCONDUCTOR_SERVER_FINGERPRINT="$FINGERPRINT"
set --
[ -z "$ROOT" ] || set -- "$@" --root "$ROOT"
[ "$DRY_RUN" = no ] || set -- "$@" --dry-run

if [ "$UNINSTALL" = yes ]; then
	[ "$PURGE" = no ] || set -- "$@" --purge
	if [ -x "$BIN" ]; then
		exec "$BIN" uninstall "$@"
	fi
	# No binary left to ask: remove what the unit and configuration were.
	say "no agent binary at $BIN; removing its unit and configuration"
	if [ "$DRY_RUN" = no ]; then
		rm -f "$ROOT/etc/systemd/system/opsconductor-agent.service" "$ROOT/etc/opsconductor-agent/agent.env"
		rmdir "$ROOT/etc/opsconductor-agent" 2>/dev/null || true
		[ "$PURGE" = no ] || rm -rf "$ROOT/var/lib/opsconductor-agent"
	fi
	exit 0
fi

[ -n "$SERVER" ] || { usage >&2; die "--server is required"; }
SERVER="${SERVER%/}"
OPSCONDUCTOR_SERVER="$SERVER"

os="$(uname -s | tr '[:upper:]' '[:lower:]')"
[ "$os" = linux ] || die "this installer is for Linux (this is $os; Windows uses install.ps1)"
case "$(uname -m)" in
x86_64 | amd64) arch=amd64 ;;
aarch64 | arm64) arch=arm64 ;;
*) die "no agent build for $(uname -m)" ;;
esac
file="opsconductor-agent-$os-$arch"

fetch() { # URL DEST
	if command -v curl >/dev/null 2>&1; then
		curl -fsSL --retry 3 -o "$2" "$1"
	elif command -v wget >/dev/null 2>&1; then
		wget -q -O "$2" "$1"
	else
		die "neither curl nor wget is installed"
	fi
}

# The downloaded agent runs from here (to install itself): not /tmp,
# which hardened hosts mount noexec. TMPDIR chooses another place.
tmp="$(mktemp -d "${TMPDIR:-/var/tmp}/opsconductor-install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT INT TERM

say "downloading $file from $SERVER"
fetch "$SERVER/downloads/SHA256SUMS" "$tmp/SHA256SUMS" || die "cannot download $SERVER/downloads/SHA256SUMS"
want="$(awk -v f="$file" '$2 == f || $2 == "*" f { print $1 }' "$tmp/SHA256SUMS")"
[ -n "$want" ] || die "the server offers no $file (see $SERVER/downloads/SHA256SUMS)"
fetch "$SERVER/downloads/$file" "$tmp/$file" || die "cannot download $SERVER/downloads/$file"
got="$(sha256sum "$tmp/$file" | awk '{ print $1 }')"
[ "$got" = "$want" ] || die "checksum mismatch for $file: got $got, the server lists $want; refusing to install it"
say "checksum verified ($got)"
chmod 0755 "$tmp/$file"

[ "$RUN_AS_ROOT" = no ] || set -- "$@" --run-as-root
"$tmp/$file" install "$@"
