#!/usr/bin/env bash
# Soak test: the LB under steady load, endpoint churn and slow clients, all on
# 127.0.0.1, for a bounded time.
#
#   scripts/soak.sh [SECONDS]        # default 600; CI-sized run: 60
#
# What runs:
#   - 3 backends (target/release/backend), the LB (target/release/lb) with
#     --config pointing at a temporary YAML file listing them;
#   - wrk -t2 -c32 -d${SECONDS}s on GET /host (idempotent);
#   - endpoint churn: backend b3 is stopped (SIGTERM, it drains and exits)
#     and restarted on the same port every few seconds; the LB ejects it on
#     connect failure and re-admits it when its ejection expires;
#   - slow clients: curl --limit-rate readers in a loop, idle keep-alive
#     connections, and connections that trickle a request head one line per
#     second (the LB must cut those off at --header-read-timeout, 10 s: each
#     trickler watches its socket between lines and records, to 10 ms, when
#     the LB answered or closed);
#   - with SOAK_IDLE=N, N more keep-alive connections held open for the whole
#     run by bench/idle_holder.py (opened before the RSS baseline), each
#     sending one GET /host every SOAK_IDLE_EVERY (5) seconds, so they stay
#     open past the 10 s idle timeout while idle most of the time; they are
#     closed when the load stops, and the fd check below then covers them.
#
# Fails (exit 1) when any wrk request got a non-2xx/3xx answer or a socket
# error, when a slow curl reader failed, when no header trickler ran or one
# was cut off before the header-read timeout or more than SOAK_TRICKLE_SLACK
# (1.0) s after it, when no churn cycle ran, when the LB's RSS grew more than
# SOAK_RSS_GROWTH_PCT (5) % between the median of the per-second samples in
# the first window after the warm-up (SOAK_WARMUP seconds; default 60, at
# most a quarter of the run) and the median of the last window before the
# load stops (a window is a quarter of the time after the warm-up, 3 to 30 s), when an idle holder's request failed or
# one of its connections went away (its requests tell, and at the end of the
# load all SOAK_IDLE of its connections must still be established), or when,
# once the load has stopped and
# idle connections have timed out, its open fds exceed the count before the
# load by more than SOAK_FD_SLACK (8). (Under load the fd count moves with
# the in-flight client, upstream and slow-client connections, so it is
# reported but not compared.) Also reports the RSS slope over the second half
# of the run. Prints a Markdown table (also written to $SOAK_REPORT when set,
# with the per-second samples next to it as CSV).
#
# Environment: SOAK_NO_BUILD=1 uses the existing binaries as they are;
# LB_BIN / BACKEND_BIN (default target/release/{lb,backend});
# SOAK_CHURN_EVERY (4) seconds between churn cycles; SOAK_KEEP=1 keeps the
# temporary directory (logs) for inspection.
set -euo pipefail

DURATION="${1:-600}"
if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || ((DURATION < 15)); then
  echo "usage: $0 [SECONDS>=15]" >&2
  exit 2
fi
RSS_GROWTH_PCT="${SOAK_RSS_GROWTH_PCT:-5}"
FD_SLACK="${SOAK_FD_SLACK:-8}"
CHURN_EVERY="${SOAK_CHURN_EVERY:-4}"
# The LB's --header-read-timeout, and how late after it a trickler may be
# cut off: the LB's timer fires within milliseconds, but on 2 shared cores
# under this load the LB's worker, the trickler's shell and its `read`
# each wait for a core (slowest seen: see docs/soak.md).
HEADER_TIMEOUT=10
TRICKLE_SLACK="${SOAK_TRICKLE_SLACK:-1.0}"
IDLE="${SOAK_IDLE:-0}"
IDLE_EVERY="${SOAK_IDLE_EVERY:-5}"
[[ "$IDLE" =~ ^[0-9]+$ && "$IDLE_EVERY" =~ ^[1-9][0-9]*$ ]] || {
  echo "soak: SOAK_IDLE must be a count and SOAK_IDLE_EVERY a positive number of seconds" >&2
  exit 2
}
# The RSS baseline is taken once the LB has reached its working set: the
# allocator's arenas fill up over the first tens of seconds of load (measured:
# about half of a 20-minute run's growth happens in its first 10 s, and the
# live heap is flat from then on), so an early baseline reports allocator
# warm-up as growth. Default: 60 s, at most a quarter of the run.
WARMUP="${SOAK_WARMUP:-$((DURATION / 4 < 60 ? DURATION / 4 : 60))}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

