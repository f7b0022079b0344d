#!/usr/bin/env bash
# bench/lb-vs-nginx.sh — our load balancer (`lb serve`) next to nginx, the
# original design's balancer, in ONE run and in front of the SAME two backends.
#
# What it measures (medians over alternating rounds; everything on 127.0.0.1):
#   1. req/s, p50 and p99 at 64 connections (`wrk -t2 -c64 --latency`) for
#      nginx, our LB and one backend called directly (the ceiling); the same
#      again with wrk pinned to CPU 1 (`taskset -c 1 wrk ...`);
#   2. at 1 connection (`wrk -t1 -c1`): p50 added over calling a backend directly;
#   3. RSS (VmRSS; nginx = master + workers) idle before any load and peak
#      during the 64-connection runs (sampled every 0.25 s);
#   4. CPU per request: utime+stime of the proxy process(es) over a
#      64-connection run divided by the requests wrk completed;
#   5. kill test: a 10 s load at 64 connections against each proxy, one backend
#      killed with SIGKILL after ~3 s (restarted before the next proxy's run);
#      errors = wrk's "Non-2xx or 3xx responses" + socket errors.
# The report (Markdown) goes to stdout, progress to stderr.
#
# nginx is tuned fairly: worker_processes = our LB's workers, access_log off,
# upstream keepalive 64, proxy_http_version 1.1, Connection "",
# keepalive_requests 100000 (bench/nginx/proxy.conf.tmpl). It runs as a
# non-daemon from a temp prefix: no system configuration is read or touched.
#
# Environment:
#   BACKENDS        axum (default: two target/release/backend) or nginx (two tiny
#                   nginx `return 200 "backend-N\n"` servers, 1 worker each)
#   ROUNDS          alternating rounds at 64 connections (default 5)
#   PINNED_ROUNDS   rounds with `taskset -c 1 wrk` (default ROUNDS; 0 = skip)
#   ONE_CONN_ROUNDS rounds at 1 connection (default 3; 0 = skip)
#   DURATION        seconds per wrk run (default 8)
#   CONNECTIONS     wrk -c for the main runs (default 64); THREADS wrk -t (default 2)
#   WORKERS         our LB's --workers and nginx's worker_processes (default 2)
#   KILL_DURATION   seconds of the kill-test load (default 10; 0 = skip the test)
#   KILL_AFTER      seconds into it when the backend is killed (default 3)
#   WARMUP          seconds of warm-up per target before the rounds (default 2)
#   LB_BIN, BACKEND_BIN  binaries (default: cargo build --release, then target/release/)
#   NGINX_FORWARDING  minimal (default: nginx as the original design, which adds
#                   no forwarding headers) or same (nginx also keeps the client's
#                   Host and sets X-Forwarded-For/-Proto/-Host and Via on the
#                   request and Via on the response, as our LB does)
#   NGINX_BIN       nginx binary (default: nginx on PATH; installed with apt-get if missing)
#   KEEP_DIR        keep configs, logs and raw wrk outputs there
#
# Usage: bench/lb-vs-nginx.sh > report.md
#        BACKENDS=nginx bench/lb-vs-nginx.sh > report-nginx-backends.md

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

backends_kind=${BACKENDS:-axum}
rounds=${ROUNDS:-5}
pinned_rounds=${PINNED_ROUNDS:-$rounds}
one_rounds=${ONE_CONN_ROUNDS:-3}
duration=${DURATION:-8}
duration=${duration%s}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
workers=${WORKERS:-2}
kill_duration=${KILL_DURATION:-10}
nginx_forwarding=${NGINX_FORWARDING:-minimal}
# shellcheck disable=SC2016 # nginx variables, not shell ones
case $nginx_forwarding in
    minimal) forwarding_directives='' ;;
    same) forwarding_directives='proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; proxy_set_header Via "1.1 nginx"; add_header Via "1.1 nginx" always;' ;;
    *) echo "NGINX_FORWARDING must be minimal or same, not '$nginx_forwarding'" >&2; exit 2 ;;
esac
kill_duration=${kill_duration%s}
kill_after=${KILL_AFTER:-3}
warmup=${WARMUP:-2}

