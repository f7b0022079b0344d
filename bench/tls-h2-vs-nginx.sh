#!/usr/bin/env bash
# bench/tls-h2-vs-nginx.sh — TLS termination, HTTP/2 and gRPC: our load
# balancer (`lb serve`) next to Debian's nginx configured the same way, in ONE
# run, in front of the SAME two backends (target/release/backend, which speaks
# HTTP/1.1, h2c and gRPC on one port). Method as bench/lb-vs-nginx.sh:
# alternating rounds (odd rounds nginx first, even rounds lb first), medians,
# CPU per request from /proc/PID/stat (utime + stime of the proxy process(es)
# over a run ÷ the work done in it), RSS from /proc/PID/status (VmRSS; nginx =
# master + workers). Everything on 127.0.0.1; every load bounded in time.
#
# Phases (PHASES, in this order by default):
#   https      HTTPS keep-alive: `wrk -t2 -c64 --latency https://…/host`
#              (HTTP/1.1 over TLS; handshakes only at the start): req/s, p50,
#              p99, CPU per request, peak RSS;
#   handshake  new TLS connections per second, full and resumed, with
#              `openssl s_time -new` / `-reuse`, HANDSHAKE_CLIENTS processes in
#              parallel, each connection also fetching HANDSHAKE_PATH with
#              HTTP/1.0 (TLS 1.3 sends its session tickets after the
#              handshake; s_time only receives them, and so can resume, when
#              it reads a response); connections/s, CPU per connection, and
#              the share of `-reuse` connections that really resumed;
#   h2c        HTTP/2 with prior knowledge on the plain port:
#              `h2load -c4 -m16 http://…/host`: req/s, CPU per request;
#   h2tls      HTTP/2 over TLS (ALPN h2): `h2load -c4 -m16 https://…/host`;
#   grpc       unary gRPC calls of roundhouse.v1.Hosts/Get through the LB
#              (h2c in, h2c to the backends) and through nginx's
#              `grpc_pass grpc://`: h2load -c4 -m16 with the 5-byte gRPC frame
#              of the empty request as data and `content-type:
#              application/grpc`, `te: trailers`; both proxies are first
#              checked with a real gRPC client (`lb check --grpc`), and the
#              response bytes per call are checked to carry a message;
#   idle       memory per idle TLS connection: RSS growth of the proxy with
#              IDLE_CONNECTIONS open TLS connections, after the handshake only
#              ("handshake") and after one HTTP/1.1 request on each
#              ("after a request"), ÷ IDLE_CONNECTIONS;
#   idle-h2c   (not in the default list) memory per idle HTTP/2 connection
#              with prior knowledge on the plain port: the same method, each
#              client connection sending the preface and its SETTINGS
#              (acknowledging the server's) and, "after a request", one
#              `GET /host` stream read to its end;
#   http       (not in the default list) plain HTTP/1.1 keep-alive, `wrk
#              -c64 http://…/host`, the reference without TLS; the one phase
#              today's lb (no TLS, no h2c) can already run.
# The proxies of a phase are started for it and stopped after it, so each
# phase starts from fresh processes. The report (Markdown) goes to stdout,
# progress to stderr.
#
# nginx (bench/nginx/{tls,h2c,grpc}.conf.tmpl; proxy.conf.tmpl for `http`):
# worker_processes = the LB's --workers, access_log off, upstream keepalive 64,
# keepalive_requests 100000, `ssl_session_cache shared:SSL:10m`, TLS 1.2 and
# 1.3, `listen … ssl http2` (nginx < 1.25.1) or `listen … ssl` + `http2 on`.
# One certificate and key for both (ECDSA P-256, self-signed, made here with
# openssl for 127.0.0.1 and localhost). nginx runs as a non-daemon from a temp
# prefix: no system configuration is read or touched.
#
# The LB side: every LB flag of a role is a variable, so the script follows the
# LB's flags if they change (@CERT@ and @KEY@ are replaced by the files):
#   LB_TLS_FLAGS    default "--tls-cert @CERT@ --tls-key @KEY@ --tls-listen
#                   127.0.0.1:@PORT@" (@PORT@: the port under test; with it the
#                   plain --listen moves to a free port) (https, handshake,
#                   h2tls, idle)
#   LB_H2C_FLAGS    default "" (h2c by prior knowledge on the plain --listen)
#   LB_GRPC_FLAGS   default "--upstream-protocol h2c" (gRPC to h2c backends)
#   LB_HTTP_FLAGS   default "" (the http phase)
#   LB_FLAGS        added to every LB (default "")
# Every LB runs as `LB_BIN serve --listen 127.0.0.1:PORT --admin-listen
# 127.0.0.1:PORT --backend B1 --backend B2 --workers WORKERS <role flags>`, and
# must answer /readyz on its admin port.
#
# Environment:
#   TARGETS         "nginx lb" (default) or "nginx" (NGINX_ONLY=1 does the same)
#   PHASES          default "https handshake h2c h2tls grpc idle"; "http" also exists
#   ROUNDS          alternating rounds per phase (default 3)
#   DURATION        seconds per load run (default 6)
#   WARMUP          seconds of warm-up per target and phase (default 1)
#   CONNECTIONS     wrk -c for https/http (default 64); THREADS wrk -t (default 2)
#   H2_CLIENTS, H2_STREAMS  h2load -c and -m (default 4 and 16)
#   HANDSHAKE_CLIENTS  parallel s_time processes (default 2)
#   HANDSHAKE_PATH  page each s_time connection fetches (default /host)
#   IDLE_CONNECTIONS  idle TLS connections (default 1000)
#   WORKERS         the LB's --workers and nginx's worker_processes (default 2)
#   LB_BIN          the lb binary; CHECK_BIN the binary whose `check --grpc`
#                   verifies the gRPC answers (default LB_BIN); BACKEND_BIN
#                   (default: cargo build --release, then target/release/)
#   NGINX_BIN       nginx (default: on PATH; apt-get install nginx if missing)
#   KEEP_DIR        keep certificates, configs, logs and raw outputs there
#
# Usage: bench/tls-h2-vs-nginx.sh > report.md
#        NGINX_ONLY=1 ROUNDS=1 DURATION=2 bench/tls-h2-vs-nginx.sh   # smoke run

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

