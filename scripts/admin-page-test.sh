#!/usr/bin/env bash
# scripts/admin-page-test.sh — the admin page (GET / on --admin-listen) in a
# real browser: headless Chromium (Debian's `chromium` package) against the
# real `lb serve` binary with two real backend binaries on 127.0.0.1.
#
# Starts the backends and the LB on ports the OS picks (read from their JSON
# "listening"/"started" log lines), then runs tests/browser/admin_page.py,
# which sends a bounded, throttled load through the LB, waits in the live
# page for two bars near 50 % each, kills one backend and waits, in the same
# page, for it to be shown as ejected (DOM polled with deadlines; no fixed
# sleep is used to synchronise); then checks for CSP violations, the tables
# with JavaScript off, and names made of markup fed to the page's script.
# About 10 s; bounded by `timeout 90`.
#
#   scripts/admin-page-test.sh [--screenshot FILE]
#
# Environment:
#   LB_BIN       lb binary (default: target/debug/lb)
#   BACKEND_BIN  backend binary (default: target/debug/backend)
#   CHROMIUM     browser (default: chromium; scripts/ci/install.sh installs it)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lb_bin=${LB_BIN:-$root/target/debug/lb}
backend_bin=${BACKEND_BIN:-$root/target/debug/backend}
chromium=${CHROMIUM:-chromium}
screenshot=()
case ${1:-} in
    --screenshot)
        (($# == 2)) || { echo "usage: $0 [--screenshot FILE]" >&2; exit 2; }
        screenshot=(--screenshot "$2")
        ;;
    '') ;;
    *) echo "usage: $0 [--screenshot FILE]" >&2; exit 2 ;;
esac

for bin in "$lb_bin" "$backend_bin"; do
    [[ -x $bin ]] || { echo "admin-page-test: $bin missing; run 'cargo build -p lb -p backend'" >&2; exit 1; }
done
command -v "$chromium" >/dev/null 2>&1 ||
    { echo "admin-page-test: $chromium not found; apt-get install chromium (scripts/ci/install.sh)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/admin-page-test.XXXXXX")
pids=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do { wait "$pid"; } 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# wait_log FILE PATTERN FIELD PID -> prints the JSON string FIELD of the first
# line matching PATTERN (bounded: 10 s).
wait_log() {
    local file=$1 pattern=$2 field=$3 pid=$4 i value
    for ((i = 0; i < 100; i++)); do
        value=$(grep -m1 "$pattern" "$file" 2>/dev/null | grep -o "\"$field\":\"[^\"]*\"" | head -n 1 | cut -d'"' -f4) || true
        [[ -n $value ]] && { echo "$value"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "admin-page-test: no '$pattern' line with $field in $file:" >&2
    cat "$file" >&2
    return 1
}

addrs=()
for name in backend-1 backend-2; do
    "$backend_bin" --listen 127.0.0.1:0 --name "$name" --drain-seconds 0 --log-format json \
        >"$work/$name.log" 2>&1 &
    pids+=("$!")
    addrs+=("$(wait_log "$work/$name.log" listening addr "$!")")
done
victim_pid=${pids[1]}
disown "$victim_pid" # killed on purpose below: no "Killed" job report

"$lb_bin" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --backend "${addrs[0]}" --backend "${addrs[1]}" \
    --eject-after 3 --ejection-time 30s --log-format json >"$work/lb.log" 2>&1 &
lb_pid=$!
pids+=("$lb_pid")
lb_addr=$(wait_log "$work/lb.log" "roundhouse lb started" listen "$lb_pid")
admin_addr=$(wait_log "$work/lb.log" "roundhouse lb started" admin "$lb_pid")

ready=0
for ((i = 0; i < 100; i++)); do
    if curl -fsS --max-time 1 -o /dev/null "http://$admin_addr/readyz" 2>/dev/null; then ready=1; break; fi
    sleep 0.1
done
((ready)) || { echo "admin-page-test: lb never ready; log:" >&2; cat "$work/lb.log" >&2; exit 1; }
echo "admin-page-test: lb http://$lb_addr, admin http://$admin_addr, backends ${addrs[*]}"

rc=0
timeout 90 python3 "$root/tests/browser/admin_page.py" \
    --admin "http://$admin_addr" --lb "http://$lb_addr" --kill-pid "$victim_pid" \
    --chromium "$chromium" --load-seconds 45 "${screenshot[@]}" || rc=$?
if ((rc != 0)); then
    echo "admin-page-test: FAIL (exit $rc); lb log tail:" >&2
    tail -n 20 "$work/lb.log" >&2
fi
exit "$rc"
