#!/usr/bin/env bash
# bench/discovery.sh — benchmarks of the Kubernetes discovery source, against
# the in-process fake Kubernetes API server of the integration tests
# (lb/tests/common/fake_api.rs). The benchmarks are the bench target
# lb/benches/discovery.rs; this runs them (release profile, one at a time)
# and prints their Markdown results on stdout (progress and cargo on stderr).
#
#   1. propagation: EndpointSlice change written to the fake API -> first
#      request through the proxy answered by the new backend (and, separately,
#      -> the routing table holding it); 100 alternating changes, in-process LB;
#   2. scale: the real `lb serve --kubernetes` binary with 100 Upstreams and
#      1,000 endpoints, one slice change per second: RSS and CPU from /proc/PID;
#      then request-level propagation through that binary at that scale;
#   3. hot_path: wrk through the real binary, 1 Upstream vs 100 Upstreams
#      (99 that never match the requests), alternating rounds, medians;
#   4. reconnect: the fake API server down for OUTAGE_SECONDS and back: first
#      change after the restart -> first request answered by the new backend.
#
# Everything runs on 127.0.0.x; every wait is bounded; the LB processes are
# children of the benchmark process and are killed when each benchmark ends.
#
# Environment (passed through to the benchmarks):
#   ONLY           run only this benchmark: propagation, scale, hot_path, reconnect or gateway
#   CHANGES        changes in (1) (default 100);  GAP_MS  pause between changes (50)
#   SCALE_SECONDS  length of the 1-change-per-second window in (2) (default 60)
#   SCALE_PROBE_CHANGES  request-level changes through the binary in (2) (50)
#   ROUNDS, DURATION, CONNECTIONS, THREADS, WARMUP   wrk in (3) (3, 10, 32, 2, 2)
#   WORKERS        the LB binary's --workers (default 2)
#   LB_BIN         use this lb binary instead of the one cargo builds
#   KEEP_DIR       keep the LB processes' kubeconfig and log in $TMPDIR
#
# Usage: bench/discovery.sh > report.md
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

die() {
    printf 'discovery: error: %s\n' "$*" >&2
    exit 1
}

only=${ONLY:-}
case $only in
'' | propagation | scale | hot_path | reconnect | gateway) ;;
*) die "ONLY must be propagation, scale, hot_path, reconnect or gateway, got '$only'" ;;
esac
for v in CHANGES GAP_MS SCALE_SECONDS SCALE_PROBE_CHANGES ROUNDS DURATION CONNECTIONS THREADS WARMUP WORKERS; do
    val=${!v:-}
    [[ -z $val || $val =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '$val'"
done

command -v cargo >/dev/null 2>&1 || die "cargo not found"
command -v getconf >/dev/null 2>&1 || die "getconf not found"
if [[ -z $only || $only == hot_path ]] && ! command -v wrk >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "wrk is missing and apt-get is not available"
    printf '==> installing wrk\n' >&2
    timeout 600 apt-get install -y -q wrk >&2 ||
        { timeout 600 apt-get update -q >&2 && timeout 600 apt-get install -y -q wrk >&2; } ||
        die "apt-get install wrk failed"
fi

report=$(mktemp "${TMPDIR:-/tmp}/roundhouse-discovery-report.XXXXXX")
trap 'rm -f "$report"' EXIT

{
    printf 'Machine: %s CPUs (%s), %s; kernel %s; load average at start: %s\n' \
        "$(nproc)" \
        "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" \
        "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)" \
        "$(uname -r)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'Date: %s; %s; wrk: %s\n\n' \
        "$(date -u '+%Y-%m-%d %H:%M UTC')" \
        "$(rustc --version 2>/dev/null || echo rustc ?)" \
        "$( (wrk --version 2>&1 || true) | head -n1)"
} >"$report"

# The benchmark binary: release profile, like the product (fat LTO: slow to link).
cd "$root"
timeout 3000 cargo bench -p lb --bench discovery --no-run >&2 ||
    die "cargo build of the benchmarks failed"

export BENCH_REPORT=$report
# Whole run: about 10 s (1) + 90 s (2) + 70 s (3) + 60 s (4) with the defaults.
timeout 1800 cargo bench -p lb --bench discovery -- ${only:+"$only"} >&2 ||
    die "the benchmarks failed (see above)"

cat "$report"
