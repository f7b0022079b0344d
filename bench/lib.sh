# bench/lib.sh — helpers shared by the bench scripts (sourced, not run).
# shellcheck shell=bash

# bench_workdir NAME: a temporary directory in $work, and an EXIT trap that
# stops every process in $pids (SIGTERM, then waits) and removes it.
bench_workdir() {
    # shellcheck disable=SC2034 # used by the scripts that source this
    work=$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
bench_cleanup() {
    local p
    trap - EXIT
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
# start_backends BIN: two backends (BIN) on free loopback ports -> b1, b2
# (their pids in $pids, output in $work/backend.log).
start_backends() {
    local b
    b1=127.0.0.1:$(free_port)
    b2=127.0.0.1:$(free_port)
    for b in "$b1" "$b2"; do
        "$1" --listen "$b" --name "backend-${b##*:}" >>"$work/backend.log" 2>&1 &
        pids+=("$!")
        wait_ok "http://$b/host" "$!" || die "backend $b did not start"
    done
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ok() { # url pid: bounded (15 s)
    local i
    for ((i = 0; i < 150; i++)); do
        curl -fsS --max-time 1 -o /dev/null "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
cpu_ticks() { # pids... -> utime+stime summed, in clock ticks
    local p
    for p; do [[ -r /proc/$p/stat ]] && cat "/proc/$p/stat"; done |
        awk '{ sub(/.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}
# parse_wrk file -> "rps p99_us requests errors" (errors: non-2xx + socket errors)
parse_wrk() {
    awk '
        function us(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v + 0 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v * 1000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000000 }
            return v + 0
        }
        $1 == "99%" { p99 = us($2) }
        / requests in / { req = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %d\n", rps + 0, p99 + 0, req + 0, err }
    ' "$1"
}
