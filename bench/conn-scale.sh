#!/usr/bin/env bash
# bench/conn-scale.sh — our LB (`lb serve`) next to nginx at scale, in front of
# the SAME two backends, in one run. Phases (PHASES, default all, in order):
#
#   idle    memory per idle keep-alive client connection (below);
#   load    a 64-connection wrk load (req/s, p99, CPU per request) while IDLE
#           idle keep-alive connections are held open;
#   active  ACTIVE concurrently active connections (wrk -c ACTIVE);
#   close   connection per request: wrk -c64 with `Connection: close`, so
#           req/s = new connections/s; CPU per connection;
#   reap    IDLE idle connections closed by the proxy's idle timeout
#           (lb --header-read-timeout, nginx keepalive_timeout, both
#           REAP_TIMEOUT): how late after the timeout the closes came, and
#           the proxy's CPU from "all held" to "all closed".
#
# Each measurement starts a fresh proxy; lb and nginx alternate, the order
# flipping each round. CPU = utime+stime of the proxy's processes.
#
# idle: for each N in COUNTS and each round, a fresh proxy is
# started, warmed with 8 requests, and bench/idle_holder.py opens N plain
# HTTP/1.1 connections, sends one `GET /host` on each, reads the response and
# keeps the connection open and idle. The proxy's RSS (VmRSS summed over its
# processes: nginx = master + workers, and Pss from smaps_rollup too) is read
# before (after WARM_CONNS connections were held and closed, SETTLE s
# earlier), and SETTLE seconds after all N are held (for both proxies: the lb
# parks a connection idle for --idle-park-after, 1 s, and its allocator gives
# freed pages back as they are freed; the report says if fewer than N were
# parked); the
# report gives (after - before) / N in KB.
#
# nginx is configured as in bench/lb-vs-nginx.sh (bench/nginx/proxy.conf.tmpl:
# WORKERS workers, access_log off, upstream keepalive 64), with only
# worker_connections raised so that N fits, and worker_rlimit_nofile set to the
# fd limit. The script raises its soft `ulimit -n` to the hard limit (children
# inherit it) and reports it; counts that do not fit in it are skipped.
#
# Environment:
#   COUNTS       connection counts (default "1000 10000 50000")
#   ROUNDS       rounds per count, alternating lb/nginx (default 1)
#   WORKERS      our LB's --workers and nginx's worker_processes (default 2)
#   SOURCES      client source addresses 127.0.0.1..127.0.0.SOURCES (default 4)
#   HOLD_TIMEOUT seconds the holder may take to open N connections (default 50)
#   PHASES       phases to run (default "idle load active close reap")
#   IDLE         idle connections held in the load and reap phases (default 10000)
#   ACTIVE       connections of the active phase (default 1000)
#   DURATION     seconds per wrk run (default 6)
#   WARMUP       seconds of wrk warm-up before each measured run (default 2)
#   REAP_TIMEOUT idle timeout of the reap phase, seconds (default 5)
#   SETTLE       seconds between "all N held" and the idle phase's RSS reading
#                (default 3)
#   METHOD       idle phase: gradual (default; the holder opens at most 100
#                at a time, from a warm baseline) or burst (a fresh proxy,
#                cold baseline: all N connected, then every request written
#                at once, so N are in flight together)
#   WARM_CONNS   idle phase (gradual): connections opened (as the N are) and closed
#                before the baseline reading, so that fixed memory that fills
#                on first use is not counted per connection (default 200;
#                0: a cold baseline, as before 2026-12-04)
#   LB_ARGS      extra `lb serve` flags (default none: the lb's defaults,
#                which park idle connections after 1 s; "--idle-park-after 0"
#                compares without parking)
#   LB_BIN, BACKEND_BIN  binaries (default: target/release/lb, backend)
#   NGINX_BIN    nginx binary (default: nginx on PATH or /usr/sbin/nginx)
# Usage: bench/conn-scale.sh > report.md   (progress on stderr)

set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
counts=${COUNTS:-1000 10000 50000}
rounds=${ROUNDS:-1}
workers=${WORKERS:-2}
sources=${SOURCES:-4}
hold_timeout=${HOLD_TIMEOUT:-50}
phases=${PHASES:-idle load active close reap}
idle=${IDLE:-10000}
active=${ACTIVE:-1000}
duration=${DURATION:-6}
reap_timeout=${REAP_TIMEOUT:-5}
warmup=${WARMUP:-2}
settle=${SETTLE:-3}
warm_conns=${WARM_CONNS:-200}
method=${METHOD:-gradual}
read -r -a lb_args <<<"${LB_ARGS:-}"
tdir=${CARGO_TARGET_DIR:-$root/target}
lb_bin=${LB_BIN:-$tdir/release/lb}
backend_bin=${BACKEND_BIN:-$tdir/release/backend}
nginx_bin=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}