targets=${TARGETS:-nginx lb}
[[ ${NGINX_ONLY:-0} == 1 ]] && targets=nginx
phases=${PHASES:-https handshake h2c h2tls grpc idle}
rounds=${ROUNDS:-3}
duration=${DURATION:-6}
duration=${duration%s}
warmup=${WARMUP:-1}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
h2_clients=${H2_CLIENTS:-4}
h2_streams=${H2_STREAMS:-16}
hs_clients=${HANDSHAKE_CLIENTS:-2}
hs_path=${HANDSHAKE_PATH:-/host}
idle_conns=${IDLE_CONNECTIONS:-1000}
workers=${WORKERS:-2}
lb_tls_flags=${LB_TLS_FLAGS---tls-cert @CERT@ --tls-key @KEY@ --tls-listen 127.0.0.1:@PORT@}
lb_h2c_flags=${LB_H2C_FLAGS-}
lb_grpc_flags=${LB_GRPC_FLAGS---upstream-protocol h2c}
lb_http_flags=${LB_HTTP_FLAGS-}
lb_flags=${LB_FLAGS-}

die() {
    printf 'tls-h2-vs-nginx: error: %s\n' "$*" >&2
    exit 1
}
note() {
    printf '==> %s\n' "$*" >&2
}

for t in $targets; do
    [[ $t == nginx || $t == lb ]] || die "TARGETS may name nginx and lb, not '$t'"
done
for p in $phases; do
    case $p in https | handshake | h2c | h2tls | grpc | idle | idle-h2c | http) ;; *) die "unknown phase '$p'" ;; esac
