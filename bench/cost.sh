#!/usr/bin/env bash
# bench/cost.sh — what one proxied request costs, measured deterministically:
# user-space instructions per request under valgrind's callgrind, and
# syscalls per request under strace, for six protocols, for the LB and for
# Debian's nginx configured the same way, in front of the same two backends.
#
#   bench/cost.sh > report.md          # the table: LB and nginx, every protocol
#   bench/cost.sh --gate               # CI: the LB's instructions against
#                                      # bench/cost-budgets.toml (exit 1 when a
#                                      # protocol is over its budget by > 2 %)
#
# Protocols (PROTOCOLS, in this order by default), each a FIXED number of
# requests sent by h2load (nghttp2-client) on one client connection at a
# time (CLIENTS), HTTP/2 with 16 streams in flight on it (STREAMS):
#   http1        HTTP/1.1 keep-alive: `h2load --h1 -c1 http://…/host`
#   http1-close  HTTP/1.1, a new connection per request: the same with
#                `-H 'Connection: close'` (h2load reconnects after each)
#   https        HTTP/1.1 keep-alive over TLS (ALPN http/1.1)
#   h2c          HTTP/2 with prior knowledge: `h2load -c1 -m16 http://…/host`
#   h2           HTTP/2 over TLS (ALPN h2): `h2load -c1 -m16 https://…/host`
#   grpc         unary gRPC calls of roundhouse.v1.Hosts/Get (the empty
#                request's 5-byte frame, `content-type: application/grpc`,
#                `te: trailers`), h2c in and h2c to the backends
#
# Instructions per request: the proxy runs under `valgrind --tool=callgrind`
# (the LB with `--workers 1`; nginx with `master_process off; daemon off;
# worker_processes 1;`), its readiness is awaited, h2load sends N requests,
# then SIGTERM; callgrind's total instruction count (Ir, all threads) is read
# from its output file. That is done twice, with N1 and N2 requests, and
#   instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1):
# start-up, readiness probes, the client connections' set-up (TLS handshakes
# included) and shutdown are the same in both runs and cancel exactly.
# Callgrind counts instructions, not time: the same binary and the same input
# give the same count whatever else the machine is doing. What still varies
# is how often a wake-up finds its bytes not there yet (an extra poll): with
# one client connection that is 0.01 % for http1 and https, 0.1-1 % for
# HTTP/2, up to 3 % for http1-close on a loaded machine (a new connection's
# request may follow its accept a little late). With 4 connections how many
# requests one wake-up finds would vary too (1-2 %), hence -c1.
# The gate (--gate) measures a protocol that is over its budget again, up to
# 3 times in all, and judges the lowest count (the variation only adds work).
#
# Syscalls per request (not in --gate): the proxy runs natively; after a
# warm-up run, `strace -c -f` is attached to every thread of it for one run
# of N2 requests; syscalls per request = strace's total / N2 (strace slows
# the proxy, which changes how many requests a wake-up finds: read these as
# ±5 %).
#
# The LB side: LB_BIN serve --listen … --admin-listen … --backend B1
# --backend B2 --workers 1, plus per protocol: TLS `--tls-cert C --tls-key K
# --tls-listen 127.0.0.1:PORT` (https, h2); `--upstream-protocol h2c` (grpc).
# Nothing else: the budget is for the default configuration (every LB_*
# environment variable is cleared for the run). nginx: the templates of
# bench/tls-h2-vs-nginx.sh (bench/nginx/{proxy,tls,h2c,grpc}.conf.tmpl) with
# one worker; the same certificate (ECDSA P-256, made here) for both.
#
# Which binary: the static release build that scripts/build-images.sh makes
# for the container image (target/<triple>/release/{lb,backend}: fat LTO,
# `--no-default-features` for lb, crt-static), the one scripts/test-all.sh
# already has when this runs; missing, it is built with
# `scripts/build-images.sh --binaries-only`. Counts depend on the binary, so
# the budgets (bench/cost-budgets.toml) are for that build, this toolchain
# and this valgrind; the file says which.
#
# Environment:
#   PROTOCOLS   subset of "http1 http1-close https h2c h2 grpc"
#   TARGETS     "lb nginx" (default; --gate: lb); "lb" or "nginx" alone
#   SCALE       multiplies every request count (default 1)
#   CLIENTS, STREAMS  h2load -c (default 1) and, for HTTP/2, -m (default 16)
#   LB_FLAGS    added to the LB's flags (e.g. "--access-log /dev/null" to
#               price a feature; not with --gate)
#   SYSCALLS    1 (default; --gate: 0): also count syscalls per request
#   BUDGETS     the budget file for --gate (default bench/cost-budgets.toml)
#   LB_BIN, BACKEND_BIN   binaries (default: the static release build above)
#   NGINX_BIN   nginx (default: on PATH)
#   KEEP_DIR    keep configs, logs, callgrind files and h2load outputs there
# Tools: valgrind, h2load (nghttp2-client), strace, nginx, openssl, curl,
# python3 (scripts/ci/install.sh installs them).
#
# Every process it starts is stopped by its EXIT trap; everything is on
# 127.0.0.1; every load is a fixed request count under `timeout`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

