#!/usr/bin/env bash
# The quick start, tested end to end: `lb demo` (two in-process backends and
# the LB on loopback) and then `./test.sh` against it must pass (exact
# 50/50). Ports are picked by the OS and read from the demo's banner.
#
#   scripts/demo-test.sh            # uses target/debug/lb (LB_BIN to override)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lb_bin=${LB_BIN:-$root/target/debug/lb}
[[ -x $lb_bin ]] || { echo "demo-test: $lb_bin missing; run 'cargo build -p lb'" >&2; exit 1; }

log=$(mktemp)
"$lb_bin" demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 2>"$log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT

# Wait (bounded) for the banner that names the bound ports.
lb_url='' admin_url=''
for _ in $(seq 1 100); do
    if line=$(grep -m1 'roundhouse demo: LB on' "$log"); then
        lb_url=$(sed -E 's/.*LB on (http:\/\/[0-9.:]+).*/\1/' <<<"$line")
        admin_url=$(sed -E 's/.*admin on (http:\/\/[0-9.:]+).*/\1/' <<<"$line")
        break
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "demo-test: lb demo exited" >&2; exit 1; }
    sleep 0.1
done
[[ -n $lb_url ]] || { cat "$log" >&2; echo "demo-test: no banner from lb demo" >&2; exit 1; }

# Readiness through the admin endpoint, with the binary's own probe.
ready=0
for _ in $(seq 1 50); do
    if "$lb_bin" probe "$admin_url/readyz" --timeout 1s 2>/dev/null; then ready=1; break; fi
    sleep 0.1
done
[[ $ready == 1 ]] || { cat "$log" >&2; echo "demo-test: $admin_url/readyz never answered 200" >&2; exit 1; }

echo "demo-test: lb demo at $lb_url; running ./test.sh"
LB_URL=$lb_url "$root/test.sh"

# SIGTERM: exits 0.
kill -TERM "$pid"
if wait "$pid"; then
    echo "demo-test: lb demo exited 0 on SIGTERM"
else
    rc=$?
    cat "$log" >&2
    echo "demo-test: lb demo exited $rc on SIGTERM" >&2
    exit 1
fi
