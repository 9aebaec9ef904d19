#!/bin/sh
# OpsConductor agent installer for Linux (POSIX sh). The control plane
# serves it:
#
#   curl -fsSL https://CONTROL-PLANE/install.sh | sudo sh -s -- \
#     --server https://CONTROL-PLANE --token JOIN-TOKEN --labels role=web,env=prod
#
# It downloads the agent for this OS and architecture from the same
# server, refuses it unless its SHA-256 matches the server's SHA256SUMS,
# creates a system user, writes the configuration (mode 0600) and a
# hardened systemd unit, and starts the agent, which enrolls with the join
# token. Run again to upgrade in place (the agent keeps its identity);
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
RUN_AS_ROOT="${OPSCONDUCTOR_RUN_AS_ROOT:-no}"
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

# run prints a step and, unless --dry-run, does it.
run() {
	if [ "$DRY_RUN" = yes ]; then
		echo "    would run: $*"
		return 0
	fi
	"$@"
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
CONF_DIR="$ROOT/etc/opsconductor-agent"
ENV_FILE="$CONF_DIR/agent.env"
UNIT="$ROOT/etc/systemd/system/opsconductor-agent.service"
STATE_DIR="$ROOT/var/lib/opsconductor-agent"
USER_NAME=opsconductor-agent

# A system user is created on the real system only: under --root the
# image's own tooling owns its users.
on_host() {
	[ -z "$ROOT" ]
}

if [ "$UNINSTALL" = yes ]; then
	say "stopping and removing the agent"
	if command -v systemctl >/dev/null 2>&1; then
		run systemctl disable --now opsconductor-agent.service || true
	fi
	run rm -f "$BIN" "$UNIT" "$ENV_FILE"
	run rmdir "$CONF_DIR" 2>/dev/null || true
	if [ "$PURGE" = yes ]; then
		say "removing its identity and state ($STATE_DIR)"
		run rm -rf "$STATE_DIR"
		if on_host && id "$USER_NAME" >/dev/null 2>&1; then
			run userdel "$USER_NAME"
		fi
	fi
	if command -v systemctl >/dev/null 2>&1; then
		run systemctl daemon-reload || true
	fi
	say "uninstalled"
	exit 0
fi

[ -n "$SERVER" ] || { usage >&2; die "--server is required"; }
SERVER="${SERVER%/}"

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

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT INT TERM

say "downloading $file from $SERVER"
fetch "$SERVER/downloads/SHA256SUMS" "$tmp/SHA256SUMS" || die "cannot download $SERVER/downloads/SHA256SUMS"
want="$(awk -v f="$file" '$2 == f || $2 == "*" f { print $1 }' "$tmp/SHA256SUMS")"
[ -n "$want" ] || die "the server offers no $file (see $SERVER/downloads/SHA256SUMS)"
fetch "$SERVER/downloads/$file" "$tmp/$file" || die "cannot download $SERVER/downloads/$file"
got="$(sha256sum "$tmp/$file" | awk '{ print $1 }')"
[ "$got" = "$want" ] || die "checksum mismatch for $file: got $got, the server lists $want; refusing to install it"
say "checksum verified ($got)"

upgrade=no
[ -f "$BIN" ] && upgrade=yes

if on_host && [ "$RUN_AS_ROOT" != yes ] && ! id "$USER_NAME" >/dev/null 2>&1; then
	say "creating the system user $USER_NAME"
	run useradd --system --no-create-home --home-dir /var/lib/opsconductor-agent --shell /usr/sbin/nologin "$USER_NAME"
fi

say "installing the agent at $BIN"
run mkdir -p "$(dirname "$BIN")" "$CONF_DIR" "$STATE_DIR" "$(dirname "$UNIT")"
run install -m 0755 "$tmp/$file" "$BIN.new"
run mv -f "$BIN.new" "$BIN"
run chmod 0700 "$STATE_DIR"
if on_host && [ "$RUN_AS_ROOT" != yes ]; then
	run chown "$USER_NAME" "$STATE_DIR"
fi

if [ "$upgrade" = yes ] && [ -f "$ENV_FILE" ]; then
	say "keeping the configuration in $ENV_FILE (upgrade)"
else
	[ -n "$TOKEN" ] || die "--token is required for the first install (a join token: opsconductor agent token create)"
	say "writing the configuration to $ENV_FILE (mode 0600)"
	if [ "$DRY_RUN" = no ]; then
		umask 077
		{
			echo "OPSCONDUCTOR_SERVER=$SERVER"
			echo "OPSCONDUCTOR_JOIN_TOKEN=$TOKEN"
			echo "OPSCONDUCTOR_LABELS=$LABELS"
			echo "OPSCONDUCTOR_STATE_DIR=/var/lib/opsconductor-agent"
			[ -z "$NAME" ] || echo "OPSCONDUCTOR_AGENT_NAME=$NAME"
			[ -z "$FINGERPRINT" ] || echo "OPSCONDUCTOR_SERVER_FINGERPRINT=$FINGERPRINT"
		} >"$ENV_FILE.new"
		chmod 0600 "$ENV_FILE.new"
		mv -f "$ENV_FILE.new" "$ENV_FILE"
	fi
fi

say "writing the systemd unit $UNIT"
user_line="User=$USER_NAME"
[ "$RUN_AS_ROOT" = yes ] && user_line="# runs as root (--run-as-root)"
if [ "$DRY_RUN" = no ]; then
	cat >"$UNIT" <<EOF
[Unit]
Description=OpsConductor agent
Documentation=https://github.com/opsconductor/opsconductor
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
$user_line
EnvironmentFile=/etc/opsconductor-agent/agent.env
ExecStart=/usr/local/bin/opsconductor-agent
Restart=on-failure
RestartSec=5s
# Hardening. Jobs that must change the system need more: install with
# --run-as-root and loosen ProtectSystem (see docs/operations.md).
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=full
ProtectHome=read-only
ReadWritePaths=/var/lib/opsconductor-agent
StateDirectory=opsconductor-agent
StateDirectoryMode=0700

[Install]
WantedBy=multi-user.target
EOF
fi

if command -v systemctl >/dev/null 2>&1; then
	run systemctl daemon-reload
	if [ "$upgrade" = yes ]; then
		say "restarting the agent (upgrade: it keeps its identity)"
		run systemctl restart opsconductor-agent.service
	else
		say "starting the agent"
		run systemctl enable --now opsconductor-agent.service
	fi
else
	say "no systemctl here: start $BIN with the environment in $ENV_FILE"
	exit 0
fi

if [ "$DRY_RUN" = yes ] || ! on_host; then
	exit 0 # under --root the agent starts with the system it is installed in
fi
# The agent writes its identity once it has enrolled.
i=0
while [ $i -lt 30 ]; do
	if [ -f "$STATE_DIR/identity.json" ]; then
		id="$(sed -n 's/.*"agent_id": *"\([^"]*\)".*/\1/p' "$STATE_DIR/identity.json")"
		say "agent enrolled: ${id:-see $STATE_DIR/identity.json}"
		exit 0
	fi
	i=$((i + 1))
	sleep 1
done
say "installed; the agent has not enrolled yet: journalctl -u opsconductor-agent"