gate=0
case ${1:-} in
--gate) gate=1 ;;
'') ;;
-h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    printf 'cost: unknown argument %s (try --help)\n' "$1" >&2
    exit 2
    ;;
esac

all_protocols="http1 http1-close https h2c h2 grpc"
protocols=${PROTOCOLS:-$all_protocols}
if ((gate)); then
    targets=${TARGETS:-lb}
    syscalls=${SYSCALLS:-0}
else
    targets=${TARGETS:-lb nginx}
    syscalls=${SYSCALLS:-1}
fi
scale=${SCALE:-1}
clients=${CLIENTS:-1}
streams=${STREAMS:-16}
read -ra lb_flags <<<"${LB_FLAGS:-}"
budgets=${BUDGETS:-$here/cost-budgets.toml}

die() {
    printf 'cost: error: %s\n' "$*" >&2
    exit 1
}
note() { printf '==> %s\n' "$*" >&2; }

for p in $protocols; do
    [[ " $all_protocols " == *" $p "* ]] || die "unknown protocol '$p' (known: $all_protocols)"
done
for t in $targets; do
    [[ $t == lb || $t == nginx ]] || die "TARGETS may name lb and nginx, not '$t'"
done
[[ $scale =~ ^[1-9][0-9]*$ ]] || die "SCALE must be a positive integer, got '$scale'"
[[ $syscalls == 0 || $syscalls == 1 ]] || die "SYSCALLS must be 0 or 1, got '$syscalls'"
if ((gate)); then
    [[ $targets == lb ]] || die "--gate measures the LB only (TARGETS=lb)"
    [[ -z ${LB_FLAGS:-}${CLIENTS:-}${STREAMS:-} && $scale == 1 ]] ||
        die "--gate measures what the budgets are for: no LB_FLAGS, CLIENTS, STREAMS or SCALE"
    [[ -r $budgets ]] || die "no budget file: $budgets"
fi

# Request counts per protocol: N1 and N2 (the difference is what is
# measured). Chosen so that the gate's six protocols take a few minutes on
# 2 shared cores under valgrind (Ir(N2) - Ir(N1) is 100-400 M instructions).
declare -A n1 n2
n1=([http1]=2000 [http1-close]=400 [https]=2000 [h2c]=1024 [h2]=1024 [grpc]=1024)
n2=([http1]=12000 [http1-close]=2400 [https]=10000 [h2c]=5120 [h2]=5120 [grpc]=4096)
for p in $protocols; do
    n1[$p]=$((n1[$p] * scale))
    n2[$p]=$((n2[$p] * scale))
done

# Budgets (--gate), read before anything starts.
declare -A budget
if ((gate)); then
    # protocol -> budgeted instructions per request; "tolerance" -> percent
    lines=$(python3 - "$budgets" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    doc = tomllib.load(f)
tolerance = doc.get("tolerance_percent")
if not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 100:
    sys.exit(f"{sys.argv[1]}: tolerance_percent must be a number in [0, 100)")
lines = [f"tolerance {tolerance}"]
for name, entry in doc.get("budgets", {}).items():
    if not isinstance(entry.get("instructions"), int) or not entry.get("commit") or not entry.get("why"):
        sys.exit(f"{sys.argv[1]}: budgets.{name} needs instructions (an integer), commit and why")
    lines.append(f"{name} {entry['instructions']}")
print("\n".join(lines))
EOF
    ) || die "cannot read $budgets"
    while read -r k v; do budget[$k]=$v; done <<<"$lines"
    [[ -n ${budget[tolerance]:-} ]] || die "cannot read $budgets"
    over() { awk -v g="$1" -v w="${budget[$2]}" -v t="${budget[tolerance]}" 'BEGIN { exit !(g > w * (1 + t / 100)) }'; }