done
for v in rounds duration connections threads h2_clients h2_streams hs_clients idle_conns workers; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ $warmup =~ ^[0-9]+$ ]] || die "warmup must be a non-negative integer, got '$warmup'"
[[ $hs_path == /* ]] || die "HANDSHAKE_PATH must start with /, got '$hs_path'"

# --- tools (Debian packages, installed when missing) ---------------------------------
apt_install() { # package...
    command -v apt-get >/dev/null 2>&1 || die "missing $* and apt-get is not available"
    note "installing $* (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get install -y -q "$@" >&2 ||
        { timeout 600 apt-get update -q >&2 && timeout 600 apt-get install -y -q "$@" >&2; } ||
        die "apt-get install $* failed"
}
missing=()
for tool in wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl python3:python3 pgrep:procps; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
nginx_bin=${NGINX_BIN:-}
if [[ -z $nginx_bin ]]; then
    if command -v nginx >/dev/null 2>&1; then
        nginx_bin=$(command -v nginx)
    elif [[ -x /usr/sbin/nginx ]]; then
        nginx_bin=/usr/sbin/nginx
    else
        missing+=(nginx)
        nginx_bin=/usr/sbin/nginx
    fi
fi
((${#missing[@]} == 0)) || apt_install "${missing[@]}"
[[ -x $nginx_bin ]] || die "nginx binary not found or not executable: $nginx_bin"
for tmpl in tls h2c grpc proxy; do
    [[ -r $here/nginx/$tmpl.conf.tmpl ]] || die "missing template $here/nginx/$tmpl.conf.tmpl"
done

# nginx >= 1.25.1 has `http2 on;`; older ones take `http2` on `listen`.
nginx_version=$("$nginx_bin" -v 2>&1 | sed -n 's|^nginx version: nginx/\([0-9.]*\).*|\1|p')
[[ -n $nginx_version ]] || die "cannot read nginx's version"
if printf '%s\n%s\n' 1.25.1 "$nginx_version" | sort -V -C; then
    tls_listen_opts=ssl h2c_listen_opts='' http2_on='http2 on;'
else
    tls_listen_opts='ssl http2' h2c_listen_opts=http2 http2_on=''
fi

# --- our binaries --------------------------------------------------------------------
if [[ -z ${BACKEND_BIN:-} || (-z ${LB_BIN:-} && -z ${CHECK_BIN:-}) ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found and LB_BIN/BACKEND_BIN not set"
    note "building lb and backend (release)"
    (cd "$root" && timeout 3000 cargo build --release -p lb -p backend) >&2 ||
        die "cargo build --release -p lb -p backend failed"
fi
lb_bin=${LB_BIN:-$root/target/release/lb}
check_bin=${CHECK_BIN:-$lb_bin}
backend_bin=${BACKEND_BIN:-$root/target/release/backend}
[[ -x $backend_bin ]] || die "backend binary not found or not executable: $backend_bin"
[[ $targets != *lb* || -x $lb_bin ]] || die "lb binary not found or not executable: $lb_bin"
[[ $phases != *grpc* || -x $check_bin ]] || die "no binary for the gRPC check (CHECK_BIN): $check_bin"

if [[ -n ${KEEP_DIR:-} ]]; then
    work=$KEEP_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-tls-h2.XXXXXX")
fi

# --- process bookkeeping and cleanup ---------------------------------------------------
declare -A port ppid plog
pids=() # the backends; the proxies of the running phase are in ppid (nginx: the master)

children_of() { pgrep -P "$1" 2>/dev/null || true; }

stop_pid() { # pid: TERM, wait up to 5 s, then KILL (and leftover children)
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

stop_proxy() { # target
    stop_pid "${ppid[$1]}"
    unset 'ppid[$1]'
}

stop_proxies() {
    local t
    for t in "${!ppid[@]}"; do
        stop_proxy "$t"
    done
}

cleanup() {
    local pid
    trap - EXIT
    stop_proxies
    for pid in "${pids[@]}"; do
        stop_pid "$pid"
    done
    [[ -n ${KEEP_DIR:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ok() { # name pid log curl-args...: poll (bounded: 15 s) until curl succeeds
    local name=$1 pid=$2 log=$3 i
    shift 3
    for ((i = 0; i < 150; i++)); do
        if curl -fsS --max-time 1 -o /dev/null "$@" 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    printf '%s did not answer (curl %s) within 15 s, or exited; its log:\n' "$name" "$*" >&2
    cat "$log" >&2 || true
    return 1
}

rss_total=0
read_rss() { # pids... -> rss_total (kB)
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

clk_tck=$(getconf CLK_TCK)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- certificate, key, gRPC frame -------------------------------------------------------
cert=$work/cert.pem
key=$work/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$key" -out "$cert" -subj /CN=localhost \
    -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' >/dev/null 2>&1 ||
    die "openssl could not make the certificate"
# The empty roundhouse.v1.GetRequest in a gRPC frame: not compressed, length 0.
grpc_frame=$work/grpc-get-request.bin
printf '\0\0\0\0\0' >"$grpc_frame"
grpc_path=/roundhouse.v1.Hosts/Get

# --- backends ------------------------------------------------------------------------------
b1=127.0.0.1:$(free_port)
b2=127.0.0.1:$(free_port)
for n in 1 2; do
    b=b$n
    "$backend_bin" --listen "${!b}" --name "backend-$n" --drain-seconds 0 >"$work/backend-$n.log" 2>&1 &
    pids+=("$!")
    wait_ok "backend-$n" "$!" "$work/backend-$n.log" "http://${!b}/healthz"
done
note "backends on $b1 and $b2"

# --- proxies per role ----------------------------------------------------------------------
# role: tls (https, handshake, h2tls, idle), h2c, grpc, http

render() { # template out prefix listen-port listen-opts
    sed -e "s|@PREFIX@|$3|g" -e "s|@LISTEN_PORT@|$4|g" -e "s|@LISTEN_OPTS@|$5|g" \
        -e "s|@HTTP2_ON@|$http2_on|g" -e "s|@CERT@|$cert|g" -e "s|@KEY@|$key|g" \
        -e "s|@BACKEND1@|$b1|g" -e "s|@BACKEND2@|$b2|g" -e "s|@WORKERS@|$workers|g" \
        -e "s|@FORWARDING@||g" -e "s|@NAME@|-|g" "$1" >"$2"
}

probe_args() { # target role -> curl arguments that must succeed once it serves
    local p=${port[$1]}
    case $2 in
    tls) printf '%s\n' -k "https://127.0.0.1:$p/host" ;;
    h2c | grpc) printf '%s\n' --http2-prior-knowledge "http://127.0.0.1:$p/host" ;;
    http) printf '%s\n' "http://127.0.0.1:$p/host" ;;
    esac
}

start_proxy() { # target role
    local t=$1 role=$2 dir=$work/$1-$2 args=() flags=() admin opts tmpl listen
    mkdir -p "$dir"
    port[$t]=$(free_port)
    if [[ $t == nginx ]]; then
        case $role in
        tls) tmpl=tls opts=$tls_listen_opts ;;
        h2c) tmpl=h2c opts=$h2c_listen_opts ;;
        grpc) tmpl=grpc opts=$h2c_listen_opts ;;
        http) tmpl=proxy opts='' ;;
        esac
        render "$here/nginx/$tmpl.conf.tmpl" "$dir/nginx.conf" "$dir" "${port[$t]}" "$opts"
        plog[$t]=$dir/error.log
        "$nginx_bin" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' \
            >"$dir/stdout.log" 2>&1 &
        ppid[$t]=$!
    else
        case $role in
        tls) opts=$lb_tls_flags ;;
        h2c) opts=$lb_h2c_flags ;;
        grpc) opts=$lb_grpc_flags ;;
        http) opts=$lb_http_flags ;;
        esac
        opts=${opts//@CERT@/$cert}
        opts=${opts//@KEY@/$key}
        # TLS is served on --tls-listen (@PORT@, the port under test); the
        # plain listener then moves to a port of its own.
        listen=127.0.0.1:${port[$t]}
        if [[ $opts == *@PORT@* ]]; then
            opts=${opts//@PORT@/${port[$t]}}
            listen=127.0.0.1:$(free_port)
        fi
        read -ra flags <<<"$opts $lb_flags"
        admin=$(free_port)
        plog[$t]=$dir/lb.log
        RUST_LOG=${RUST_LOG:-warn} "$lb_bin" serve --listen "$listen" \
            --admin-listen "127.0.0.1:$admin" --backend "$b1" --backend "$b2" \
            --workers "$workers" "${flags[@]}" >"${plog[$t]}" 2>&1 &
        ppid[$t]=$!
        wait_ok "lb ($role) admin" "${ppid[$t]}" "${plog[$t]}" "http://127.0.0.1:$admin/readyz" ||
            die "lb did not start for '$role' with: serve … ${flags[*]} (adapt LB_${role^^}_FLAGS)"
    fi
    mapfile -t args < <(probe_args "$t" "$role")
    wait_ok "$t ($role)" "${ppid[$t]}" "${plog[$t]}" "${args[@]}" || die "$t does not serve '$role'"
    verify_balances "$t" "$role"
}

verify_balances() { # target role: both backends answer (gRPC: 4 calls on one channel, 2 each)
    local t=$1 role=$2 seen out i args=()
    if [[ $role == grpc ]]; then
        out=$("$check_bin" check --grpc "http://127.0.0.1:${port[$t]}" --requests 4 --expect-backends 2 2>&1) ||
            die "$t does not balance gRPC calls of $grpc_path over both backends: $out"
        return 0
    fi
    mapfile -t args < <(probe_args "$t" "$role")
    # one curl per request (curl 7.88 fails a second h2c transfer on one connection)
    seen=$(for ((i = 0; i < 4; i++)); do curl -fsS --max-time 2 "${args[@]}"; done | sort -u | tr '\n' ' ')
    [[ $seen == "backend-1 backend-2 " ]] || die "$t ($role) does not alternate over both backends (saw: $seen)"
}

proxy_pids() { # target -> pids whose CPU and RSS count for it
    printf '%s\n' "${ppid[$1]}"
    [[ $1 == nginx ]] && children_of "${ppid[$1]}"
    return 0
}

negotiated() { # target -> "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519" as openssl s_client sees it
    local out
    out=$(timeout 5 openssl s_client -connect "127.0.0.1:${port[$1]}" -servername localhost \
        -alpn h2,http/1.1 </dev/null 2>/dev/null | tr -d '\0') || true
    printf '%s %s, ALPN %s' \
        "$(sed -n 's/^New, \(TLSv[0-9.]*\), Cipher is \(.*\)$/\1 \2/p' <<<"$out" | head -n 1)" \
        "$(sed -n 's/^Server Temp Key: \([^,]*\).*/\1/p' <<<"$out" | head -n 1)" \
        "$(sed -n 's/^ALPN protocol: //p' <<<"$out" | head -n 1)"
}

# --- load runs ------------------------------------------------------------------------------
results=$work/results.tsv
: >"$results"
run_seq=0

# parse_wrk file -> "rate p50_us p99_us count errors"
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
        END { printf "%s %s %s %s %d\n", rps + 0, p50 + 0, p99 + 0, req + 0, non2xx + sock }
    ' "$1"
}