die() {
    printf 'lb-vs-nginx: error: %s\n' "$*" >&2
    exit 1
}
note() {
    printf '==> %s\n' "$*" >&2
}

case $backends_kind in
axum | nginx) ;;
*) die "BACKENDS must be 'axum' or 'nginx', got '$backends_kind'" ;;
esac
for v in rounds duration connections threads workers; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for v in pinned_rounds one_rounds kill_duration kill_after warmup; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
if ((kill_duration > 0 && kill_after >= kill_duration)); then
    die "KILL_AFTER ($kill_after) must be below KILL_DURATION ($kill_duration)"
fi

for tool in wrk curl python3 timeout awk sort pgrep; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
if ((pinned_rounds > 0)); then
    command -v taskset >/dev/null 2>&1 || die "taskset (util-linux) is not installed"
fi

# --- nginx -------------------------------------------------------------------------
nginx_bin=${NGINX_BIN:-}
if [[ -z $nginx_bin ]]; then
    if command -v nginx >/dev/null 2>&1; then
        nginx_bin=$(command -v nginx)
    elif [[ -x /usr/sbin/nginx ]]; then
        nginx_bin=/usr/sbin/nginx
    else
        command -v apt-get >/dev/null 2>&1 || die "nginx is missing and apt-get is not available"
        note "installing nginx (Debian package)"
        export DEBIAN_FRONTEND=noninteractive
        timeout 600 apt-get install -y -q nginx >&2 ||
            { timeout 600 apt-get update -q >&2 && timeout 600 apt-get install -y -q nginx >&2; } ||
            die "apt-get install nginx failed"
        nginx_bin=/usr/sbin/nginx
    fi
fi
[[ -x $nginx_bin ]] || die "nginx binary not found or not executable: $nginx_bin"
for tmpl in proxy backend; do
    [[ -r $here/nginx/$tmpl.conf.tmpl ]] || die "missing template $here/nginx/$tmpl.conf.tmpl"
done