fi

# --- tools and binaries ----------------------------------------------------------------
for tool in valgrind h2load curl openssl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (scripts/ci/install.sh installs it)"
done
((syscalls == 0)) || command -v strace >/dev/null 2>&1 || die "strace is not installed"
nginx_bin=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
if [[ " $targets " == *" nginx "* ]]; then
    [[ -x $nginx_bin ]] || die "nginx not found (NGINX_BIN)"
fi

case "$(uname -m)" in
x86_64 | amd64) triple=x86_64-unknown-linux-gnu ;;
aarch64 | arm64) triple=aarch64-unknown-linux-gnu ;;
*) die "unsupported CPU $(uname -m)" ;;
esac
static_dir=$root/target/$triple/release
lb_bin=${LB_BIN:-$static_dir/lb}
backend_bin=${BACKEND_BIN:-$static_dir/backend}
if [[ ! -x $lb_bin || ! -x $backend_bin ]]; then
    [[ -z ${LB_BIN:-}${BACKEND_BIN:-} ]] || die "not executable: $lb_bin or $backend_bin"
    note "building the static release binaries (scripts/build-images.sh --binaries-only)"
    "$root/scripts/build-images.sh" --binaries-only >&2 || die "the static release build failed"
fi
for b in "$lb_bin" "$backend_bin"; do [[ -x $b ]] || die "not executable: $b"; done

# --- work dir, processes ---------------------------------------------------------------
if [[ -n ${KEEP_DIR:-} ]]; then
    work=$KEEP_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-cost.XXXXXX")
fi
pids=()  # backends
proxy='' # the proxy of the current measurement
tracer=''