# parse_h2load file -> "rate mean_us - count errors data_bytes"
parse_h2load() {
    awk '
        function us(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v + 0 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v * 1000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000000 }
            return v + 0
        }
        /^finished in/ { gsub(/,/, ""); rps = $4 }
        /^requests:/ { gsub(/,/, ""); ok = $8; bad = $10 + $12 + $14 }
        /^status codes:/ { gsub(/,/, ""); non2xx = $5 + $7 + $9 }
        /^traffic:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^data/) { d = $i; gsub(/[()]/, "", d); data = d } }
        /^time for request:/ { mean = us($6) }
        END { printf "%s %s - %s %d %s\n", rps + 0, mean + 0, ok + 0, bad + non2xx, data + 0 }
    ' "$1"
}

# record phase target round rate p50 p99 count errors cpu_us_per_unit peak_rss_kb load1 note
record() {
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$results"
}

load_cmd() { # phase target secs -> the load command, one word per line
    local p=${port[$2]} secs=$3
    case $1 in
    https) printf '%s\n' wrk "-t$threads" "-c$connections" "-d${secs}s" --latency "https://127.0.0.1:$p/host" ;;
    http) printf '%s\n' wrk "-t$threads" "-c$connections" "-d${secs}s" --latency "http://127.0.0.1:$p/host" ;;
    h2c) printf '%s\n' h2load -c "$h2_clients" -m "$h2_streams" -D "$secs" "http://127.0.0.1:$p/host" ;;
    h2tls) printf '%s\n' h2load -c "$h2_clients" -m "$h2_streams" -D "$secs" "https://127.0.0.1:$p/host" ;;
    grpc) printf '%s\n' h2load -c "$h2_clients" -m "$h2_streams" -D "$secs" -d "$grpc_frame" \
        -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$p$grpc_path" ;;
    esac
}

