#!/usr/bin/env bash
# bench/backend-vs-flask.sh — requests/s of our backend on GET /host next to
# the original exercise's Flask app (Werkzeug development server, the way the
# original ran it: `python3 app.py`), measured in the same run with wrk.
#
# Rounds alternate the order (backend first in odd rounds, Flask first in even
# ones) and the table reports medians over the rounds. Everything runs on
# 127.0.0.1, every step is bounded in time, and the servers started here are
# stopped on exit.
#
# Environment:
#   DURATION      wrk duration per measurement, seconds ("10" or "10s"; default 10s)
#   ROUNDS        number of alternating rounds (default 3)
#   CONNECTIONS   wrk -c (default 64)
#   THREADS       wrk -t (default 2)
#   WARMUP        warm-up seconds per server before the rounds (default 2; 0 = none)
#   BACKEND_BIN   backend binary to use (default: build target/release/backend)
#   FLASK_PYTHON  python with flask importable (default: python3 if it has flask,
#                 else a venv at $FLASK_VENV, created with pip if missing)
#   FLASK_VENV    venv for flask (default /tmp/roundhouse-flask-venv)
#   KEEP_DIR      if set, raw wrk outputs and server logs are kept there

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

duration=${DURATION:-10s}
duration=${duration%s}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
warmup=${WARMUP:-2}
flask_venv=${FLASK_VENV:-/tmp/roundhouse-flask-venv}

die() {
    printf 'backend-vs-flask: error: %s\n' "$*" >&2
    exit 1
}
note() {
    printf '==> %s\n' "$*" >&2
}

for v in duration rounds connections threads; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ $warmup =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer, got '$warmup'"

command -v wrk >/dev/null 2>&1 || die "wrk is not installed (Debian: apt-get install wrk)"
command -v curl >/dev/null 2>&1 || die "curl is not installed (Debian: apt-get install curl)"
command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is not installed"

if [[ -n ${KEEP_DIR:-} ]]; then
    work=$KEEP_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-bench.XXXXXX")
fi

pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -z ${KEEP_DIR:-} ]]; then
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the two servers -----------------------------------------------------------
if [[ -n ${BACKEND_BIN:-} ]]; then
    backend_bin=$BACKEND_BIN
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found and BACKEND_BIN not set"
    note "building the backend (release)"
    (cd "$root" && timeout 1800 cargo build --release -p backend) >&2 ||
        die "cargo build --release -p backend failed"
    backend_bin=$root/target/release/backend
fi
[[ -x $backend_bin ]] || die "backend binary not found or not executable: $backend_bin"

if [[ -n ${FLASK_PYTHON:-} ]]; then
    flask_python=$FLASK_PYTHON
elif python3 -c 'import flask' >/dev/null 2>&1; then
    flask_python=$(command -v python3)
else
    if ! "$flask_venv/bin/python" -c 'import flask' >/dev/null 2>&1; then
        note "installing flask into $flask_venv"
        python3 -m venv "$flask_venv" || die "cannot create a venv at $flask_venv"
        timeout 600 "$flask_venv/bin/pip" install --quiet --disable-pip-version-check flask >&2 ||
            die "pip install flask failed"
    fi
    flask_python=$flask_venv/bin/python
fi
"$flask_python" -c 'import flask' >/dev/null 2>&1 || die "$flask_python cannot import flask"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() { # name url log
    local i
    for ((i = 0; i < 150; i++)); do
        if curl -fsS --max-time 1 -o /dev/null "$2" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    printf '%s did not answer %s within 15 s; its log:\n' "$1" "$2" >&2
    cat "$3" >&2 || true
    return 1
}

server_name=$(hostname 2>/dev/null || echo roundhouse)
backend_port=$(free_port)
"$backend_bin" --listen "127.0.0.1:$backend_port" --name "$server_name" --drain-seconds 0 \
    >"$work/backend.log" 2>&1 &
pids+=("$!")
flask_port=$(free_port)
FLASK_PORT=$flask_port "$flask_python" "$here/flask_app.py" >"$work/flask.log" 2>&1 &
pids+=("$!")

backend_url=http://127.0.0.1:$backend_port/host
flask_url=http://127.0.0.1:$flask_port/host
wait_ready backend "$backend_url" "$work/backend.log" || die "backend did not start"
wait_ready flask "$flask_url" "$work/flask.log" || die "flask app did not start"

flask_version=$("$flask_python" -c 'import importlib.metadata as m; print("Flask", m.version("flask"), "/ Werkzeug", m.version("werkzeug"))')
python_version=$("$flask_python" -c 'import platform; print("Python", platform.python_version())')

