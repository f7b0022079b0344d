#!/usr/bin/env bash
# bench/route-cost.sh — what routing costs per request, in user-space
# instructions counted by callgrind (deterministic: the same binary and load
# give the same count to well under 1 %; see /work/shared/PERFORMANCE-NOTES.md
# for the method).
#
# Each configuration: the LB with one worker under
# `valgrind --tool=callgrind`, two release backends, readiness awaited on the
# admin port's /readyz, then `wrk -t1 -c4 -dDURATION` of
# `GET /host` with `Host: r0.example.com` (HTTP/1.1 keep-alive: the fast
# path), then SIGTERM. Instructions per request = the callgrind total ÷ the
# requests wrk completed (start-up and shutdown are counted too: under 1 % of
# the total at these request counts).
#
# Configurations:
#   LB_BINS      space-separated NAME=PATH of `lb` binaries, each run as
#                `lb serve --backend B1 --backend B2 --workers 1` (the
#                Upstream case; e.g. main's binary and this branch's)
#   SHAPES       shapes of the route_cost example (lb/examples/route_cost.rs):
#                upstream upstream-host route routes5 many many-one-host
#                (default: all)
#   WALL_ROUNDS  also this many wall-clock rounds (default 0: none): the
#                shapes in WALL_SHAPES (default `route many`) alternating, each
#                without valgrind under `wrk -t1 -c64 -dWALL_DURATION` (5 s);
#                the table gives each shape's median req/s and its ratio to
#                the first shape's, round by round (the issue's "req/s with
#                1,000 routes within 5 % of one route")
# Environment: DURATION (default 15 s), EXAMPLE_BIN, BACKEND_BIN (default:
# built with `cargo build --release -p backend -p lb --example route_cost`
# into $CARGO_TARGET_DIR or target/), KEEP_DIR (keep callgrind files, logs).
#
# Usage: LB_BINS="main=/tmp/lb-main branch=target/release/lb" bench/route-cost.sh > report.md
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
duration=${DURATION:-15}
shapes=${SHAPES:-upstream upstream-host route routes5 many many-one-host}
die() { printf 'route-cost: error: %s\n' "$*" >&2; exit 1; }
note() { printf '==> %s\n' "$*" >&2; }
[[ $duration =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer, got '$duration'"
for tool in valgrind wrk curl python3 timeout awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

target_dir=${CARGO_TARGET_DIR:-$root/target}
if [[ -z ${EXAMPLE_BIN:-} || -z ${BACKEND_BIN:-} ]]; then
    note "building backend and the route_cost example (release)"
    (cd "$root" && timeout 3600 cargo build --release -p backend -p lb --example route_cost) >&2 ||
        die "release build failed"
fi
example_bin=${EXAMPLE_BIN:-$target_dir/release/examples/route_cost}
backend_bin=${BACKEND_BIN:-$target_dir/release/backend}
for x in "$example_bin" "$backend_bin"; do [[ -x $x ]] || die "not executable: $x"; done

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_workdir route-cost
if [[ -n ${KEEP_DIR:-} ]]; then
    mkdir -p "$KEEP_DIR"
    out_dir=$KEEP_DIR
else
    out_dir=$work
fi
start_backends "$backend_bin"

# wait_ready URL PID: like wait_ok, but 120 s (valgrind starts slowly).
wait_ready() {
    local i
    for ((i = 0; i < 1200; i++)); do
        curl -fsS --max-time 1 -o /dev/null "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# measure NAME KIND BIN [SHAPE]: one configuration (KIND `serve`: `lb serve`
# with the two backends; `example`: the route_cost example with SHAPE);
# prints "NAME requests instructions".
measure() {
    local name=$1 kind=$2 bin=$3 shape=${4:-} port admin pid cg wrk_out req total
    port=127.0.0.1:$(free_port)
    admin=127.0.0.1:$(free_port)
    cg=$out_dir/callgrind.$name.out
    local cmd=("$bin" serve --listen "$port" --admin-listen "$admin" --backend "$b1" --backend "$b2" --workers 1)
    [[ $kind == example ]] && cmd=("$bin" "$shape" "$port" "$admin" "$b1" "$b2")
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$cg" "${cmd[@]}" >"$out_dir/lb-$name.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_ready "http://$admin/readyz" "$pid" || die "$name did not start (see $out_dir/lb-$name.log)"
    wrk_out=$out_dir/wrk-$name.out
    timeout $((duration + 60)) wrk -t1 -c4 "-d${duration}s" -H 'Host: r0.example.com' \
        "http://$port/host" >"$wrk_out" 2>&1 || die "wrk failed against $name"
    if grep -q 'Non-2xx' "$wrk_out"; then die "$name answered non-2xx: $(cat "$wrk_out")"; fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    req=$(awk '/ requests in / { print $1 }' "$wrk_out")
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$cg")
    [[ -n $req && -n $total ]] || die "no count for $name"
    echo "$name $req $total"
}

# wall SHAPE: one wall-clock run of the route_cost example; prints req/s.
wall() {
    local shape=$1 port admin pid out
    port=127.0.0.1:$(free_port)
    admin=127.0.0.1:$(free_port)
    out=$out_dir/wall-$shape.out
    RUST_LOG=warn "$example_bin" "$shape" "$port" "$admin" "$b1" "$b2" >"$out_dir/lb-wall-$shape.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_ready "http://$admin/readyz" "$pid" || die "$shape did not start (see $out_dir/lb-wall-$shape.log)"
    timeout $((wall_duration + 60)) wrk -t1 -c64 "-d${wall_duration}s" -H 'Host: r0.example.com' \
        "http://$port/host" >"$out" 2>&1 || die "wrk failed against $shape"
    if grep -q 'Non-2xx' "$out"; then die "$shape answered non-2xx: $(cat "$out")"; fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    awk '/^Requests\/sec:/ { print $2 }' "$out"
}

wall_rounds=${WALL_ROUNDS:-0}
wall_duration=${WALL_DURATION:-5}
wall_shapes=${WALL_SHAPES:-route many}
[[ $wall_rounds =~ ^[0-9]+$ ]] || die "WALL_ROUNDS must be a number, got '$wall_rounds'"
[[ $wall_duration =~ ^[1-9][0-9]*$ ]] || die "WALL_DURATION must be a positive integer, got '$wall_duration'"

results=$work/results
: >"$results"
for spec in ${LB_BINS:-}; do
    name=${spec%%=*}
    bin=${spec#*=}
    [[ -x $bin ]] || die "not executable: $bin"
    note "lb serve: $name ($bin)"
    measure "serve-$name" serve "$bin" >>"$results"
done
for shape in $shapes; do
    note "route_cost $shape"
    measure "$shape" example "$example_bin" "$shape" >>"$results"
done

if [[ -s $results ]]; then
    echo "| configuration | requests | instructions | instructions / request | vs \`upstream\` |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    awk '
        { name[NR] = $1; req[NR] = $2; ins[NR] = $3; per[NR] = $3 / $2; if ($1 == "upstream") base = per[NR] }
        END {
            for (i = 1; i <= NR; i++) {
                rel = base ? sprintf("%+.2f %%", (per[i] / base - 1) * 100) : "-"
                printf "| %s | %d | %.0f | %.0f | %s |\n", name[i], req[i], ins[i], per[i], rel
            }
        }
    ' "$results"
fi

if ((wall_rounds > 0)); then
    walls=$work/walls
    : >"$walls"
    for ((r = 1; r <= wall_rounds; r++)); do
        for shape in $wall_shapes; do
            note "wall clock round $r: $shape"
            echo "$r $shape $(wall "$shape")" >>"$walls"
        done
    done
    echo
    echo "Wall clock: \`wrk -t1 -c64 -d${wall_duration}s\`, $wall_rounds alternating rounds, one worker."
    echo
    echo "| shape | req/s per round | median | vs \`${wall_shapes%% *}\` (median of per-round ratios) |"
    echo "| --- | --- | ---: | ---: |"
    awk -v first="${wall_shapes%% *}" '
        function median(a, n,   i, j, t) {
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        { v[$2, $1] = $3; if (!($2 in seen)) { seen[$2] = 1; order[++k] = $2 } if ($1 > rounds) rounds = $1 }
        END {
            for (s = 1; s <= k; s++) {
                name = order[s]; list = ""
                for (r = 1; r <= rounds; r++) { x[r] = v[name, r]; y[r] = v[name, r] / v[first, r]; list = list (r > 1 ? ", " : "") sprintf("%.0f", x[r]) }
                printf "| %s | %s | %.0f | %.3f× |\n", name, list, median(x, rounds), median(y, rounds)
            }
        }
    ' "$walls"
fi