# measure_load phase target round: one bounded load run with CPU and peak RSS
measure_load() {
    local phase=$1 t=$2 round=$3 out cmd=() ppids=() t0 t1 sampler load1 _
    local rate p50 p99 count errors data cpu_us peak extra='-'
    read -r load1 _ </proc/loadavg
    run_seq=$((run_seq + 1))
    out=$work/run-$run_seq-$phase-$t-r$round.txt
    mapfile -t cmd < <(load_cmd "$phase" "$t" "$duration")
    mapfile -t ppids < <(proxy_pids "$t")
    t0=$(cpu_ticks "${ppids[@]}")
    sample_peak_rss "$duration" "$out.rss" "${ppids[@]}" &
    sampler=$!
    timeout $((duration + 30)) "${cmd[@]}" >"$out" 2>&1 || die "${cmd[0]} failed against $t ($phase); see $out: $(tail -n 5 "$out")"
    t1=$(cpu_ticks "${ppids[@]}")
    wait "$sampler" || true
    peak=$(cat "$out.rss")
    if [[ ${cmd[0]} == wrk ]]; then
        read -r rate p50 p99 count errors < <(parse_wrk "$out")
    else
        read -r rate p50 p99 count errors data < <(parse_h2load "$out")
        if [[ $phase == h2tls ]] && ! grep -q '^Application protocol: h2' "$out"; then
            die "$t did not negotiate h2 over TLS; see $out"
        fi
        if [[ $phase == grpc ]]; then
            # Every answer must carry the GetResponse frame (5 + 2 + len("backend-N")
            # bytes): a trailers-only error would carry no data.
            extra=$(awk -v d="$data" -v n="$count" 'BEGIN { printf "%.1f data bytes/call", n ? d / n : 0 }')
            awk -v d="$data" -v n="$count" 'BEGIN { exit !(n > 0 && d / n >= 15) }' ||
                die "$t answered gRPC calls without a message ($extra); see $out"
        fi
    fi
    ((count > 0)) || die "no requests completed against $t ($phase); see $out"
    cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" -v n="$count" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
    record "$phase" "$t" "$round" "$rate" "$p50" "$p99" "$count" "$errors" "$cpu_us" "$peak" "$load1" "$extra"
    note "$(printf '%-9s %-5s round %s: %10.0f /s  p50 %6.0f us  p99 %6s us  errors %d  cpu/req %s us  peak rss %s kB %s' \
        "$phase" "$t" "$round" "$rate" "$p50" "$p99" "$errors" "$cpu_us" "$peak" "${extra/-/}")"
}