# --- our binaries ------------------------------------------------------------------
if [[ -z ${LB_BIN:-} || (-z ${BACKEND_BIN:-} && $backends_kind == axum) ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found and LB_BIN/BACKEND_BIN not set"
    note "building lb and backend (release)"
    (cd "$root" && timeout 3000 cargo build --release -p lb -p backend) >&2 ||
        die "cargo build --release -p lb -p backend failed"
fi
lb_bin=${LB_BIN:-$root/target/release/lb}
backend_bin=${BACKEND_BIN:-$root/target/release/backend}
[[ -x $lb_bin ]] || die "lb binary not found or not executable: $lb_bin"
if [[ $backends_kind == axum ]]; then
    [[ -x $backend_bin ]] || die "backend binary not found or not executable: $backend_bin"
fi

if [[ -n ${KEEP_DIR:-} ]]; then
    work=$KEEP_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-lb-vs-nginx.XXXXXX")
fi

# --- process bookkeeping and cleanup ------------------------------------------------
pids=()          # every long-running process started here (nginx: the master)
declare -A bpid  # backend index -> pid (master for nginx backends)
nginx_pid=""
lb_pid=""

children_of() { # pid -> its child pids (nginx workers), one per line
    pgrep -P "$1" 2>/dev/null || true
}

stop_pid() { # pid: TERM, wait up to 5 s, then KILL; also KILLs leftover children
    local pid=$1 i kids
    kill -0 "$pid" 2>/dev/null || return 0
    kids=$(children_of "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    if [[ -n $kids ]]; then
        # shellcheck disable=SC2086 # one pid per word
        kill -KILL $kids 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    trap - EXIT
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

render() { # template out prefix port name b1 b2
    sed -e "s|@PREFIX@|$3|g" -e "s|@LISTEN_PORT@|$4|g" -e "s|@NAME@|$5|g" \
        -e "s|@BACKEND1@|$6|g" -e "s|@BACKEND2@|$7|g" -e "s|@WORKERS@|$workers|g" \
        -e "s|@FORWARDING@|$forwarding_directives|g" \
        "$1" >"$2"
}

start_nginx() { # dir conf-template port name b1 b2 -> sets started_pid
    local dir=$1
    mkdir -p "$dir"
    render "$2" "$dir/nginx.conf" "$dir" "$3" "$4" "$5" "$6"
    "$nginx_bin" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' \
        >"$dir/stdout.log" 2>&1 &
    started_pid=$!
}

backend_port=()
start_backend() { # index (1 or 2)
    local n=$1 port=${backend_port[$1]} log
    if [[ $backends_kind == nginx ]]; then
        start_nginx "$work/backend-$n" "$here/nginx/backend.conf.tmpl" "$port" "backend-$n" - -
        log=$work/backend-$n/error.log
    else
        log=$work/backend-$n.log
        "$backend_bin" --listen "127.0.0.1:$port" --name "backend-$n" >>"$log" 2>&1 &
        started_pid=$!
    fi
    bpid[$n]=$started_pid
    pids+=("$started_pid")
    wait_ok "backend-$n" "http://127.0.0.1:$port/host" "$started_pid" "$log"
}

kill9_backend() { # index: SIGKILL the backend (nginx: master and workers)
    local pid=${bpid[$1]} kids
    kids=$(children_of "$pid")
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL "$pid" $kids 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

proxy_pids() { # name -> pids whose CPU and RSS count for that proxy
    case $1 in
    nginx) printf '%s\n' "$nginx_pid" && children_of "$nginx_pid" ;;
    lb) printf '%s\n' "$lb_pid" ;;
    esac
}

rss_total=0
read_rss() { # pids... -> rss_total (kB), builtins only (cheap enough to sample)
    local pid k v _
    rss_total=0
    for pid; do
        [[ -r /proc/$pid/status ]] || continue
        while read -r k v _; do
            if [[ $k == VmRSS: ]]; then
                rss_total=$((rss_total + v))
                break
            fi
        done <"/proc/$pid/status"
    done
}

cpu_ticks() { # pids... -> utime+stime summed, in clock ticks
    local pid
    for pid; do
        [[ -r /proc/$pid/stat ]] && cat "/proc/$pid/stat"
    done | awk '{ sub(/.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}

sample_peak_rss() { # seconds outfile pids...: max summed VmRSS every 0.25 s
    local secs=$1 out=$2 i peak=0
    shift 2
    for ((i = 0; i < secs * 4; i++)); do
        read_rss "$@"
        ((rss_total > peak)) && peak=$rss_total
        sleep 0.25
    done
    printf '%s\n' "$peak" >"$out"
}

# parse_wrk file -> "rps p50_us p99_us requests non2xx socket_errors"
parse_wrk() {
    awk '
        function us(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v + 0 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v * 1000 }
            if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000000 }
            return v + 0
        }
        $1 == "50%" { p50 = us($2) }
        $1 == "99%" { p99 = us($2) }
        / requests in / { req = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(/,/, ""); sock = $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %s %d %d\n", rps + 0, p50 + 0, p99 + 0, req + 0, non2xx, sock }
    ' "$1"
}

url_of() {
    case $1 in
    nginx) printf 'http://127.0.0.1:%s/host' "$nginx_port" ;;
    lb) printf 'http://127.0.0.1:%s/host' "$lb_port" ;;
    direct) printf 'http://127.0.0.1:%s/host' "${backend_port[1]}" ;;
    esac
}

results=$work/results.tsv
: >"$results"
run_seq=0