die() { printf 'conn-scale: error: %s\n' "$*" >&2; exit 1; }
note() { printf '==> %s\n' "$*" >&2; }
for v in rounds workers sources hold_timeout idle active duration reap_timeout warmup settle; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ $warm_conns =~ ^[0-9]+$ ]] || die "WARM_CONNS must be a non-negative integer, got '$warm_conns'"
for n in $counts; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "COUNTS must be positive integers, got '$n'"; done
[[ $method =~ ^(gradual|burst)$ ]] || die "METHOD must be gradual or burst, got '$method'"
for ph in $phases; do [[ $ph =~ ^(idle|load|active|close|reap)$ ]] || die "unknown phase '$ph' in PHASES"; done
has_phase() { [[ " $phases " == *" $1 "* ]]; }
for x in "$lb_bin" "$backend_bin" "$nginx_bin"; do [[ -x $x ]] || die "not executable: $x"; done
for tool in curl python3 timeout awk pgrep wrk getconf; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

old_soft=$(ulimit -Sn)
hard=$(ulimit -Hn)
ulimit -Sn "$hard" || die "could not raise ulimit -n to $hard"
fd_limit=$(ulimit -Sn)
note "ulimit -n: soft $old_soft -> $fd_limit (hard $hard)"

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_workdir conn-scale