# measure_handshakes target round mode(new|reuse): HANDSHAKE_CLIENTS s_time in parallel
measure_handshakes() {
    local t=$1 round=$2 mode=$3 phase=handshake-$3 ppids=() t0 t1 s0 s1 i spids=() out
    local total=0 resumed=0 fresh=0 n r f rate cpu_us load1 _ secs
    read -r load1 _ </proc/loadavg
    run_seq=$((run_seq + 1))
    out=$work/run-$run_seq-$phase-$t-r$round
    mapfile -t ppids < <(proxy_pids "$t")
    t0=$(cpu_ticks "${ppids[@]}")
    s0=$(date +%s%N)
    for ((i = 0; i < hs_clients; i++)); do
        timeout $((duration + 30)) openssl s_time -connect "127.0.0.1:${port[$t]}" "-$mode" \
            -time "$duration" -www "$hs_path" >"$out-$i.txt" 2>&1 &
        spids+=("$!")
    done
    for i in "${!spids[@]}"; do
        wait "${spids[$i]}" || die "openssl s_time failed against $t; see $out-$i.txt: $(tail -n 3 "$out-$i.txt")"
    done
    s1=$(date +%s%N)
    t1=$(cpu_ticks "${ppids[@]}")
    for ((i = 0; i < hs_clients; i++)); do
        n=$(sed -n 's/^\([0-9]*\) connections in [0-9.]*s;.*/\1/p' "$out-$i.txt" | tail -n 1)
        [[ -n $n ]] || die "cannot read s_time's count from $out-$i.txt"
        # progress lines: '*' a full handshake, 'r' a resumed one
        r=$(grep -E '^[*r]+$' "$out-$i.txt" | tr -cd 'r' | wc -c)
        f=$(grep -E '^[*r]+$' "$out-$i.txt" | tr -cd '*' | wc -c)
        total=$((total + n)) resumed=$((resumed + r)) fresh=$((fresh + f))
    done
    ((total > 0)) || die "no TLS connection completed against $t"
    secs=$(awk -v a="$s0" -v b="$s1" 'BEGIN { print (b - a) / 1e9 }')
    rate=$(awk -v n="$total" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
    cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" -v n="$total" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
    local share
    share=$(awk -v r="$resumed" -v f="$fresh" 'BEGIN { printf "%.1f%% resumed", (r + f) ? 100 * r / (r + f) : 0 }')
    record "$phase" "$t" "$round" "$rate" - - "$total" 0 "$cpu_us" - "$load1" "$share"
    note "$(printf '%-16s %-5s round %s: %8.1f conn/s  cpu/conn %s us  (%s; %s connections)' \
        "$phase" "$t" "$round" "$rate" "$cpu_us" "$share" "$total")"
}

# Holds IDLE_CONNECTIONS TLS connections open (after the handshake, or after
# one HTTP/1.1 request each), prints "ready N" and waits for stdin to close.
idle_client='
import asyncio, ssl, sys
port, count, request = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
async def one(sem, held):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10)
        if request:
            w.write(b"GET /host HTTP/1.1\r\nHost: bench\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(r.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        held.append(w)
async def main():
    sem, held = asyncio.Semaphore(50), []
    await asyncio.gather(*(one(sem, held) for _ in range(count)))
    print("ready", len(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in held:
        w.close()
asyncio.run(main())
'

# Holds IDLE_CONNECTIONS HTTP/2 connections with prior knowledge open (after
# the SETTINGS exchange, or after one GET /host stream each), prints "ready
# N" and waits for stdin to close. HTTP/2 framing by hand (RFC 9113): the
# request's header block uses the static table and literals only.
idle_h2c_client='
import asyncio, struct, sys
port, count, request = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
# :method GET, :scheme http, :path /host, :authority bench
BLOCK = b"\x82\x86\x44\x05/host\x41\x05bench"
async def read_frame(r):
    head = await asyncio.wait_for(r.readexactly(9), 10)
    length = int.from_bytes(head[:3], "big")
    payload = await asyncio.wait_for(r.readexactly(length), 10)
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload
async def one(sem, held):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        w.write(PREFACE + frame(4, 0, 0))
        if request:
            w.write(frame(1, 0x5, 1, BLOCK))
        settings = False
        status = None
        while True:
            kind, flags, stream, payload = await read_frame(r)
            if kind == 4 and not flags & 1:
                w.write(frame(4, 1, 0))
                settings = True
            if kind == 1 and stream == 1 and status is None:
                status = payload[:1]
            if kind == 7:
                raise RuntimeError("GOAWAY")
            if kind == 3 and stream == 1:
                raise RuntimeError("RST_STREAM")
            if settings and (not request or (stream == 1 and kind in (0, 1) and flags & 1)):
                break
        # 0x88: the static table entry ":status 200"
        if request and status != b"\x88":
            raise RuntimeError("not 200: %r" % status)
        await w.drain()
        held.append(w)
async def main():
    sem, held = asyncio.Semaphore(50), []
    await asyncio.gather(*(one(sem, held) for _ in range(count)))
    print("ready", len(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in held:
        w.close()
asyncio.run(main())
'

# measure_idle target round request(0|1) [client]: RSS growth per idle
# connection (client: tls, the default, or h2c)
measure_idle() {
    local t=$1 round=$2 req=$3 client=${4:-tls} phase ppids=() before after line per load1 _ cpid i code
    phase=idle-$([[ $client == h2c ]] && echo h2c-)$([[ $req == 1 ]] && echo request || echo handshake)
    code=$idle_client
    [[ $client == h2c ]] && code=$idle_h2c_client
    read -r load1 _ </proc/loadavg
    mapfile -t ppids < <(proxy_pids "$t")
    read_rss "${ppids[@]}"
    before=$rss_total
    run_seq=$((run_seq + 1))
    local fifo=$work/idle-$run_seq.stdin
    mkfifo "$fifo"
    python3 -c "$code" "${port[$t]}" "$idle_conns" "$req" <"$fifo" >"$work/idle-$run_seq.out" 2>&1 &
    cpid=$!
    exec 9>"$fifo"
    # wait (bounded: 60 s) for the client's "ready" line: an event, not a sleep
    line=''
    for ((i = 0; i < 600; i++)); do
        line=$(head -n 1 "$work/idle-$run_seq.out" 2>/dev/null || true)
        [[ -n $line ]] && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ $line != "ready $idle_conns" ]]; then
        exec 9>&-
        wait "$cpid" 2>/dev/null || true
        die "the idle-connection client did not hold $idle_conns connections to $t: $(tail -n 3 "$work/idle-$run_seq.out")"
    fi
    read_rss "${ppids[@]}"
    after=$rss_total
    exec 9>&-
    wait "$cpid" || true
    per=$(awk -v a="$after" -v b="$before" -v n="$idle_conns" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }')
    record "$phase" "$t" "$round" "$per" - - "$idle_conns" 0 - "$after" "$load1" "$before"
    note "$(printf '%-14s %-5s round %s: %6s bytes/connection (RSS %s -> %s kB, %s connections)' \
        "$phase" "$t" "$round" "$per" "$before" "$after" "$idle_conns")"
}

order() { # round -> targets, alternating
    local list=()
    read -ra list <<<"$targets"
    if ((${#list[@]} == 2 && $1 % 2 == 0)); then
        echo "${list[1]} ${list[0]}"
    else
        echo "${list[*]}"
    fi
}

warm() { # phase target
    local cmd=()
    ((warmup > 0)) || return 0
    case $1 in
    handshake | idle) cmd=(wrk -t1 -c8 "-d${warmup}s" "https://127.0.0.1:${port[$2]}/host") ;;
    idle-h2c) cmd=(h2load -c8 -m1 -D "$warmup" "http://127.0.0.1:${port[$2]}/host") ;;
    *) mapfile -t cmd < <(load_cmd "$1" "$2" "$warmup") ;;
    esac
    timeout $((warmup + 30)) "${cmd[@]}" >/dev/null 2>&1 || die "warm-up (${cmd[0]}) failed against $2 ($1)"
}

declare -A tls_info
run_phase() { # phase
    local phase=$1 role t r req
    case $phase in
    https | handshake | h2tls | idle) role=tls ;;
    idle-h2c) role=h2c ;;
    *) role=$phase ;;
    esac
    if [[ $phase == idle || $phase == idle-h2c ]]; then
        # A fresh proxy for every measurement: memory freed by the previous
        # one's connections would otherwise be reused and hide the growth.
        note "phase $phase: a fresh $targets ($role) per measurement"
        for ((r = 1; r <= rounds; r++)); do
            for t in $(order "$r"); do
                for req in 0 1; do
                    start_proxy "$t" "$role"
                    warm "$phase" "$t"
                    measure_idle "$t" "$r" "$req" "$role"
                    stop_proxy "$t"
                done
            done
        done
        return 0
    fi
    note "phase $phase: starting $targets ($role)"
    for t in $targets; do
        start_proxy "$t" "$role"
        [[ $role == tls ]] && tls_info[$t]=$(negotiated "$t")
        warm "$phase" "$t"
    done
    for ((r = 1; r <= rounds; r++)); do
        for t in $(order "$r"); do
            if [[ $phase == handshake ]]; then
                measure_handshakes "$t" "$r" new
                measure_handshakes "$t" "$r" reuse
            else
                measure_load "$phase" "$t" "$r"
            fi
        done
    done
    stop_proxies
}

