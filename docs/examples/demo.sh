#!/usr/bin/env bash
# The demo behind `make demo`: start `opsconductor dev` (embedded store, one
# local agent), apply docs/examples/hello.yaml, run it with --follow, print
# the results, stop everything. Needs only the binaries in bin/.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=./bin/opsconductor
data="$(mktemp -d)"
log="${data}/dev.log"

# Port 0: the kernel picks a free port; dev prints the URL it got.
"$bin" dev --data-dir "$data" --addr "${OPSCONDUCTOR_DEMO_ADDR:-127.0.0.1:0}" >"$log" 2>&1 &
dev_pid=$!
cleanup() {
  kill "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

echo "== starting opsconductor dev"
for _ in $(seq 1 100); do
  url="$(sed -n 's/^OpsConductor dev is ready at \(http[^ ]*\).*/\1/p' "$log")"
  [ -n "$url" ] && break
  if ! kill -0 "$dev_pid" 2>/dev/null; then cat "$log"; echo "opsconductor dev exited" >&2; exit 1; fi
  sleep 0.1
done
[ -n "$url" ] || { cat "$log"; echo "opsconductor dev did not start within 10s" >&2; exit 1; }
export OPSCONDUCTOR_SERVER="$url"
OPSCONDUCTOR_TOKEN="$(cat "${data}/admin-token")"
export OPSCONDUCTOR_TOKEN
echo "   listening on $url (admin token in ${data}/admin-token)"
for _ in $(seq 1 100); do
  if "$bin" agent list 2>/dev/null | grep -q ' online '; then break; fi
  if ! kill -0 "$dev_pid" 2>/dev/null; then cat "$log"; echo "opsconductor dev exited" >&2; exit 1; fi
  sleep 0.1
done
"$bin" agent list
echo
echo "== opsconductor job apply -f docs/examples/hello.yaml"
"$bin" job apply -f docs/examples/hello.yaml
echo
echo "== opsconductor run hello --follow"
"$bin" run hello --follow | tee "${data}/run.out"
exec_id="$(sed -n 's/^execution \([0-9a-f-]*\) of .*/\1/p' "${data}/run.out" | head -1)"
echo
echo "== opsconductor execution results ${exec_id}"
"$bin" execution results "$exec_id"
echo
echo "demo finished: the job ran end to end on the embedded store"
