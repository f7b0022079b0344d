#!/usr/bin/env bash
# bench/conn-scale.sh — memory per idle keep-alive client connection: our LB
# (`lb serve`) next to nginx, in front of the SAME two backends, in one run.
#
# For each N in COUNTS and each round (lb and nginx alternate), a fresh proxy is
# started, warmed with 8 requests, and bench/idle_holder.py opens N plain
# HTTP/1.1 connections, sends one `GET /host` on each, reads the response and
# keeps the connection open and idle. The proxy's RSS (VmRSS summed over its
# processes: nginx = master + workers, and Pss from smaps_rollup too) is read
# before and once all N are held; the report gives (after - before) / N in KB.
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
tdir=${CARGO_TARGET_DIR:-$root/target}
lb_bin=${LB_BIN:-$tdir/release/lb}
backend_bin=${BACKEND_BIN:-$tdir/release/backend}
nginx_bin=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}

die() { printf 'conn-scale: error: %s\n' "$*" >&2; exit 1; }
note() { printf '==> %s\n' "$*" >&2; }
for v in rounds workers sources hold_timeout; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for n in $counts; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "COUNTS must be positive integers, got '$n'"; done
for x in "$lb_bin" "$backend_bin" "$nginx_bin"; do [[ -x $x ]] || die "not executable: $x"; done
for tool in curl python3 timeout awk pgrep; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

old_soft=$(ulimit -Sn)
hard=$(ulimit -Hn)
ulimit -Sn "$hard" || die "could not raise ulimit -n to $hard"
fd_limit=$(ulimit -Sn)
note "ulimit -n: soft $old_soft -> $fd_limit (hard $hard)"

work=$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-conn-scale.XXXXXX")
pids=()
cleanup() {
    local p
    trap - EXIT
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

b1=127.0.0.1:$(free_port); b2=127.0.0.1:$(free_port)
for b in "$b1" "$b2"; do
    "$backend_bin" --listen "$b" --name "backend-${b##*:}" >>"$work/backend.log" 2>&1 &
    pids+=("$!")
    wait_ok "http://$b/host" "$!" || die "backend $b did not start"
done

start_proxy() { # target n -> proxy_pid, port
    port=$(free_port)
    local conns=$(($2 * 2 + 1024))
    if [[ $1 == nginx ]]; then
        local d=$work/nginx-$RANDOM
        mkdir -p "$d"
        sed -e "s|@PREFIX@|$d|g" -e "s|@LISTEN_PORT@|$port|g" -e "s|@BACKEND1@|$b1|g" \
            -e "s|@BACKEND2@|$b2|g" -e "s|@WORKERS@|$workers|g" -e "s|@FORWARDING@||g" \
            -e "s|worker_connections 4096;|worker_connections $conns;|" \
            -e "s|^worker_processes.*|&\nworker_rlimit_nofile $fd_limit;|" \
            "$here/nginx/proxy.conf.tmpl" >"$d/nginx.conf"
        "$nginx_bin" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/out.log" 2>&1 &
    else
        RUST_LOG=warn "$lb_bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$(free_port)" \
            --backend "$b1" --backend "$b2" --workers "$workers" --max-connections "$conns" \
            >>"$work/lb.log" 2>&1 &
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

results=$work/results.tsv
: >"$results"
measure() { # target n round
    local t=$1 n=$2 r=$3 ps before after fifo out hpid line i
    start_proxy "$t" "$n"
    mapfile -t ps < <(proxy_pids "$t")
    before=$(mem_of "${ps[@]}")
    fifo=$work/fifo-$t-$n-$r; out=$work/hold-$t-$n-$r.out
    mkfifo "$fifo"
    timeout $((hold_timeout + 10)) python3 "$here/idle_holder.py" "$port" "$n" "$sources" <"$fifo" >"$out" 2>&1 &
    hpid=$!
    exec 9>"$fifo"
    line=''
    for ((i = 0; i < hold_timeout * 10; i++)); do
        line=$(head -n 1 "$out" 2>/dev/null || true)
        [[ -n $line ]] && break
        kill -0 "$hpid" 2>/dev/null || break
        sleep 0.1
    done
    after=$(mem_of "${ps[@]}")
    exec 9>&-
    wait "$hpid" 2>/dev/null || true
    stop "$proxy_pid"
    [[ $line == "ready $n" ]] || die "holder did not hold $n connections to $t: $(tail -n 3 "$out")"
    read -r rb pb <<<"$before"; read -r ra pa <<<"$after"
    local kb pkb
    kb=$(awk -v a="$ra" -v b="$rb" -v n="$n" 'BEGIN { printf "%.2f", (a - b) / n }')
    pkb=$(awk -v a="$pa" -v b="$pb" -v n="$n" 'BEGIN { printf "%.2f", (a - b) / n }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$n" "$r" "$rb" "$ra" "$kb" "$pkb" >>"$results"
    note "$(printf '%-5s N=%-6s round %s: RSS %s -> %s kB = %s KB/conn (Pss %s KB/conn)' "$t" "$n" "$r" "$rb" "$ra" "$kb" "$pkb")"
}

for n in $counts; do
    # client fd + proxy client fd (+ slack) must fit the limit
    if ((n + 256 > fd_limit)); then
        note "N=$n skipped: needs more than the fd limit $fd_limit"
        printf 'skip\t%s\n' "$n" >>"$results"
        continue
    fi
    for ((r = 1; r <= rounds; r++)); do
        if ((r % 2)); then order="lb nginx"; else order="nginx lb"; fi
        for t in $order; do measure "$t" "$n" "$r"; done
    done
done

echo "### Idle keep-alive client connections: memory per connection"
echo
echo "fd limit (ulimit -n): soft $old_soft raised to $fd_limit (hard $hard); $workers workers each; rounds: $rounds (median)."
echo
echo "| N | lb KB/conn (RSS) | nginx KB/conn (RSS) | lb KB/conn (Pss) | nginx KB/conn (Pss) | lb / nginx (RSS) |"
echo "|---|---|---|---|---|---|"
for n in $counts; do
    if grep -q "^skip	$n$" "$results"; then echo "| $n | skipped: fd limit $fd_limit | | | | |"; continue; fi
    med() { awk -F'\t' -v t="$1" -v n="$n" -v c="$2" '$1 == t && $2 == n { print $c }' "$results" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    l=$(med lb 6); g=$(med nginx 6)
    ratio=$(awk -v a="$l" -v b="$g" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }')
    echo "| $n | $l | $g | $(med lb 7) | $(med nginx 7) | $ratio |"
done