stop_pid() { # pid [signal]: signal, wait up to 60 s (valgrind writes its file), then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill "-${2:-TERM}" "$pid" 2>/dev/null || true
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 1
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local p
    trap - EXIT
    [[ -z $tracer ]] || stop_pid "$tracer" INT || true
    [[ -z $proxy ]] || stop_pid "$proxy" || true
    for p in "${pids[@]}"; do stop_pid "$p" || true; done
    [[ -n ${KEEP_DIR:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_ok() { # pid log what curl-args...: poll (bounded: 180 s, valgrind starts slowly)
    local pid=$1 log=$2 what=$3 i
    shift 3
    for ((i = 0; i < 900; i++)); do
        curl -fsS --max-time 2 -o /dev/null "$@" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    printf '%s did not answer (curl %s) within 180 s, or exited; its log:\n' "$what" "$*" >&2
    tail -n 30 "$log" >&2 || true
    return 1
}

# --- certificate, gRPC frame, backends ------------------------------------------------
cert=$work/cert.pem
key=$work/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$key" -out "$cert" -subj /CN=localhost \
    -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' >/dev/null 2>&1 ||
    die "openssl could not make the certificate"
grpc_frame=$work/grpc-get-request.bin
printf '\0\0\0\0\0' >"$grpc_frame"
grpc_path=/roundhouse.v1.Hosts/Get

b1=127.0.0.1:$(free_port)
b2=127.0.0.1:$(free_port)
for n in 1 2; do
    b=b$n
    "$backend_bin" --listen "${!b}" --name "backend-$n" --drain-seconds 0 >"$work/backend-$n.log" 2>&1 &
    pids+=("$!")
    wait_ok "$!" "$work/backend-$n.log" "backend-$n" "http://${!b}/healthz" || die "backend-$n did not start"
done
note "backends on $b1 and $b2"

# --- one proxy -------------------------------------------------------------------------
tls_of() { [[ $1 == https || $1 == h2 ]]; }

# start_proxy target protocol mode(callgrind|native) tag: starts it, waits
# until it serves; sets proxy (pid), port, plog, cgfile. A port chosen free
# can be taken before the proxy binds it (h2load's own connections use the
# same ephemeral range): then it starts again on other ports.
start_proxy() {
    local try
    for try in 1 2 3; do
        start_proxy_once "$@" && return 0
        grep -qi 'address already in use' "$plog" 2>/dev/null || die "$1 did not start or does not serve $2 (see $plog)"
        stop_pid "$proxy" || true
        proxy=''
        note "$1: a port was taken between choosing and binding it; starting again ($try of 3)"
    done
    die "$1 could not bind free ports three times"
}

start_proxy_once() {
    local t=$1 p=$2 mode=$3 tag=$4 dir=$work/$1-$2-$4 run=() flags=() tmpl opts='' admin listen unset=() v
    mkdir -p "$dir"
    port=$(free_port)
    cgfile=$dir/callgrind.out
    if [[ $mode == callgrind ]]; then
        run=(valgrind --tool=callgrind "--callgrind-out-file=$cgfile" "--log-file=$dir/valgrind.log")
    fi
    if [[ $t == nginx ]]; then
        case $p in
        http1 | http1-close) tmpl=proxy ;;
        https | h2) tmpl=tls opts='ssl http2' ;;
        h2c) tmpl=h2c opts=http2 ;;
        grpc) tmpl=grpc opts=http2 ;;
        esac
        # nginx >= 1.25.1 spells HTTP/2 `http2 on;`, older ones on `listen`.
        local http2_on=''
        if printf '%s\n%s\n' 1.25.1 "$nginx_version" | sort -V -C; then
            [[ $opts == *http2* ]] && http2_on='http2 on;'
            opts=${opts/http2/}
        fi
        sed -e "s|@PREFIX@|$dir|g" -e "s|@LISTEN_PORT@|$port|g" -e "s|@LISTEN_OPTS@|$opts|g" \
            -e "s|@HTTP2_ON@|$http2_on|g" -e "s|@CERT@|$cert|g" -e "s|@KEY@|$key|g" \
            -e "s|@BACKEND1@|$b1|g" -e "s|@BACKEND2@|$b2|g" -e "s|@WORKERS@|1|g" \
            -e "s|@FORWARDING@||g" -e "s|@NAME@|-|g" "$here/nginx/$tmpl.conf.tmpl" >"$dir/nginx.conf"
        plog=$dir/error.log
        "${run[@]}" "$nginx_bin" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
            -g 'daemon off; master_process off;' >"$dir/stdout.log" 2>&1 &
        proxy=$!
    else
        listen=127.0.0.1:$port
        if tls_of "$p"; then
            flags+=(--tls-cert "$cert" --tls-key "$key" --tls-listen "127.0.0.1:$port")
            listen=127.0.0.1:$(free_port)
        fi
        [[ $p == grpc ]] && flags+=(--upstream-protocol h2c)
        admin=$(free_port)
        for v in $(compgen -e); do
            [[ $v == LB_* || $v == RUST_LOG ]] && unset+=(-u "$v")
        done
        plog=$dir/lb.log
        env "${unset[@]}" "${run[@]}" "$lb_bin" serve --listen "$listen" --admin-listen "127.0.0.1:$admin" \
            --backend "$b1" --backend "$b2" --workers 1 "${flags[@]}" "${lb_flags[@]}" >"$plog" 2>&1 &
        proxy=$!
        wait_ok "$proxy" "$plog" "lb admin" "http://127.0.0.1:$admin/readyz" || return 1
    fi
    local probe=()
    case $p in
    http1 | http1-close) probe=("http://127.0.0.1:$port/host") ;;
    https) probe=(-k --http1.1 "https://127.0.0.1:$port/host") ;;
    h2) probe=(-k --http2 "https://127.0.0.1:$port/host") ;;
    h2c | grpc) probe=(--http2-prior-knowledge "http://127.0.0.1:$port/host") ;;
    esac
    wait_ok "$proxy" "$plog" "$t ($p)" "${probe[@]}" || return 1
}

load() { # protocol requests out: one fixed-count h2load run against $port, checked
    local p=$1 n=$2 out=$3 args=() url=http://127.0.0.1:$port/host
    case $p in
    http1) args=(--h1 "-c$clients") ;;
    http1-close) args=(--h1 "-c$clients" -H 'Connection: close') ;;
    https) args=(--h1 "-c$clients") url=https://127.0.0.1:$port/host ;;
    h2c) args=("-c$clients" "-m$streams") ;;
    h2) args=("-c$clients" "-m$streams") url=https://127.0.0.1:$port/host ;;
    grpc) args=("-c$clients" "-m$streams" -d "$grpc_frame" -H 'content-type: application/grpc' -H 'te: trailers')
        url=http://127.0.0.1:$port$grpc_path ;;
    esac
    timeout 600 h2load -n "$n" "${args[@]}" "$url" >"$out" 2>&1 || die "h2load failed ($p, $n requests); see $out: $(tail -n 3 "$out")"
    local ok two data
    ok=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$out")
    two=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$out")
    [[ $ok == "$n" && $two == "$n" ]] || die "$p: $ok of $n requests succeeded, $two with 2xx; see $out"
    if tls_of "$p"; then
        local want=http/1.1
        [[ $p == h2 ]] && want=h2
        grep -q "^Application protocol: $want" "$out" || die "$p: h2load did not negotiate $want; see $out"
    fi
    if [[ $p == grpc ]]; then
        # Every answer must carry the GetResponse message (5 + 2 +
        # len("backend-N") bytes): a trailers-only error carries none.
        data=$(sed -n 's/^traffic: .* (\([0-9]*\)) data.*/\1/p' "$out")
        ((data >= 15 * n)) || die "grpc: $data data bytes for $n calls (no message?); see $out"
    fi
}

