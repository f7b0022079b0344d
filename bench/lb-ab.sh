#!/usr/bin/env bash
# bench/lb-ab.sh — two lb binaries (A: before, B: after a change) side by side
# in front of the SAME two backends, in one run: both started once (warmed
# up), then wrk at 64 connections against A and B alternately, the order
# flipping each round. Reports medians of req/s, p99 and CPU per request
# (utime+stime of each lb over its runs ÷ requests), and B / A.
#
# Environment:
#   A_BIN, B_BIN   the two lb binaries (required)
#   BACKEND_BIN    backend binary (default target/release/backend)
#   ROUNDS         alternating rounds (default 5); DURATION seconds each (6)
#   CONNECTIONS    wrk -c (default 64); WORKERS each lb's --workers (2)
# Usage: A_BIN=/tmp/lb-before B_BIN=target/release/lb bench/lb-ab.sh > report.md
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
a_bin=${A_BIN:?A_BIN: the "before" lb binary}
b_bin=${B_BIN:?B_BIN: the "after" lb binary}
backend_bin=${BACKEND_BIN:-$root/target/release/backend}
rounds=${ROUNDS:-5}
duration=${DURATION:-6}
conns=${CONNECTIONS:-64}
workers=${WORKERS:-2}
die() { printf 'lb-ab: error: %s\n' "$*" >&2; exit 1; }
note() { printf '==> %s\n' "$*" >&2; }
for v in rounds duration conns workers; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for x in "$a_bin" "$b_bin" "$backend_bin"; do [[ -x $x ]] || die "not executable: $x"; done
for tool in curl python3 wrk getconf timeout; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_workdir lb-ab
clk_tck=$(getconf CLK_TCK)

start_backends "$backend_bin"
declare -A port pid
for t in A B; do
    bin=$a_bin; [[ $t == B ]] && bin=$b_bin
    port[$t]=$(free_port)
    RUST_LOG=warn "$bin" serve --listen "127.0.0.1:${port[$t]}" --admin-listen "127.0.0.1:$(free_port)" \
        --backend "$b1" --backend "$b2" --workers "$workers" >>"$work/lb-$t.log" 2>&1 &
    pid[$t]=$!
    pids+=("$!")
    wait_ok "http://127.0.0.1:${port[$t]}/host" "${pid[$t]}" || die "lb $t did not start (see $work)"
    timeout 30 wrk -t2 "-c$conns" -d2s "http://127.0.0.1:${port[$t]}/host" >/dev/null 2>&1 || die "warm-up of $t failed"
done

results=$work/results.tsv
: >"$results"
for ((r = 1; r <= rounds; r++)); do
    order="A B"; ((r % 2)) || order="B A"
    for t in $order; do
        out=$work/wrk-$t-$r.out
        c0=$(cpu_ticks "${pid[$t]}")
        timeout $((duration + 20)) wrk -t2 "-c$conns" "-d${duration}s" --latency "http://127.0.0.1:${port[$t]}/host" >"$out" 2>&1 ||
            die "wrk failed against $t: $(tail -n 3 "$out")"
        c1=$(cpu_ticks "${pid[$t]}")
        read -r rps p99 req err < <(parse_wrk "$out")
        ((req > 0)) || die "no requests completed against $t"
        cpu=$(awk -v d=$((c1 - c0)) -v hz="$clk_tck" -v n="$req" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$r" "$rps" "$p99" "$err" "$cpu" >>"$results"
        note "$(printf '%s round %s: %s req/s, p99 %s us, %s errors, CPU %s us/req' "$t" "$r" "$rps" "$p99" "$err" "$cpu")"
    done
done

med() { # target column -> median
    awk -F'\t' -v t="$1" -v c="$2" '$1 == t { print $c }' "$results" | sort -g |
        awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
echo "## lb A/B: $(basename "$a_bin") (A) vs $(basename "$b_bin") (B)"
echo
echo "wrk -t2 -c$conns -d${duration}s, $rounds alternating rounds (medians); both lbs --workers $workers, same two backends."
echo
echo "| | req/s | p99 (µs) | CPU µs/req | errors |"
echo "|---|---|---|---|---|"
for t in A B; do
    errs=$(awk -F'\t' -v t="$t" '$1 == t { e += $5 } END { print e + 0 }' "$results")
    echo "| $t | $(med "$t" 3) | $(med "$t" 4) | $(med "$t" 6) | $errs |"
done
echo "| B / A | $(ratio "$(med B 3)" "$(med A 3)") | $(ratio "$(med B 4)" "$(med A 4)") | $(ratio "$(med B 6)" "$(med A 6)") | |"