for phase in $phases; do
    run_phase "$phase"
done

# --- report --------------------------------------------------------------------------------
median() { # phase target column -> median over the rounds
    awk -F'\t' -v ph="$1" -v t="$2" -v c="$3" '$1 == ph && $2 == t && $c != "-" { print $c }' "$results" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
fmt() { if [[ $2 == nan ]]; then printf 'n/a'; else awk -v f="$1" -v v="$2" 'BEGIN { printf f, v }'; fi; }
with_unit() { if [[ $2 == nan ]]; then printf '—'; else printf '%s %s' "$(fmt "$1" "$2")" "$3"; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0 || a == "nan" || b == "nan") print "n/a"; else printf "%.2f", a / b }'; }
has() { [[ " $targets " == *" $1 "* ]]; }
ratio_line() { # phase column what better
    if has nginx && has lb; then
        printf 'lb/nginx %s: **%s×** (%s is better)\n' "$3" "$(ratio "$(median "$1" lb "$2")" "$(median "$1" nginx "$2")")" "$4"
    fi
}
notes_of() { # phase target -> the note column of each round
    awk -F'\t' -v ph="$1" -v t="$2" '$1 == ph && $2 == t { print $12 }' "$results" | sort -u | paste -sd ';' -
}

echo "### TLS, HTTP/2 and gRPC: $(has lb && echo 'lb vs nginx' || echo 'nginx only')"
echo
echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)); kernel $(uname -r);"
echo "nginx/$nginx_version ($("$nginx_bin" -V 2>&1 | sed -n 's/^built with //p')); $(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }'); $(h2load --version | head -n 1); $(openssl version);"
echo "workers $workers; rounds $rounds × ${duration}s, alternating; load average at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
if has lb; then
    echo "lb: \`$lb_bin\`; TLS flags \`$lb_tls_flags\`, h2c flags \`$lb_h2c_flags\`, gRPC flags \`$lb_grpc_flags\`."