# instructions target protocol requests tag -> Ir of a whole run
instructions() {
    local t=$1 p=$2 n=$3 tag=$4 ir
    start_proxy "$t" "$p" callgrind "$tag"
    load "$p" "$n" "$(dirname "$cgfile")/h2load.out"
    stop_pid "$proxy" || die "$t did not stop within 60 s of SIGTERM"
    proxy=''
    ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$cgfile" 2>/dev/null || true)
    [[ $ir =~ ^[0-9]+$ ]] || die "no instruction count in $cgfile (valgrind log: $(dirname "$cgfile")/valgrind.log)"
    printf '%s\n' "$ir"
}

# syscall_count target protocol -> "per_request top" (native run, strace attached after a warm-up)
syscall_count() {
    local t=$1 p=$2 n=${n2[$2]} dir tasks=() threads attached tid summary i
    start_proxy "$t" "$p" native strace
    dir=$(dirname "$cgfile")
    load "$p" "${n1[$p]}" "$dir/warmup.out"
    for tid in /proc/"$proxy"/task/*; do tasks+=(-p "${tid##*/}"); done
    threads=$((${#tasks[@]} / 2))
    summary=$dir/strace.txt
    strace -c -f -o "$summary" "${tasks[@]}" 2>"$dir/strace.log" &
    tracer=$!
    # attached when strace has said so for every thread (bounded: 10 s)
    for ((i = 0; i < 100; i++)); do
        attached=$(grep -c attached "$dir/strace.log" 2>/dev/null || true)
        ((${attached:-0} >= threads)) && break
        sleep 0.1
    done
    load "$p" "$n" "$dir/h2load.out"
    stop_pid "$tracer" INT || true
    tracer=''
    stop_pid "$proxy" || true
    proxy=''
    # strace -c: % time, seconds, usecs/call, calls, [errors], syscall
    local total top
    total=$(awk -v n="$n" '$1 ~ /^[0-9.]+$/ && $NF == "total" { printf "%.2f", $4 / n }' "$summary")
    top=$(awk -v n="$n" '$1 ~ /^[0-9.]+$/ && $NF != "total" && $4 / n >= 0.05 { printf "%s %.2f\n", $NF, $4 / n }' "$summary" |
        sort -k2,2gr -k1,1 | paste -sd, - | sed 's/,/, /g')
    printf '%s\t%s\n' "${total:-?}" "${top:--}"
}

nginx_version=''
if [[ " $targets " == *" nginx "* ]]; then
    nginx_version=$("$nginx_bin" -v 2>&1 | sed -n 's|^nginx version: nginx/\([0-9.]*\).*|\1|p')
fi

# --- measure ---------------------------------------------------------------------------
# per_request target protocol tag -> "instructions_per_request Ir(N1) Ir(N2)"
per_request() {
    local t=$1 p=$2 a b
    a=$(instructions "$t" "$p" "${n1[$p]}" "n1$3")
    b=$(instructions "$t" "$p" "${n2[$p]}" "n2$3")
    awk -v a="$a" -v b="$b" -v n="${n1[$p]}" -v m="${n2[$p]}" 'BEGIN { printf "%.0f %s %s\n", (b - a) / (m - n), a, b }'
}

results=$work/results.tsv
: >"$results"
for p in $protocols; do
    for t in $targets; do
        read -r per a b < <(per_request "$t" "$p" '')
        runs=$per
        # Over budget in the gate: measured again, up to 3 times in all, and
        # the lowest count judged (what varies between runs is how often a
        # wake-up finds its bytes not there yet, which only adds work).
        if ((gate)) && [[ -n ${budget[$p]:-} ]]; then
            for retry in 2 3; do
                over "$per" "$p" || break
                note "$p: $per instructions/request is over budget; measuring again ($retry of 3)"
                read -r again again_n1 again_n2 < <(per_request "$t" "$p" "-$retry")
                runs="$runs, $again"
                ((again < per)) && per=$again a=$again_n1 b=$again_n2
            done
        fi
        startup=$(awk -v a="$a" -v per="$per" -v n="${n1[$p]}" 'BEGIN { printf "%.0f", a - per * n }')
        sc='-' top='-'
        if ((syscalls)); then
            IFS=$'\t' read -r sc top < <(syscall_count "$t" "$p")
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$t" "$per" "$sc" "${n1[$p]}" "$a" "${n2[$p]}" "$b" "$startup" "$top" "$runs" >>"$results"
        note "$(printf '%-11s %-5s %8s instructions/request (Ir %s @ %s, %s @ %s requests); syscalls/request %s' \
            "$p" "$t" "$per" "$a" "${n1[$p]}" "$b" "${n2[$p]}" "$sc")"
    done
done

# --- report ----------------------------------------------------------------------------
value() { awk -F'\t' -v p="$1" -v t="$2" -v c="$3" '$1 == p && $2 == t { print $c }' "$results"; }
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit="$commit + uncommitted changes"
fi
binary="\`$lb_bin\` (modified $(date -u -r "$lb_bin" '+%Y-%m-%d %H:%M UTC'))"

if ((gate)); then
    status=0
    printf '\n%-12s %10s %10s %8s  %-8s %s\n' protocol measured budget change verdict runs
    for p in $protocols; do
        got=$(value "$p" lb 3) runs=$(value "$p" lb 11)
        want=${budget[$p]:-}
        if [[ -z $want ]]; then
            printf '%-12s %10s %10s %8s  %-8s %s\n' "$p" "$got" - - FAIL "(no budget in $(basename "$budgets"))"
            status=1
            continue
        fi
        change=$(awk -v g="$got" -v w="$want" 'BEGIN { printf "%+.1f%%", (g - w) * 100 / w }')
        verdict=pass
        if over "$got" "$p"; then
            verdict=FAIL
            status=1
        fi
        printf '%-12s %10s %10s %8s  %-8s %s\n' "$p" "$got" "$want" "$change" "$verdict" "$runs"
        if [[ $verdict == pass ]] && awk -v g="$got" -v w="$want" -v t="${budget[tolerance]}" 'BEGIN { exit !(g < w * (1 - 2 * t / 100)) }'; then
            printf '%-12s %s\n' '' "(well under its budget: lower it in $(basename "$budgets") to keep the gain)"
        fi
    done
    printf '\nA protocol fails when over its budget by more than %s %%. lb %s; repository at %s; %s.\n' \
        "${budget[tolerance]}" "$binary" "$commit" "$(valgrind --version)"
    printf 'Instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1) under callgrind; method: bench/cost.sh --help.\n'
    exit "$status"
fi

echo "### Cost per request: user-space instructions (callgrind) and syscalls (strace)"
echo
echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), repository at $commit; $(nproc) CPUs; kernel $(uname -r);"
echo "$(valgrind --version); $(h2load --version | head -n 1); $(strace -V 2>/dev/null | head -n 1)${nginx_version:+; nginx/$nginx_version}."
echo "lb: $binary with \`--workers 1\`${LB_FLAGS:+ $LB_FLAGS}; nginx: one worker, \`master_process off\`; h2load with $clients connection(s), $streams streams each for HTTP/2; SCALE=$scale."
echo
echo "| protocol | lb instructions/request | nginx instructions/request | lb / nginx | lb syscalls/request | nginx syscalls/request |"
echo "|---|---:|---:|---:|---:|---:|"
for p in $protocols; do
    li=$(value "$p" lb 3) ni=$(value "$p" nginx 3) ls=$(value "$p" lb 4) ns=$(value "$p" nginx 4)
    r=$(awk -v a="${li:-0}" -v b="${ni:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f×", a / b; else print "—" }')
    printf '| %s | %s | %s | %s | %s | %s |\n' "$p" "${li:-—}" "${ni:-—}" "$r" "${ls:-—}" "${ns:-—}"
done
echo
echo "<details><summary>raw rows (protocol, target, instructions/request, syscalls/request, N1, Ir(N1), N2, Ir(N2), start-up + shutdown Ir, syscalls/request by name, runs)</summary>"
echo
echo '```'
cat "$results"
echo '```'
echo "</details>"