# measure phase target round conns threads pin(0|1): one wrk run; for the proxies
# in phase "c64" also CPU ticks and peak RSS. Appends to $results:
# phase target round rps p50_us p99_us requests errors cpu_us_per_req peak_rss_kb
# load1 (the 1-minute load average when the run started: other work on the machine)
measure() {
    local phase=$1 target=$2 round=$3 conns=$4 thr=$5 pin=$6
    local url out ppids=() t0=0 t1=0 cpu_us="-" peak="-" sampler="" r load1 _
    read -r load1 _ </proc/loadavg
    url=$(url_of "$target")
    run_seq=$((run_seq + 1))
    out=$work/wrk-$run_seq-$phase-$target-r$round.txt
    local cmd=(wrk "-t$thr" "-c$conns" "-d${duration}s" --latency "$url")
    ((pin)) && cmd=(taskset -c 1 "${cmd[@]}")
    if [[ $phase == c64 && $target != direct ]]; then
        mapfile -t ppids < <(proxy_pids "$target")
        t0=$(cpu_ticks "${ppids[@]}")
        sample_peak_rss "$duration" "$out.rss" "${ppids[@]}" &
        sampler=$!
    fi
    timeout $((duration + 20)) "${cmd[@]}" >"$out" 2>&1 || die "wrk failed against $target; see $out: $(cat "$out")"
    if [[ -n $sampler ]]; then
        t1=$(cpu_ticks "${ppids[@]}")
        wait "$sampler" || true
        peak=$(cat "$out.rss")
    fi
    read -r rps p50 p99 req non2xx sock < <(parse_wrk "$out")
    ((req > 0)) || die "no requests completed against $target; see $out"
    if [[ -n $sampler ]]; then
        cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" -v n="$req" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
    fi
    r=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$phase" "$target" "$round" "$rps" "$p50" "$p99" \
        "$req" $((non2xx + sock)) "$cpu_us" "$peak" "$load1")
    printf '%s\n' "$r" >>"$results"
    note "$(printf '%-7s %-6s round %s: %10.0f req/s  p50 %8.0f us  p99 %8.0f us  errors %d  cpu/req %s us  peak rss %s kB' \
        "$phase" "$target" "$round" "$rps" "$p50" "$p99" $((non2xx + sock)) "$cpu_us" "$peak")"
}

median() { # phase target column -> median of that column over the rounds
    awk -F'\t' -v ph="$1" -v t="$2" -v c="$3" '$1 == ph && $2 == t && $c != "-" { print $c }' "$results" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

fmt() { # printf-format value (passes "nan" through)
    if [[ $2 == nan ]]; then printf 'n/a'; else awk -v f="$1" -v v="$2" 'BEGIN { printf f, v }'; fi
}

ratio() { # a b -> a/b with 2 decimals
    awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0 || a == "nan" || b == "nan") print "n/a"; else printf "%.2f", a / b }'
}

clk_tck=$(getconf CLK_TCK)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- start everything ----------------------------------------------------------------
backend_port[1]=$(free_port)
backend_port[2]=$(free_port)
nginx_port=$(free_port)
lb_port=$(free_port)
lb_admin_port=$(free_port)
b1=127.0.0.1:${backend_port[1]}
b2=127.0.0.1:${backend_port[2]}

note "starting two $backends_kind backends on $b1 and $b2"
start_backend 1
start_backend 2

note "starting nginx ($workers workers) on 127.0.0.1:$nginx_port"
start_nginx "$work/nginx-proxy" "$here/nginx/proxy.conf.tmpl" "$nginx_port" - "$b1" "$b2"
nginx_pid=$started_pid
pids+=("$nginx_pid")
wait_ok nginx "$(url_of nginx)" "$nginx_pid" "$work/nginx-proxy/error.log"

note "starting lb ($workers workers) on 127.0.0.1:$lb_port"
lb_log=$work/lb.log
RUST_LOG=${RUST_LOG:-warn} "$lb_bin" serve --listen "127.0.0.1:$lb_port" \
    --admin-listen "127.0.0.1:$lb_admin_port" --backend "$b1" --backend "$b2" \
    --workers "$workers" >"$lb_log" 2>&1 &
lb_pid=$!
pids+=("$lb_pid")
wait_ok "lb admin" "http://127.0.0.1:$lb_admin_port/readyz" "$lb_pid" "$lb_log"
wait_ok lb "$(url_of lb)" "$lb_pid" "$lb_log"

# both proxies must actually balance over both backends
for target in nginx lb; do
    seen=$(for _ in 1 2 3 4; do curl -fsS --max-time 2 "$(url_of "$target")"; done | sort -u | tr '\n' ' ')
    [[ $seen == "backend-1 backend-2 " ]] || die "$target does not alternate over both backends (saw: $seen)"
done

mapfile -t nginx_pids < <(proxy_pids nginx)
read_rss "${nginx_pids[@]}"
idle_rss_nginx=$rss_total
read_rss "$lb_pid"
idle_rss_lb=$rss_total
note "idle RSS: nginx ${idle_rss_nginx} kB (${#nginx_pids[@]} processes), lb ${idle_rss_lb} kB"

