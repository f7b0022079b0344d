#!/usr/bin/env bash
# bench/access-log-cost.sh — what the access log costs: our LB (`lb serve`)
# in front of the same two backends, with the access log off and with it
# on (JSON lines to a file), in alternating rounds.
#
# What it measures (everything on 127.0.0.1), per round and configuration:
#   - req/s at CONNECTIONS connections (`wrk -tTHREADS -cCONNECTIONS`, GET /host,
#     the fast path);
#   - CPU per request: utime+stime of the lb process (/proc/PID/stat) over
#     the run divided by the requests wrk completed;
#   - with the log on: lines written to the file and
#     roundhouse_access_log_dropped_total at the end.
# Medians over the rounds and the on/off ratios go to stdout (Markdown),
# progress to stderr. Each configuration runs in its own lb process,
# restarted every round, so the file sink starts empty.
#
# Environment:
#   ROUNDS       alternating rounds (default 3)
#   DURATION     seconds per wrk run (default 8)
#   CONNECTIONS  wrk -c (default 64); THREADS wrk -t (default 2)
#   WORKERS      lb --workers (default 2)
#   LB_BIN, BACKEND_BIN  binaries (default: cargo build --release, then target/release/)
#   KEEP_DIR     keep logs, access logs and raw wrk outputs there
#
# Usage: bench/access-log-cost.sh > report.md

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

rounds=${ROUNDS:-3}
duration=${DURATION:-8}
duration=${duration%s}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
workers=${WORKERS:-2}

die() {
    printf 'access-log-cost: error: %s\n' "$*" >&2
    exit 1
}
note() {
    printf '==> %s\n' "$*" >&2
}

for v in rounds duration connections threads workers; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for tool in wrk curl python3 timeout awk sort; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

if [[ -z ${LB_BIN:-} || -z ${BACKEND_BIN:-} ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found and LB_BIN/BACKEND_BIN not set"
    note "building lb and backend (release)"
    (cd "$root" && timeout 3000 cargo build --release -p lb -p backend) >&2 ||
        die "cargo build --release -p lb -p backend failed"
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
lb_bin=${LB_BIN:-$target_dir/release/lb}
backend_bin=${BACKEND_BIN:-$target_dir/release/backend}
[[ -x $lb_bin ]] || die "lb binary not found or not executable: $lb_bin"
[[ -x $backend_bin ]] || die "backend binary not found or not executable: $backend_bin"

if [[ -n ${KEEP_DIR:-} ]]; then
    work=$KEEP_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-access-log-cost.XXXXXX")
fi

pids=()
lb_pid=""

stop_pid() { # pid: TERM, wait up to 5 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    trap - EXIT
    [[ -n $lb_pid ]] && stop_pid "$lb_pid"
    for pid in "${pids[@]}"; do
        stop_pid "$pid"
    done
    if [[ -z ${KEEP_DIR:-} ]]; then
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ok() { # name url pid log: poll (bounded: 15 s) until url answers 2xx
    local i
    for ((i = 0; i < 150; i++)); do
        if curl -fsS --max-time 1 -o /dev/null "$2" 2>/dev/null; then
            return 0
        fi
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    printf '%s did not answer %s within 15 s (or exited); its log:\n' "$1" "$2" >&2
    cat "$4" >&2 || true
    return 1
}

cpu_ticks() { # pid -> utime+stime, in clock ticks
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# parse_wrk file -> "rps requests errors"
parse_wrk() {
    awk '
        / requests in / { req = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(/,/, ""); sock = $4 + $6 + $8 + $10 }
        END { printf "%s %s %d\n", rps + 0, req + 0, non2xx + sock }
    ' "$1"
}

backend_ports=()
for n in 1 2; do
    port=$(free_port)
    backend_ports+=("$port")
    "$backend_bin" --listen "127.0.0.1:$port" --name "backend-$n" >>"$work/backend-$n.log" 2>&1 &
    pids+=("$!")
    wait_ok "backend-$n" "http://127.0.0.1:$port/host" "$!" "$work/backend-$n.log"
done

clk_tck=$(getconf CLK_TCK)
results=$work/results.tsv
: >"$results"

# run config round: one lb process (log off or to a file), one wrk run.
# Appends: config round rps requests errors cpu_us_per_req lines dropped
run() {
    local config=$1 round=$2 port admin log out access=() lines=0 dropped=0
    port=$(free_port)
    admin=$(free_port)
    log=$work/lb-$config-$round.log
    out=$work/wrk-$config-$round.txt
    if [[ $config == file ]]; then
        access=(--access-log "$work/access-$round.log")
    fi
    "$lb_bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --workers "$workers" --backend "127.0.0.1:${backend_ports[0]}" \
        --backend "127.0.0.1:${backend_ports[1]}" "${access[@]}" >"$log" 2>&1 &
    lb_pid=$!
    wait_ok lb "http://127.0.0.1:$admin/readyz" "$lb_pid" "$log"
    # Warm the pools up, then measure.
    timeout 10 wrk -t1 -c"$connections" -d1s "http://127.0.0.1:$port/host" >/dev/null 2>&1 || true
    local t0 t1 rps req errors
    t0=$(cpu_ticks "$lb_pid")
    timeout $((duration + 30)) wrk -t"$threads" -c"$connections" -d"${duration}s" \
        "http://127.0.0.1:$port/host" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
    t1=$(cpu_ticks "$lb_pid")
    read -r rps req errors < <(parse_wrk "$out")
    if [[ $config == file ]]; then
        dropped=$(curl -fsS --max-time 5 "http://127.0.0.1:$admin/metrics" |
            awk '$1 == "roundhouse_access_log_dropped_total" { print $2 }')
    fi
    stop_pid "$lb_pid"
    lb_pid=""
    if [[ $config == file ]]; then
        lines=$(wc -l <"$work/access-$round.log")
    fi
    local cpu_us
    cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" -v n="$req" \
        'BEGIN { printf "%.2f", ((n > 0) ? d / hz * 1e6 / n : 0) }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$config" "$round" "$rps" "$req" \
        "$errors" "$cpu_us" "$lines" "${dropped:-0}" >>"$results"
    note "round $round, log $config: $rps req/s, $cpu_us µs CPU/request, $errors errors"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= rounds; r++)); do
    # Alternate which configuration goes first.
    if ((r % 2)); then
        run off "$r"
        run file "$r"
    else
        run file "$r"
        run off "$r"
    fi
done

median() { # config column -> median of that column over the rounds
    awk -F'\t' -v c="$1" -v k="$2" '$1 == c { print $k }' "$results" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

rps_off=$(median off 3)
rps_on=$(median file 3)
cpu_off=$(median off 6)
cpu_on=$(median file 6)

echo "# Access log cost"
echo
echo "lb \`--workers $workers\`, two release backends, \`wrk -t$threads -c$connections -d${duration}s\` GET /host,"
echo "$rounds alternating rounds; log off vs \`--access-log FILE\` (JSON). Medians."
echo "Load average at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| log | req/s | CPU µs/request |"
echo "| --- | ---: | ---: |"
echo "| off | $rps_off | $cpu_off |"
echo "| file | $rps_on | $cpu_on |"
ratio() { # a b -> a / b with three decimals (0 when b is 0)
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", ((b > 0) ? a / b : 0) }'
}
echo "| file / off | $(ratio "$rps_on" "$rps_off") | $(ratio "$cpu_on" "$cpu_off") |"
echo
echo "Per run (config, round, req/s, requests, errors, CPU µs/request, lines in the file"
echo "(including the 1 s warm-up's requests), dropped):"
echo
echo '```'
cat "$results"
echo '```'