fi
for t in "${!tls_info[@]}"; do
    echo "TLS as \`openssl s_client\` negotiates it with $t: ${tls_info[$t]}."
done
echo

for phase in $phases; do
    case $phase in
    https | http | h2c | h2tls | grpc)
        case $phase in
        https) title="HTTPS keep-alive (\`wrk -t$threads -c$connections -d${duration}s --latency https://…/host\`)" ;;
        http) title="plain HTTP/1.1 keep-alive, the reference (\`wrk -t$threads -c$connections -d${duration}s --latency http://…/host\`)" ;;
        h2c) title="h2c (\`h2load -c$h2_clients -m$h2_streams -D$duration http://…/host\`)" ;;
        h2tls) title="h2 over TLS (\`h2load -c$h2_clients -m$h2_streams -D$duration https://…/host\`)" ;;
        grpc) title="gRPC unary calls (\`h2load -c$h2_clients -m$h2_streams -D$duration -d <empty GetRequest frame> …$grpc_path\`)" ;;
        esac
        echo "#### $title, median of $rounds rounds"
        echo
        echo "| target | req/s | p50 / mean | p99 | CPU per request | peak RSS | errors | notes |"
        echo "|---|---|---|---|---|---|---|---|"
        for t in $targets; do
            printf '| %s | %s | %s | %s | %s | %s MiB | %s | %s |\n' "$t" \
                "$(fmt '%.0f' "$(median "$phase" "$t" 4)")" "$(with_unit '%.0f' "$(median "$phase" "$t" 5)" µs)" \
                "$(with_unit '%.0f' "$(median "$phase" "$t" 6)" µs)" "$(with_unit '%.2f' "$(median "$phase" "$t" 9)" µs)" \
                "$(fmt '%.1f' "$(awk -v k="$(median "$phase" "$t" 10)" 'BEGIN { print k / 1024 }')")" \
                "$(awk -F'\t' -v ph="$phase" -v t="$t" '$1 == ph && $2 == t { e += $8 } END { print e + 0 }' "$results")" \
                "$(notes_of "$phase" "$t")"
        done
        echo
        ratio_line "$phase" 4 "req/s" higher
        ratio_line "$phase" 9 "CPU per request" lower
        echo
        ;;
    handshake)
        echo "#### New TLS connections (\`openssl s_time -new|-reuse -www $hs_path\`, $hs_clients in parallel, ${duration}s), median of $rounds rounds"
        echo
        echo "| target | full: conn/s | full: CPU per conn | resumed: conn/s | resumed: CPU per conn | resumed share |"
        echo "|---|---|---|---|---|---|"
        for t in $targets; do
            printf '| %s | %s | %s µs | %s | %s µs | %s |\n' "$t" \
                "$(fmt '%.0f' "$(median handshake-new "$t" 4)")" "$(fmt '%.1f' "$(median handshake-new "$t" 9)")" \
                "$(fmt '%.0f' "$(median handshake-reuse "$t" 4)")" "$(fmt '%.1f' "$(median handshake-reuse "$t" 9)")" \
                "$(notes_of handshake-reuse "$t")"
        done
        echo
        ratio_line handshake-new 4 "full handshakes/s" higher
        ratio_line handshake-reuse 4 "resumed handshakes/s" higher
        echo
        ;;
    idle)
        echo "#### Memory per idle TLS connection ($idle_conns connections; RSS growth ÷ connections), median of $rounds rounds"
        echo
        echo "| target | after the handshake | after one request |"
        echo "|---|---|---|"
        for t in $targets; do
            printf '| %s | %s bytes | %s bytes |\n' "$t" \
                "$(fmt '%.0f' "$(median idle-handshake "$t" 4)")" "$(fmt '%.0f' "$(median idle-request "$t" 4)")"
        done
        echo
        ratio_line idle-handshake 4 "bytes per idle connection (handshake only)" lower
        ratio_line idle-request 4 "bytes per idle connection (after a request)" lower
        echo
        ;;
    idle-h2c)
        echo "#### Memory per idle HTTP/2 connection, h2c with prior knowledge ($idle_conns connections; RSS growth ÷ connections), median of $rounds rounds"
        echo
        echo "| target | after the SETTINGS exchange | after one request |"
        echo "|---|---|---|"
        for t in $targets; do
            printf '| %s | %s bytes | %s bytes |\n' "$t" \
                "$(fmt '%.0f' "$(median idle-h2c-handshake "$t" 4)")" "$(fmt '%.0f' "$(median idle-h2c-request "$t" 4)")"
        done
        echo
        ratio_line idle-h2c-handshake 4 "bytes per idle HTTP/2 connection (SETTINGS only)" lower
        ratio_line idle-h2c-request 4 "bytes per idle HTTP/2 connection (after a request)" lower
        echo
        ;;
    esac
done

echo "<details><summary>raw rows (phase, target, round, rate, p50 or mean µs, p99 µs, count, errors, CPU µs per unit, RSS kB, 1-min load at start, note)</summary>"
echo
echo '```'
cat "$results"
echo '```'
echo "</details>"