if ((warmup > 0)); then
    note "warm-up: ${warmup}s per target"
    for target in nginx lb direct; do
        timeout $((warmup + 20)) wrk "-t$threads" "-c$connections" "-d${warmup}s" "$(url_of "$target")" >/dev/null 2>&1 ||
            die "warm-up wrk failed against $target"
    done
fi

# order alternates each round: odd rounds nginx first, even rounds lb first
order() {
    if (($1 % 2)); then echo "nginx lb direct"; else echo "lb nginx direct"; fi
}

note "64-connection rounds: $rounds x ${duration}s (wrk unpinned)"
for ((r = 1; r <= rounds; r++)); do
    for target in $(order "$r"); do
        measure c64 "$target" "$r" "$connections" "$threads" 0
    done
done

if ((pinned_rounds > 0)); then
    note "64-connection rounds, wrk pinned to CPU 1: $pinned_rounds x ${duration}s"
    for ((r = 1; r <= pinned_rounds; r++)); do
        for target in $(order "$r"); do
            measure pinned "$target" "$r" "$connections" "$threads" 1
        done
    done
fi

if ((one_rounds > 0)); then
    note "1-connection rounds: $one_rounds x ${duration}s"
    for ((r = 1; r <= one_rounds; r++)); do
        for target in $(order "$r"); do
            measure c1 "$target" "$r" 1 1 0
        done
    done
fi

# --- kill test -------------------------------------------------------------------------
kill_rows=()
if ((kill_duration > 0)); then
    for target in nginx lb; do
        note "kill test against $target: ${kill_duration}s load, SIGKILL backend-2 after ${kill_after}s"
        timeout $((warmup + 20)) wrk "-t$threads" "-c$connections" "-d$((warmup > 0 ? warmup : 1))s" \
            "$(url_of "$target")" >/dev/null 2>&1 || die "warm-up wrk failed against $target"
        out=$work/kill-$target.txt
        timeout $((kill_duration + 20)) wrk "-t$threads" "-c$connections" "-d${kill_duration}s" --latency \
            "$(url_of "$target")" >"$out" 2>&1 &
        wrk_pid=$!
        pids+=("$wrk_pid")
        sleep "$kill_after"
        kill9_backend 2
        wait "$wrk_pid" || die "wrk failed during the kill test against $target: $(cat "$out")"
        note "restarting backend-2"
        start_backend 2
        read -r rps p50 p99 req non2xx sock < <(parse_wrk "$out")
        sockline=$(grep 'Socket errors:' "$out" | sed 's/^ *//' || true)
        kill_rows+=("$(printf '| %s | %s | %s | %s | %s | %s |' "$target" "$req" "$non2xx" "$sock" \
            "$((non2xx + sock))" "${sockline:-none}")")
        note "kill test $target: requests $req, non-2xx $non2xx, socket errors $sock"
        if [[ $target == lb ]]; then
            curl -fsS --max-time 2 "http://127.0.0.1:$lb_admin_port/endpoints" >"$work/lb-endpoints-after-kill.json" 2>/dev/null || true
        fi
    done
fi

# --- report ------------------------------------------------------------------------------
nginx_version=$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')
wrk_version=$(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }' || true)
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