# --- measuring -------------------------------------------------------------------
run_wrk() { # seconds url outfile
    timeout $(($1 + 30)) wrk -t"$threads" -c"$connections" -d"$1s" --timeout 5s --latency "$2" >"$3" 2>&1 ||
        die "wrk against $2 failed: $(cat "$3")"
}

# Prints "req_per_s p50_ms p99_ms errors non2xx" for one wrk output.
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return v + 0
        }
        /^Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Socket errors:/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { sub(/,/, "", $i); err += $i }
        }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        END {
            if (rps == "") exit 1
            printf "%s %.3f %.3f %d %d\n", rps, p50, p99, err, non2xx
        }
    ' "$1"
}

median() {
    printf '%s\n' "$@" | LC_ALL=C sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]
            else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

if ((warmup > 0)); then
    note "warming up both servers (${warmup}s each)"
    run_wrk "$warmup" "$backend_url" "$work/warmup-backend.txt"
    run_wrk "$warmup" "$flask_url" "$work/warmup-flask.txt"
fi

declare -a b_rps b_p50 b_p99 f_rps f_p50 f_p99
b_err=0
f_err=0
measure() { # server round
    local url out r
    if [[ $1 == backend ]]; then url=$backend_url; else url=$flask_url; fi
    out=$work/round$2-$1.txt
    note "round $2/$rounds: $1 (wrk -t$threads -c$connections -d${duration}s --latency $url)"
    run_wrk "$duration" "$url" "$out"
    r=$(parse_wrk "$out") || die "cannot parse wrk output: $(cat "$out")"
    read -r rps p50 p99 err non2xx <<<"$r"
    printf '    %s req/s, p50 %s ms, p99 %s ms, socket errors %s, non-2xx %s\n' \
        "$rps" "$p50" "$p99" "$err" "$non2xx" >&2
    if [[ $1 == backend ]]; then
        b_rps+=("$rps") b_p50+=("$p50") b_p99+=("$p99")
        b_err=$((b_err + err + non2xx))
    else
        f_rps+=("$rps") f_p50+=("$p50") f_p99+=("$p99")
        f_err=$((f_err + err + non2xx))
    fi
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
for ((round = 1; round <= rounds; round++)); do
    if ((round % 2)); then
        measure backend "$round"
        measure flask "$round"
    else
        measure flask "$round"
        measure backend "$round"
    fi
done

# --- report ------------------------------------------------------------------------
bm_rps=$(median "${b_rps[@]}")
bm_p50=$(median "${b_p50[@]}")
bm_p99=$(median "${b_p99[@]}")
fm_rps=$(median "${f_rps[@]}")
fm_p50=$(median "${f_p50[@]}")
fm_p99=$(median "${f_p99[@]}")
ratio=$(awk -v b="$bm_rps" -v f="$fm_rps" 'BEGIN { if (f > 0) printf "%.1f", b / f; else print "n/a" }')

fmt_rps() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
fmt_ms() { awk -v v="$1" 'BEGIN { if (v < 10) printf "%.2f", v; else printf "%.1f", v }'; }
join_rps() {
    local out='' v
    for v in "$@"; do out+="${out:+, }$(fmt_rps "$v")"; done
    printf '%s' "$out"
}

cat <<EOF

Backend vs Flask: GET /host, wrk -t$threads -c$connections -d${duration}s --latency, $rounds alternating rounds, medians
date: $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc 2>/dev/null || echo '?') cores, $(uname -sm); load before: $load_before
backend: $backend_bin; flask: $flask_version, $python_version (Werkzeug development server, threaded)

| server | req/s (median) | p50 latency | p99 latency | req/s per round | errors |
| --- | ---: | ---: | ---: | --- | ---: |
| backend (axum, release) | $(fmt_rps "$bm_rps") | $(fmt_ms "$bm_p50") ms | $(fmt_ms "$bm_p99") ms | $(join_rps "${b_rps[@]}") | $b_err |
| Flask app.py (Werkzeug dev server) | $(fmt_rps "$fm_rps") | $(fmt_ms "$fm_p50") ms | $(fmt_ms "$fm_p99") ms | $(join_rps "${f_rps[@]}") | $f_err |

ratio backend/flask (median req/s): ${ratio}x
EOF
if ((b_err + f_err > 0)); then
    printf '\nnote: errors = wrk socket errors (connect/read/write/timeout) plus non-2xx answers, summed over the rounds;\n      requests that timed out (wrk --timeout 5s) are not in the latency percentiles.\n'
fi
if [[ -n ${KEEP_DIR:-} ]]; then
    printf '\nraw wrk outputs and server logs: %s\n' "$work"
fi