for tool in wrk curl python3 ss; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "soak: $tool is required (scripts/ci/install.sh installs it)" >&2
    exit 2
  fi
done

if [[ "${SOAK_NO_BUILD:-0}" != 1 ]]; then
  echo "soak: cargo build --release -p lb -p backend"
  cargo build --release --locked -p lb -p backend
fi
LB_BIN="${LB_BIN:-$ROOT/target/release/lb}"
BACKEND_BIN="${BACKEND_BIN:-$ROOT/target/release/backend}"
for bin in "$LB_BIN" "$BACKEND_BIN"; do
  [[ -x "$bin" ]] || { echo "soak: $bin missing (build it or unset SOAK_NO_BUILD)" >&2; exit 2; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-soak.XXXXXX")"
declare -a PIDS=()
declare -a BACKEND_PIDS=()
LB_PID=""

cleanup() {
  local pid all=("${PIDS[@]}" "${BACKEND_PIDS[@]}" "$LB_PID")
  [[ -s "$WORK/b3.pid" ]] && all+=("$(cat "$WORK/b3.pid")")
  for pid in "${all[@]}"; do
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; fi
  done
  sleep 0.5
  for pid in "${all[@]}"; do
    if [[ -n "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  if [[ "${SOAK_KEEP:-0}" == 1 ]]; then
    echo "soak: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Five free loopback ports: 3 backends, LB, admin. Taken below the kernel's
# ephemeral range, so an outgoing connection cannot be holding one when a
# churned backend binds it again.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
read -r eph_low _ </proc/sys/net/ipv4/ip_local_port_range || eph_low=32768
span=$((eph_low - 10000 - 10))
((span > 100)) || span=100
declare -a PORTS=()
for _ in $(seq 1 50); do
  base=$((10000 + RANDOM % span))
  PORTS=()
  for p in $(seq "$base" $((base + 4))); do
    port_free "$p" && PORTS+=("$p")
  done
  ((${#PORTS[@]} == 5)) && break
done
((${#PORTS[@]} == 5)) || { echo "soak: no free ports" >&2; exit 1; }
B_PORTS=("${PORTS[0]}" "${PORTS[1]}" "${PORTS[2]}")
LB_PORT="${PORTS[3]}"
ADMIN_PORT="${PORTS[4]}"
LB_URL="http://127.0.0.1:$LB_PORT"
ADMIN_URL="http://127.0.0.1:$ADMIN_PORT"

wait_http() { # URL SECONDS
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

start_backend() { # INDEX(0..2)
  local i=$1
  "$BACKEND_BIN" --listen "127.0.0.1:${B_PORTS[$i]}" --name "b$((i + 1))" \
    --drain-seconds 1 >>"$WORK/backend-$((i + 1)).log" 2>&1 &
  BACKEND_PIDS[i]=$!
}

for i in 0 1 2; do start_backend "$i"; done
for i in 0 1 2; do
  wait_http "http://127.0.0.1:${B_PORTS[$i]}/readyz" 10 || { echo "soak: backend b$((i + 1)) did not start" >&2; exit 1; }
done

cat >"$WORK/lb.yaml" <<EOF
backends:
  - "127.0.0.1:${B_PORTS[0]}"
  - "127.0.0.1:${B_PORTS[1]}"
  - "127.0.0.1:${B_PORTS[2]}"
dnsRefresh: 200ms
EOF

# The held idle connections need fds in the holder (the LB raises its own
# soft limit to the hard one) and room under --max-connections.
if ((IDLE > 0)); then
  ulimit -Sn "$(ulimit -Hn)"
  ((IDLE + 512 <= $(ulimit -Sn))) || { echo "soak: SOAK_IDLE=$IDLE does not fit ulimit -n $(ulimit -Sn)" >&2; exit 2; }
fi
"$LB_BIN" serve --listen "127.0.0.1:$LB_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --config "$WORK/lb.yaml" --header-read-timeout "${HEADER_TIMEOUT}s" --ejection-time 1s \
  --max-connections $((IDLE + 10000)) --log-format json >"$WORK/lb.log" 2>&1 &
LB_PID=$!
wait_http "$ADMIN_URL/readyz" 15 || { echo "soak: lb not ready; log:" >&2; tail -20 "$WORK/lb.log" >&2; exit 1; }
wait_http "$LB_URL/host" 5 || { echo "soak: lb does not proxy" >&2; exit 1; }

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$LB_PID/status"; }
fd_count() { find "/proc/$LB_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
RSS_BEFORE_LOAD=$(rss_kb)
FDS_BEFORE_LOAD=$(fd_count)

# Idle keep-alive connections held for the whole run (SOAK_IDLE).
HOLDER_PID=""
if ((IDLE > 0)); then
  # with --every it runs until SIGTERM
  python3 "$ROOT/bench/idle_holder.py" "$LB_PORT" "$IDLE" 4 --every "$IDLE_EVERY" \
    </dev/null >"$WORK/holder.out" 2>&1 &
  HOLDER_PID=$!
  PIDS+=("$HOLDER_PID")
  for _ in $(seq 1 600); do
    [[ -s "$WORK/holder.out" ]] && break
    kill -0 "$HOLDER_PID" 2>/dev/null || break
    sleep 0.1
  done
  [[ "$(head -n 1 "$WORK/holder.out")" == "ready $IDLE" ]] || {
    echo "soak: the holder did not open $IDLE connections: $(tail -n 3 "$WORK/holder.out")" >&2
    exit 1
  }
  echo "soak: $IDLE idle keep-alive connections held (one request each every ${IDLE_EVERY}s)"
fi

echo "soak: ${DURATION}s against $LB_URL (backends ${B_PORTS[*]}, admin $ADMIN_PORT, work dir $WORK)"
START_EPOCH=$SECONDS
END_AT=$((SECONDS + DURATION))

# Load.
wrk -t2 -c32 -d"${DURATION}s" --timeout 5s --latency "$LB_URL/host" >"$WORK/wrk.txt" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")

# Churn: stop and restart b3 every CHURN_EVERY seconds.
echo "${BACKEND_PIDS[2]}" >"$WORK/b3.pid"
(
  cycles=0
  while ((SECONDS + CHURN_EVERY + 3 < END_AT)); do
    sleep "$CHURN_EVERY"
    pid=$(cat "$WORK/b3.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
    "$BACKEND_BIN" --listen "127.0.0.1:${B_PORTS[2]}" --name b3 --drain-seconds 1 \
      >>"$WORK/backend-3.log" 2>&1 &
    echo $! >"$WORK/b3.pid"
    cycles=$((cycles + 1))
    echo "$cycles" >"$WORK/churn.count"
  done
) &
CHURN_PID=$!
PIDS+=("$CHURN_PID")

# Slow readers: curl at 1 KiB/s, repeatedly; each must get a 2xx.
(
  ok=0 fail=0
  while ((SECONDS + 3 < END_AT)); do
    if curl -fsS -o /dev/null --limit-rate 1k --max-time 10 "$LB_URL/date"; then
      ok=$((ok + 1))
    else
      fail=$((fail + 1))
    fi
    echo "$ok $fail" >"$WORK/slow-curl.count"
    sleep 0.2
  done
) &
PIDS+=("$!")

# Idle keep-alive connections (held open, nothing sent after one request).
for _ in 1 2 3 4; do
  (
    exec 3<>"/dev/tcp/127.0.0.1/$LB_PORT" || exit 0
    printf 'GET /host HTTP/1.1\r\nHost: soak\r\n\r\n' >&3
    sleep $((DURATION > 20 ? 20 : DURATION))
  ) &
  PIDS+=("$!")
done

# Header tricklers: one header line per second; the LB must end the
# connection at --header-read-timeout (an answer such as 408, or a close).
# Between lines each waits on its socket (`read -t 1`), which returns as
# soon as the LB answers or closes, and records how long the connection
# lasted, to 10 ms (EPOCHREALTIME).
(
  while ((SECONDS + HEADER_TIMEOUT + 5 < END_AT)); do
    (
      trap '' PIPE # a write to the closed socket fails instead of killing us
      t0=$EPOCHREALTIME # before the connect: the LB's clock starts later
      exec 3<>"/dev/tcp/127.0.0.1/$LB_PORT" || exit 0
      printf 'GET /host HTTP/1.1\r\nHost: soak\r\n' >&3 || exit 0
      for n in $(seq 1 $((3 * HEADER_TIMEOUT))); do
        rc=0
        read -r -t 1 -u 3 _ || rc=$?
        ((rc > 128)) || break # 0: the LB answered; 1: it closed
        printf 'X-Trickle-%d: %d\r\n' "$n" "$n" 2>/dev/null >&3 || break
      done
      awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f\n", b - a }' >>"$WORK/trickle.secs"
    ) &
    sleep 3
  done
  wait
) &
PIDS+=("$!")

# Samples every second from the start.
echo "t,rss_kb,fds" >"$WORK/samples.csv"
FDS_START=""
RSS_MAX=0
while ((SECONDS < END_AT - 2)); do
  rss=$(rss_kb)
  t=$((SECONDS - START_EPOCH))
  echo "$t,$rss,$(fd_count)" >>"$WORK/samples.csv"
  if [[ -z "$FDS_START" ]] && ((t >= WARMUP)); then
    FDS_START=$(fd_count)
  fi
  if [[ -n "$FDS_START" ]] && ((rss > RSS_MAX)); then RSS_MAX=$rss; fi
  sleep 1
done
# Growth compares the medians of a window just after the warm-up and one
# just before the load stops: single samples would measure the allocator's
# second-to-second swing (up to ±15 % with 10,000 held connections that are
# parked and woken), not growth.
WINDOW=$(((DURATION - WARMUP) / 4))
((WINDOW > 30)) && WINDOW=30
((WINDOW < 3)) && WINDOW=3
median_rss() { # from to: median RSS of the samples with from <= t < to
  awk -F, -v a="$1" -v b="$2" 'NR > 1 && $1 >= a && $1 < b { print $2 }' "$WORK/samples.csv" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else if (NR) print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
LAST_T=$(tail -n 1 "$WORK/samples.csv" | cut -d, -f1)
RSS_START=$(median_rss "$WARMUP" $((WARMUP + WINDOW)))
RSS_END=$(median_rss $((LAST_T - WINDOW + 1)) $((LAST_T + 1)))
[[ -n "$RSS_START" && -n "$RSS_END" ]] || { echo "soak: too few RSS samples after the ${WARMUP} s warm-up" >&2; exit 2; }
# Least-squares slope of RSS over the second half of the run, in KiB/s: a
# leak keeps a positive slope, allocator warm-up flattens out.
RSS_SLOPE=$(awk -F, -v from=$((DURATION / 2)) 'NR > 1 && $1 >= from {
    n++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2 }
  END { d = n * sxx - sx * sx; if (n < 3 || d == 0) print "n/a"; else printf "%+.2f", (n * sxy - sx * sy) / d }' \
  "$WORK/samples.csv")
FDS_END=$(fd_count)

wait "$WRK_PID" || true
kill "$CHURN_PID" 2>/dev/null || true
# The held connections: still all open (the holder counts a connection that
# went away as a failed request), then closed.
idle_requests=0 idle_failed=0 idle_kinds='' idle_lag='' HOLDER_ALIVE=yes idle_open=0
if [[ -n "$HOLDER_PID" ]]; then
  kill -0 "$HOLDER_PID" 2>/dev/null || HOLDER_ALIVE=no
  # Its connections to the LB that are still established, counted by the
  # kernel (a connection closed since its last request is not yet a failed
  # request for the holder).
  idle_open=$(ss -tnpH state established "( dport = :$LB_PORT )" 2>/dev/null | grep -c "pid=$HOLDER_PID," || true)
  kill -TERM "$HOLDER_PID" 2>/dev/null || true
  wait "$HOLDER_PID" 2>/dev/null || true
  read -r _ idle_requests _ idle_failed < <(sed -n 2p "$WORK/holder.out") || true
  ((${idle_failed:-0} == 0)) || idle_kinds=$(sed -n '3s/^failures //p' "$WORK/holder.out")
  idle_lag=$(sed -n '4s/^longest idle before a request //p' "$WORK/holder.out")
  idle_requests=${idle_requests:-0} idle_failed=${idle_failed:-0}
fi
# Let the LB settle: client keep-alive connections close at the header-read
# timeout (10s), idle upstream connections at --upstream-idle-timeout (4s).
# With nothing leaked, the fd count returns to (about) its pre-load value.
FDS_AFTER=$(fd_count)
settle_until=$((SECONDS + 20))
while ((SECONDS < settle_until)) && ((FDS_AFTER > FDS_BEFORE_LOAD + FD_SLACK)); do
  sleep 1
  FDS_AFTER=$(fd_count)
done
RSS_AFTER=$(rss_kb)
LB_ALIVE=yes
kill -0 "$LB_PID" 2>/dev/null || LB_ALIVE=no

# Results.
WRK_OUT="$WORK/wrk.txt"
requests=$(awk '/requests in/ {print $1}' "$WRK_OUT")
rps=$(awk '/^Requests\/sec:/ {print $2}' "$WRK_OUT")
p99=$(awk '$1 == "99%" {print $2}' "$WRK_OUT")
non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$WRK_OUT")
non2xx=${non2xx:-0}
sock_errors=0
if grep -q 'Socket errors:' "$WRK_OUT"; then
  sock_errors=$(grep 'Socket errors:' "$WRK_OUT" | tr -cs '0-9' ' ' | awk '{s=0; for (i=1;i<=NF;i++) s+=$i; print s}')
fi
churn=$(cat "$WORK/churn.count" 2>/dev/null || echo 0)
read -r slow_ok slow_fail <"$WORK/slow-curl.count" || { slow_ok=0; slow_fail=0; }
trickles=0 trickle_min=0 trickle_max=0
if [[ -s "$WORK/trickle.secs" ]]; then
  trickles=$(wc -l <"$WORK/trickle.secs")
  trickle_min=$(sort -n "$WORK/trickle.secs" | head -1)
  trickle_max=$(sort -n "$WORK/trickle.secs" | tail -1)
fi
metrics=$(curl -fsS --max-time 2 "$ADMIN_URL/metrics" || true)
ejections=$(awk '/^roundhouse_ejections_total/ {s+=$NF} END {print s+0}' <<<"$metrics")
lb_5xx=$(awk '/^roundhouse_requests_total/ && /class="5xx"/ {s+=$NF} END {print s+0}' <<<"$metrics")
rss_growth=$(awk -v a="$RSS_START" -v b="$RSS_END" 'BEGIN {printf "%.1f", (b - a) * 100 / a}')
fd_growth=$((FDS_AFTER - FDS_BEFORE_LOAD))

verdict=PASS
reasons=()
[[ -n "$requests" ]] || { verdict=FAIL; reasons+=("wrk printed no result"); requests=0; }
((non2xx == 0)) || { verdict=FAIL; reasons+=("$non2xx non-2xx responses"); }
((sock_errors == 0)) || { verdict=FAIL; reasons+=("$sock_errors socket errors"); }
((slow_fail == 0)) || { verdict=FAIL; reasons+=("$slow_fail slow curl readers failed"); }
((churn > 0)) || { verdict=FAIL; reasons+=("no endpoint churn cycle ran"); }
if ((trickles == 0)); then
  verdict=FAIL
  reasons+=("no header trickler ran")
elif awk -v lo="$trickle_min" -v hi="$trickle_max" -v t="$HEADER_TIMEOUT" -v s="$TRICKLE_SLACK" \
  'BEGIN { exit !(lo < t || hi > t + s) }'; then
  verdict=FAIL
  reasons+=("header tricklers cut off after ${trickle_min}-${trickle_max} s (expected ${HEADER_TIMEOUT} to ${HEADER_TIMEOUT} + ${TRICKLE_SLACK} s)")
fi
[[ "$LB_ALIVE" == yes ]] || { verdict=FAIL; reasons+=("the LB exited"); }
if ((IDLE > 0)); then
  [[ "$HOLDER_ALIVE" == yes ]] || { verdict=FAIL; reasons+=("the idle holder exited early: $(tail -n 2 "$WORK/holder.out")"); }
  ((idle_failed == 0)) || { verdict=FAIL; reasons+=("$idle_failed requests on held idle connections failed"); }
  ((idle_requests > 0)) || { verdict=FAIL; reasons+=("the held idle connections made no request"); }
  ((idle_open == IDLE)) || { verdict=FAIL; reasons+=("$idle_open of $IDLE held idle connections still open at the end of the load"); }
fi
if awk -v g="$rss_growth" -v max="$RSS_GROWTH_PCT" 'BEGIN {exit !(g > max)}'; then
  verdict=FAIL
  reasons+=("RSS grew ${rss_growth}% (> ${RSS_GROWTH_PCT}%)")
fi
((fd_growth <= FD_SLACK)) || { verdict=FAIL; reasons+=("fds after load exceed the pre-load count by $fd_growth (> $FD_SLACK)"); }

report=$(
  cat <<EOF
| metric | value |
| --- | --- |
| duration | ${DURATION} s (wrk -t2 -c32 on GET /host) |
| requests served (wrk) | ${requests} (${rps} req/s, p99 ${p99:-?}) |
| non-2xx/3xx responses | ${non2xx} |
| socket errors (connect/read/write/timeout) | ${sock_errors} |
| 5xx counted by the LB (/metrics) | ${lb_5xx} |
| endpoint churn cycles (b3 stopped + restarted) | ${churn} |
| ejections (/metrics) | ${ejections} |
| slow readers (curl --limit-rate 1k) ok / failed | ${slow_ok} / ${slow_fail} |
| header tricklers cut off / after (s, shortest–longest; timeout ${HEADER_TIMEOUT} s, limit +${TRICKLE_SLACK} s) | ${trickles} / ${trickle_min}–${trickle_max} |
| idle keep-alive connections held (SOAK_IDLE): open at the end / requests on them / failed | ${IDLE}: ${idle_open} / ${idle_requests} / ${idle_failed} (one each every ${IDLE_EVERY} s${idle_lag:+, longest idle before one ${idle_lag}}${idle_kinds:+; failures: ${idle_kinds}}) |
| LB RSS before load | ${RSS_BEFORE_LOAD} KiB |
| LB RSS after ${WARMUP} s warm-up → end of load (medians of ${WINDOW} s windows; max) | ${RSS_START} → ${RSS_END} KiB (${rss_growth} %, max ${RSS_MAX} KiB) |
| LB RSS slope over the second half of the run | ${RSS_SLOPE} KiB/s |
| LB RSS after load (settled) | ${RSS_AFTER} KiB |
| LB open fds under load: after warm-up → end | ${FDS_START} → ${FDS_END} (varies with in-flight upstream and slow-client connections) |
| LB open fds before load → after load (settled) | ${FDS_BEFORE_LOAD} → ${FDS_AFTER} ($(printf %+d "$fd_growth"), limit +${FD_SLACK}) |
| result | ${verdict}${reasons[*]:+: ${reasons[*]}} |
EOF
)
echo
echo "$report"
if [[ -n "${SOAK_REPORT:-}" ]]; then
  echo "$report" >"$SOAK_REPORT"
  cp "$WORK/samples.csv" "${SOAK_REPORT%.*}.samples.csv" 2>/dev/null || true
fi
[[ "$verdict" == PASS ]]