echo "### Backends: $backends_kind"
echo
echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs (${cpu_model:-unknown}); kernel $(uname -r);"
echo "$nginx_version; $wrk_version; lb --workers $workers, nginx worker_processes $workers; nginx forwarding headers: $nginx_forwarding;"
echo "load average at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "#### $connections connections (\`wrk -t$threads -c$connections -d${duration}s --latency\`), median of $rounds alternating rounds"
echo
echo "| target | req/s | p50 | p99 | CPU per request | RSS idle | RSS peak under load |"
echo "|---|---|---|---|---|---|---|"
for target in nginx lb direct; do
    rps=$(median c64 "$target" 4)
    p50=$(median c64 "$target" 5)
    p99=$(median c64 "$target" 6)
    case $target in
    nginx) label="nginx ($workers workers)"; idle=$idle_rss_nginx ;;
    lb) label="lb ($workers workers)"; idle=$idle_rss_lb ;;
    direct) label="direct to backend-1 (ceiling)"; idle="" ;;
    esac
    if [[ $target == direct ]]; then
        cpu="—"; idle_s="—"; peak_s="—"
    else
        cpu="$(fmt '%.1f' "$(median c64 "$target" 9)") µs"
        idle_s="$(fmt '%.1f' "$(awk -v k="$idle" 'BEGIN { print k / 1024 }')") MiB"
        peak_s="$(fmt '%.1f' "$(awk -F'\t' -v t="$target" '$1 == "c64" && $2 == t && $10 > m { m = $10 } END { print m / 1024 }' "$results")") MiB"
    fi
    printf '| %s | %s | %s ms | %s ms | %s | %s | %s |\n' "$label" "$(fmt '%.0f' "$rps")" \
        "$(fmt '%.2f' "$(awk -v v="$p50" 'BEGIN { print v / 1000 }')")" \
        "$(fmt '%.2f' "$(awk -v v="$p99" 'BEGIN { print v / 1000 }')")" "$cpu" "$idle_s" "$peak_s"
done
echo
echo "Ratios lb/nginx: req/s **$(ratio "$(median c64 lb 4)" "$(median c64 nginx 4)")×**," \
    "p99 $(ratio "$(median c64 lb 6)" "$(median c64 nginx 6)")× (lower is better)," \
    "CPU per request $(ratio "$(median c64 lb 9)" "$(median c64 nginx 9)")× (lower is better)."
echo

if ((pinned_rounds > 0)); then
    echo "#### Same, wrk pinned (\`taskset -c 1 wrk -t$threads -c$connections -d${duration}s --latency\`), median of $pinned_rounds rounds"
    echo
    echo "| target | req/s | p50 | p99 |"
    echo "|---|---|---|---|"
    for target in nginx lb direct; do
        printf '| %s | %s | %s ms | %s ms |\n' "$target" "$(fmt '%.0f' "$(median pinned "$target" 4)")" \
            "$(fmt '%.2f' "$(awk -v v="$(median pinned "$target" 5)" 'BEGIN { print v / 1000 }')")" \
            "$(fmt '%.2f' "$(awk -v v="$(median pinned "$target" 6)" 'BEGIN { print v / 1000 }')")"
    done
    echo
    echo "Ratios lb/nginx (pinned): req/s **$(ratio "$(median pinned lb 4)" "$(median pinned nginx 4)")×**," \
        "p99 $(ratio "$(median pinned lb 6)" "$(median pinned nginx 6)")×."
    echo
fi

if ((one_rounds > 0)); then
    d50=$(median c1 direct 5)
    echo "#### 1 connection (\`wrk -t1 -c1 -d${duration}s --latency\`), median of $one_rounds rounds"
    echo
    echo "| target | req/s | p50 | p99 | p50 added over direct |"
    echo "|---|---|---|---|---|"
    for target in direct nginx lb; do
        p50=$(median c1 "$target" 5)
        added=$(awk -v a="$p50" -v b="$d50" 'BEGIN { printf "%+.0f µs", a - b }')
        [[ $target == direct ]] && added="—"
        printf '| %s | %s | %s µs | %s µs | %s |\n' "$target" "$(fmt '%.0f' "$(median c1 "$target" 4)")" \
            "$(fmt '%.0f' "$p50")" "$(fmt '%.0f' "$(median c1 "$target" 6)")" "$added"
    done
    echo
fi

if ((kill_duration > 0)); then
    echo "#### Kill test (\`wrk -t$threads -c$connections -d${kill_duration}s\`, SIGKILL backend-2 after ${kill_after}s, then restarted)"
    echo
    echo "| proxy | requests | non-2xx/3xx | socket errors | total errors | wrk socket line |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${kill_rows[@]}"
    echo
fi

echo "<details><summary>raw rows (phase, target, round, req/s, p50 µs, p99 µs, requests, errors, CPU µs/req, peak RSS kB, 1-min load average at start)</summary>"
echo
echo '```'
cat "$results"
echo '```'
echo "</details>"