stop() { # pid
    kill -TERM "$1" 2>/dev/null || true
    timeout 10 tail --pid="$1" -f /dev/null 2>/dev/null || kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
mem_of() { # pids... -> "rss_kb pss_kb"
    local p rss=0 pss=0 k v _
    for p; do
        while read -r k v _; do [[ $k == VmRSS: ]] && rss=$((rss + v)); done <"/proc/$p/status"
        while read -r k v _; do [[ $k == Pss: ]] && pss=$((pss + v)); done <"/proc/$p/smaps_rollup"
    done
    echo "$rss $pss"
}

start_backends "$backend_bin"

start_proxy() { # target n [idle_timeout_s] -> proxy_pid, port
    port=$(free_port)
    local conns=$(($2 * 2 + 1024)) lb_extra=() nginx_extra=''
    if [[ -n ${3:-} ]]; then
        lb_extra=(--header-read-timeout "$3s")
        nginx_extra="keepalive_timeout $3s; client_header_timeout $3s;"
    fi
    if [[ $1 == nginx ]]; then
        local d=$work/nginx-$RANDOM
        mkdir -p "$d"
        sed -e "s|@PREFIX@|$d|g" -e "s|@LISTEN_PORT@|$port|g" -e "s|@BACKEND1@|$b1|g" \
            -e "s|@BACKEND2@|$b2|g" -e "s|@WORKERS@|$workers|g" -e "s|@FORWARDING@||g" \
            -e "s|worker_connections 4096;|worker_connections $conns;|" \
            -e "s|^worker_processes.*|&\nworker_rlimit_nofile $fd_limit;|" \
            -e "s|^\( *\)access_log off;|&\n\1$nginx_extra|" \
            "$here/nginx/proxy.conf.tmpl" >"$d/nginx.conf"
        "$nginx_bin" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/out.log" 2>&1 &
    else
        admin_port=$(free_port)
        RUST_LOG=warn "$lb_bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" \
            --backend "$b1" --backend "$b2" --workers "$workers" --max-connections "$conns" \
            "${lb_extra[@]}" "${lb_args[@]}" >>"$work/lb.log" 2>&1 &
    fi
    proxy_pid=$!
    wait_ok "http://127.0.0.1:$port/host" "$proxy_pid" || die "$1 did not start (see $work)"
    local i
    for ((i = 0; i < 8; i++)); do curl -fsS -o /dev/null "http://127.0.0.1:$port/host"; done
}
proxy_pids() { # target
    echo "$proxy_pid"
    if [[ $1 == nginx ]]; then pgrep -P "$proxy_pid" || true; fi
}
clk_tck=$(getconf CLK_TCK)

# hold target n tag [holder args...]: starts bench/idle_holder.py against the
# current proxy (stdin on fd 9, a fifo: closing fd 9 lets it close its
# connections) and waits for its "ready" line -> hpid, hold_out
hold() {
    local t=$1 n=$2 tag=$3 fifo line i
    shift 3
    fifo=$work/fifo-$tag; hold_out=$work/hold-$tag.out
    mkfifo "$fifo"
    timeout $((hold_timeout + reap_timeout + 70)) python3 "$here/idle_holder.py" "$port" "$n" "$sources" "$@" \
        <"$fifo" >"$hold_out" 2>&1 &
    hpid=$!
    exec 9>"$fifo"
    line=''
    for ((i = 0; i < hold_timeout * 10; i++)); do
        line=$(head -n 1 "$hold_out" 2>/dev/null || true)
        [[ -n $line ]] && break
        kill -0 "$hpid" 2>/dev/null || break
        sleep 0.1
    done
    [[ $line == "ready $n" ]] || die "holder did not hold $n connections to $t: $(tail -n 3 "$hold_out")"
}
release() { # lets the holder close its connections and waits for it
    exec 9>&-
    wait "$hpid" 2>/dev/null || true
}

results=$work/results.tsv
: >"$results"
measure() { # target n round
    local t=$1 n=$2 r=$3 ps before after left holder_args=()
    start_proxy "$t" "$n"
    mapfile -t ps < <(proxy_pids "$t")
    [[ $method == burst ]] && holder_args=(--burst)
    if [[ $method == gradual ]] && ((warm_conns > 0)); then
        # A warm proxy: the same way of opening connections once, closed
        # again, so that what fills once and stays (nginx's connection
        # arrays are preallocated; the lb's bounded free lists and upstream
        # pool fill on first use) is in the baseline, not in the per-
        # connection figure.
        hold "$t" "$warm_conns" "warm-$t-$n-$r"
        release
        sleep "$settle"
    fi
    before=$(mem_of "${ps[@]}")
    hold "$t" "$n" "idle-$t-$n-$r" "${holder_args[@]}"
    sleep "$settle"
    if [[ $t == lb ]]; then
        local parked
        parked=$(curl -fsS "http://127.0.0.1:$admin_port/metrics" |
            awk '$1 == "roundhouse_parked_connections" { print $2 }')
        [[ ${parked:-0} -ge $n ]] || note "lb: ${parked:-0} of the $n idle connections parked after ${settle} s"
    fi
    after=$(mem_of "${ps[@]}")
    release
    sleep "$settle"
    left=$(mem_of "${ps[@]}")
    stop "$proxy_pid"
    read -r rb pb <<<"$before"; read -r ra pa <<<"$after"; read -r rl _ <<<"$left"
    local kb pkb lmb
    kb=$(awk -v a="$ra" -v b="$rb" -v n="$n" 'BEGIN { printf "%.2f", (a - b) / n }')
    pkb=$(awk -v a="$pa" -v b="$pb" -v n="$n" 'BEGIN { printf "%.2f", (a - b) / n }')
    lmb=$(awk -v l="$rl" -v b="$rb" 'BEGIN { printf "%.2f", (l - b) / 1024 }')
    printf 'idle\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$n" "$r" "$rb" "$ra" "$kb" "$pkb" "$lmb" >>"$results"
    note "$(printf '%-5s N=%-6s round %s: RSS %s -> %s kB = %s KB/conn (Pss %s KB/conn); %s MiB over the baseline %s s after they left' "$t" "$n" "$r" "$rb" "$ra" "$kb" "$pkb" "$lmb" "$settle")"
}


# load phase target round conns [held-idle] [wrk args...]: one wrk run against
# a fresh proxy, optionally with idle connections held open during it.
# Appends: phase target round rps p99_us requests errors cpu_us_per_req
load() {
    local ph=$1 t=$2 r=$3 c=$4 held=$5 ps c0 c1 out rps p99 req err cpu split
    shift 5
    start_proxy "$t" $((held + c))
    mapfile -t ps < <(proxy_pids "$t")
    ((held > 0)) && hold "$t" "$held" "$ph-$t-$r"
    out=$work/wrk-$ph-$t-$r.out
    # warm-up, as bench/lb-vs-nginx.sh does: pools filled, free lists warm
    timeout $((warmup + 30)) wrk -t2 "-c$c" "-d${warmup}s" "$@" "http://127.0.0.1:$port/host" >"$out.warmup" 2>&1 ||
        die "warm-up wrk failed against $t: $(tail -n 3 "$out.warmup")"
    c0=$(cpu_ticks "${ps[@]}")
    timeout $((duration + 30)) wrk -t2 "-c$c" "-d${duration}s" --latency "$@" "http://127.0.0.1:$port/host" >"$out" 2>&1 ||
        die "wrk failed against $t: $(tail -n 3 "$out")"
    c1=$(cpu_ticks "${ps[@]}")
    # lb: connections accepted per worker (SO_REUSEPORT's spread), from
    # roundhouse_accepted_connections_total{worker}: "n0/n1/..."
    if [[ $t == lb && $ph == close ]]; then
        split=$(curl -fsS --max-time 2 "http://127.0.0.1:$admin_port/metrics" |
            sed -n 's/^roundhouse_accepted_connections_total{worker="\([0-9]*\)"} \([0-9]*\).*/\1 \2/p' |
            sort -n | awk '{ printf "%s%s", (NR > 1 ? "/" : ""), $2 }')
        printf 'split\t%s\t%s\t%s\n' "$t" "$r" "$split" >>"$results"
        note "close  lb    round $r: connections accepted per worker $split"
    fi
    # the idle connections must all still be open: the holder has not exited
    if ((held > 0)); then
        kill -0 "$hpid" 2>/dev/null || die "the holder's idle connections to $t went away during the load: $(tail -n 3 "$hold_out")"
        release
    fi
    stop "$proxy_pid"
    read -r rps p99 req err < <(parse_wrk "$out")
    cpu=$(awk -v d=$((c1 - c0)) -v hz="$clk_tck" -v n="$req" 'BEGIN { printf "%.2f", (n > 0) ? d * 1e6 / hz / n : 0 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ph" "$t" "$r" "$rps" "$p99" "$req" "$err" "$cpu" >>"$results"
    note "$(printf '%-6s %-5s round %s: %s req/s, p99 %s us, %s errors, CPU %s us/req' "$ph" "$t" "$r" "$rps" "$p99" "$err" "$cpu")"
}

# reap target round: IDLE idle connections to a proxy whose idle timeout is
# REAP_TIMEOUT; the holder reports how late the closes came.
# Appends: reap target round late_p50_s late_max_s early cpu_ms
reap() {
    local t=$1 r=$2 ps c0 c1 line i
    start_proxy "$t" "$idle" "$reap_timeout"
    mapfile -t ps < <(proxy_pids "$t")
    hold "$t" "$idle" "reap-$t-$r" --reap "$reap_timeout"
    c0=$(cpu_ticks "${ps[@]}")
    for ((i = 0; i < (reap_timeout + 65) * 10; i++)); do
        line=$(sed -n 2p "$hold_out")
        [[ -n $line ]] && break
        kill -0 "$hpid" 2>/dev/null || break
        sleep 0.1
    done
    c1=$(cpu_ticks "${ps[@]}")
    release
    stop "$proxy_pid"
    [[ $line == "closed $idle "* ]] || die "$t did not close the $idle idle connections: $(tail -n 3 "$hold_out")"
    local _ n p50 max early cpu
    read -r _ n p50 max early <<<"$line"
    cpu=$(awk -v d=$((c1 - c0)) -v hz="$clk_tck" 'BEGIN { printf "%.0f", d * 1000 / hz }')
    printf 'reap\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$r" "$p50" "$max" "$early" "$cpu" >>"$results"
    note "$(printf 'reap   %-5s round %s: closes %s s (p50) / %s s (max) after the timeout, %s early, CPU %s ms' "$t" "$r" "$p50" "$max" "$early" "$cpu")"
}

each_round() { # command args...: runs "command target round args..." for lb and nginx, alternating
    local r t order
    for ((r = 1; r <= rounds; r++)); do
        if ((r % 2)); then order="lb nginx"; else order="nginx lb"; fi
        for t in $order; do "$1" "$t" "$r" "${@:2}"; done
    done
}
fits() { # n: client fd + proxy client fd (+ slack) must fit the limit
    (($1 + 256 <= fd_limit))
}

if has_phase idle; then
    for n in $counts; do
        if ! fits "$n"; then
            note "N=$n skipped: needs more than the fd limit $fd_limit"
            printf 'skip\t%s\n' "$n" >>"$results"
            continue
        fi
        for ((r = 1; r <= rounds; r++)); do
            if ((r % 2)); then order="lb nginx"; else order="nginx lb"; fi
            for t in $order; do measure "$t" "$n" "$r"; done
        done
    done
fi
fits $((idle + active)) || die "IDLE=$idle does not fit the fd limit $fd_limit"
load_as() { load "$3" "$1" "$2" "${@:4}"; } # target round phase args... -> load phase target round args...
has_phase load && each_round load_as load 64 "$idle"
has_phase active && each_round load_as active "$active" 0
has_phase close && each_round load_as close 64 0 -H "Connection: close"
has_phase reap && each_round reap

med() { # phase target column [match column value] -> median
    awk -F'\t' -v p="$1" -v t="$2" -v c="$3" -v mc="${4:-0}" -v mv="${5:-}" \
        '$1 == p && $2 == t && (mc == 0 || $mc == mv) { print $c }' "$results" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }

echo "## Connection scale: lb vs nginx"
echo
echo "fd limit (ulimit -n): soft $old_soft raised to $fd_limit (hard $hard); $workers workers each; rounds: $rounds (medians), lb and nginx alternating."
if has_phase idle; then
    echo
    echo "### Idle keep-alive client connections: memory per connection"
    echo
    echo "Method: $method ($([[ $method == burst ]] && echo "a fresh proxy, all N connected, then every request written at once" || echo "at most 100 opening at a time, from a baseline after $warm_conns were opened and closed")); RSS read $settle s after all N were held, and again $settle s after they left."
    echo
    echo "| N | lb KB/conn (RSS) | nginx KB/conn (RSS) | lb KB/conn (Pss) | nginx KB/conn (Pss) | lb / nginx (RSS) | lb MiB over baseline after they left | nginx MiB |"
    echo "|---|---|---|---|---|---|---|---|"
    for n in $counts; do
        if grep -q "^skip	$n$" "$results"; then echo "| $n | skipped: fd limit $fd_limit | | | | | | |"; continue; fi
        l=$(med idle lb 7 3 "$n"); g=$(med idle nginx 7 3 "$n")
        echo "| $n | $l | $g | $(med idle lb 8 3 "$n") | $(med idle nginx 8 3 "$n") | $(ratio "$l" "$g") | $(med idle lb 9 3 "$n") | $(med idle nginx 9 3 "$n") |"
    done
fi
if has_phase load || has_phase active || has_phase close; then
    echo
    echo "### Under load (wrk -t2, ${duration} s per run)"
    echo
    echo "| load | lb req/s | nginx req/s | lb / nginx | lb p99 (µs) | nginx p99 (µs) | lb CPU µs/req | nginx CPU µs/req | errors lb / nginx |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for ph in load active close; do
        has_phase "$ph" || continue
        case $ph in
        load) label="64 connections, $idle idle held open" ;;
        active) label="$active active connections" ;;
        close) label="64 connections, \`Connection: close\` (req/s = new connections/s)" ;;
        esac
        l=$(med "$ph" lb 4); g=$(med "$ph" nginx 4)
        errs=$(awk -F'\t' -v p="$ph" '$1 == p { e[$2] += $7 } END { printf "%d / %d", e["lb"], e["nginx"] }' "$results")
        echo "| $label | $l | $g | $(ratio "$l" "$g") | $(med "$ph" lb 5) | $(med "$ph" nginx 5) | $(med "$ph" lb 8) | $(med "$ph" nginx 8) | $errs |"
    done
fi
if has_phase close; then
    echo
    echo "lb's connections accepted per worker over each \`Connection: close\` run (warm-up included; \`roundhouse_accepted_connections_total{worker}\`, \`SO_REUSEPORT\` spreading them): $(awk -F'\t' '$1 == "split" { printf "%s%s", (n++ ? ", " : ""), $4 }' "$results")."
fi
if has_phase reap; then
    echo
    echo "### Idle reaper: $idle idle connections, idle timeout ${reap_timeout} s"
    echo
    echo "Seconds after (response read by the client + timeout) at which the proxy closed them (slightly negative: the client read each response a little after the proxy sent it and started its timer), closes more than 0.25 s early, and the proxy's CPU from \"all held\" to \"all closed\"."
    echo
    echo "| proxy | close lateness p50 (s) | max (s) | closed > 0.25 s early | CPU (ms) |"
    echo "|---|---|---|---|---|"
    for t in lb nginx; do
        echo "| $t | $(med reap "$t" 4) | $(med reap "$t" 5) | $(med reap "$t" 6) | $(med reap "$t" 7) |"
    done
fi
