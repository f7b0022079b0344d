#!/usr/bin/env bash
# End-to-end test of the container images and the Compose topology
# (compose.yaml: backend-1 and backend-2 behind the LB), with real containers.
#
#   scripts/docker-test.sh
#
# Steps: 1 build the images (scripts/build-images.sh, nothing is pulled);
# 2 start the topology and wait for the LB's readiness; 3 ./test.sh gives an
# exact 50/50 split; 4 the backends' port is not published; 5 a wrk load
# survives `docker kill` + `docker start` of backend-2 with zero failed
# requests, and backend-2 gets traffic again; 6 `docker stop` of the LB
# finishes an in-flight request and exits 0 (before docker's kill); 7 every container runs
# as 65532:65532 with a read-only root filesystem; 8 tear-down.
#
# Prints PASS/FAIL per step and, as the last line, "<n> passed, <m> failed".
# Without a reachable Docker engine it prints "SKIP: no Docker engine ..." and
# exits 77 (a skip for scripts/test-all.sh, allowed there outside CI only).
#
# Environment:
#   LB_PORT         host port for the LB (default: a free port)
#   SKIP_BUILD=1    reuse existing roundhouse/*:0.1.0 images (step 1 only
#                   checks that they exist)
#   KEEP=1          leave the topology running at the end (for debugging)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

VERSION=0.1.0
LB_IMAGE=roundhouse/lb:$VERSION
BACKEND_IMAGE=roundhouse/backend:$VERSION
READY_TIMEOUT=60        # seconds for the LB to become ready
BACK_TIMEOUT=15         # seconds for a restarted backend to get traffic again
STOP_KILL_AFTER=10      # docker stop's timeout: then SIGKILL (exit code 137)
EVENT_TIMEOUT=20        # seconds to wait for an event below (a hang guard)

passed=0
failed=0
pass() {
    passed=$((passed + 1))
    printf 'PASS: %s\n' "$*"
}
fail() {
    failed=$((failed + 1))
    printf 'FAIL: %s\n' "$*"
}
note() {
    printf '      %s\n' "$@"
}
now() {
    date +%s.%N
}
elapsed() { # elapsed START [END]
    awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.2f", b - a }'
}
# wait_for WHAT COMMAND...: polls COMMAND every 50 ms until it succeeds
# (0), or EVENT_TIMEOUT passes (1, with a note).
wait_for() {
    local what=$1 deadline=$(($(date +%s) + EVENT_TIMEOUT))
    shift
    until "$@"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            note "no $what within ${EVENT_TIMEOUT} s"
            return 1
        fi
        sleep 0.05
    done
}

# --- no engine: skip --------------------------------------------------------
if ! command -v docker >/dev/null 2>&1; then
    echo "SKIP: no Docker engine (the docker client is not installed)"
    exit 77
fi
if ! docker info >/dev/null 2>&1; then
    echo "SKIP: no Docker engine answers (docker info failed)"
    exit 77
fi

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
    COMPOSE_NAME='docker compose'
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
    COMPOSE_NAME=docker-compose
else
    echo "FAIL: neither 'docker compose' nor 'docker-compose' is installed"
    echo "0 passed, 1 failed"
    exit 1
fi

PROJECT="rhtest${$}${RANDOM}"
COMPOSE+=(--project-name "$PROJECT" --file "$ROOT/compose.yaml")

free_port() {
    local p i
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
LB_PORT=${LB_PORT:-$(free_port)}
export LB_PORT
LB_URL="http://127.0.0.1:$LB_PORT"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-docker-test.XXXXXX")
torn_down=0
teardown() {
    [ "$torn_down" -eq 1 ] && return 0
    torn_down=1
    if [ "${KEEP:-0}" = 1 ]; then
        echo "KEEP=1: leaving project $PROJECT running (LB on $LB_URL)"
        return 0
    fi
    # Unpause first: a paused container cannot be stopped cleanly.
    local c
    for c in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter status=paused); do
        docker unpause "$c" >/dev/null 2>&1 || true
    done
    "${COMPOSE[@]}" down -v --remove-orphans --timeout 5 >"$TMP/down.log" 2>&1
}
# shellcheck disable=SC2317 # invoked by the EXIT trap
on_exit() {
    local rc=$?
    if [ -n "${wrk_pid:-}" ]; then
        kill "$wrk_pid" 2>/dev/null || true
    fi
    if [ "$torn_down" -eq 0 ]; then
        echo "aborted (exit $rc): tearing down $PROJECT"
        teardown
        rm -rf "$TMP"
        printf '%d passed, %d failed\n' "$passed" "$((failed > 0 ? failed : 1))"
        exit 1
    fi
    rm -rf "$TMP"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Ends the run: tear-down is step 8, then the summary line.
finish() {
    local before_containers
    teardown
    if [ "${KEEP:-0}" = 1 ]; then
        pass "step 8: tear-down skipped (KEEP=1)"
    else
        before_containers=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
        if [ "$before_containers" -eq 0 ] &&
            [ -z "$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")" ]; then
            pass "step 8: '$COMPOSE_NAME down -v --remove-orphans' removed all containers and networks"
        else
            fail "step 8: tear-down left $before_containers container(s) or networks of $PROJECT"
            sed 's/^/      /' "$TMP/down.log"
        fi
    fi
    printf '%d passed, %d failed\n' "$passed" "$failed"
    if [ "$failed" -gt 0 ]; then
        exit 1
    fi
    exit 0
}

logs_tail() {
    "${COMPOSE[@]}" logs --no-color --tail=30 2>&1 | sed 's/^/      /'
}

# What the LB's admin port says about its endpoints and upstream errors,
# read from the host through the LB's address on the non-internal network
# (the port is not published).
lb_diagnostics() {
    local ip='' a
    for a in $(docker inspect -f '{{range .NetworkSettings.Networks}}{{println .IPAddress}}{{end}}' "$cid_lb" 2>/dev/null); do
        if curl -s --max-time 1 -o /dev/null "http://$a:9090/healthz"; then
            ip=$a
            break
        fi
    done
    if [ -z "$ip" ]; then
        note "LB admin port not reachable from the host"
        return 0
    fi
    note "LB admin at $ip:9090: /endpoints and upstream metrics"
    printf '        %s\n' "$(curl -s --max-time 2 "http://$ip:9090/endpoints" 2>&1)"
    curl -s --max-time 2 "http://$ip:9090/metrics" 2>&1 |
        grep -E '^roundhouse_(upstream_errors|retries|ejections|endpoint|requests)' |
        grep -v ' 0$' | sed 's/^/        /'
}

echo "docker-test: project $PROJECT, compose '$COMPOSE_NAME', LB on $LB_URL"

# --- 1. images ----------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    if docker image inspect "$BACKEND_IMAGE" "$LB_IMAGE" >/dev/null 2>&1; then
        pass "step 1: images present (SKIP_BUILD=1)"
    else
        fail "step 1: SKIP_BUILD=1 but $BACKEND_IMAGE / $LB_IMAGE missing"
        finish
    fi
else
    t0=$(now)
    if "$ROOT/scripts/build-images.sh" >"$TMP/build.log" 2>&1; then
        pass "step 1: built $BACKEND_IMAGE and $LB_IMAGE without pulling ($(elapsed "$t0") s)"
        sed -n '/^==> image sizes/,$p' "$TMP/build.log" | sed 's/^/      /'
    else
        fail "step 1: scripts/build-images.sh failed"
        tail -n 40 "$TMP/build.log" | sed 's/^/      /'
        finish
    fi
fi

# --- 2. start + readiness -----------------------------------------------------
t0=$(now)
if ! "${COMPOSE[@]}" up -d --no-build >"$TMP/up.log" 2>&1; then
    fail "step 2: '$COMPOSE_NAME up' failed"
    sed 's/^/      /' "$TMP/up.log"
    logs_tail
    finish
fi
up_secs=$(elapsed "$t0")
t0=$(now)
cid_lb=$("${COMPOSE[@]}" ps -q lb)
cid_b1=$("${COMPOSE[@]}" ps -q backend-1)
cid_b2=$("${COMPOSE[@]}" ps -q backend-2)
# The private network shared by the LB and the backends.
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{println $k}}{{end}}' "$cid_b1" | head -n1)

# `lb probe URL` from a throw-away container on the private network: the
# admin port is not published.
probe() {
    docker run --rm --network "$net" --user 65532:65532 --read-only --cap-drop ALL \
        --security-opt no-new-privileges:true "$LB_IMAGE" probe "$1" >/dev/null 2>&1
}

ready=0
how=''
deadline=$(($(date +%s) + READY_TIMEOUT))
while [ "$(date +%s)" -lt "$deadline" ]; do
    state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid_lb" 2>/dev/null)
    case "$state" in
        "running healthy")
            ready=1; how='HEALTHCHECK healthy'; break ;;
        running*) ;;
        *)
            note "LB container is '$state'"; break ;;
    esac
    if probe http://lb:9090/readyz; then
        ready=1; how='lb probe http://lb:9090/readyz'; break
    fi
    sleep 0.5
done
if [ "$ready" -eq 1 ]; then
    pass "step 2: topology up in $up_secs s, LB ready $(elapsed "$t0") s later ($how)"
else
    fail "step 2: LB not ready within ${READY_TIMEOUT} s"
    logs_tail
    finish
fi

# --- 3. ./test.sh: exact round robin -------------------------------------------
if [ ! -x "$ROOT/test.sh" ]; then
    fail "step 3: ./test.sh is missing or not executable"
elif LB_URL="$LB_URL" "$ROOT/test.sh" >"$TMP/test.out" 2>&1; then
    pass "step 3: LB_URL=$LB_URL ./test.sh: $(grep -E '^backend-[0-9]+ ' "$TMP/test.out" | tr -s ' ' | paste -sd, -)"
else
    fail "step 3: LB_URL=$LB_URL ./test.sh failed"
    sed 's/^/      /' "$TMP/test.out"
fi

# --- 4. backends not published --------------------------------------------------
problems=()
for c in "$cid_b1" "$cid_b2"; do
    name=$(docker inspect -f '{{.Config.Hostname}}' "$c")
    if [ -n "$(docker port "$c" 2>/dev/null)" ]; then
        problems+=("$name publishes: $(docker port "$c" | paste -sd' ' -)")
    fi
done
lb_ports=$(docker port "$cid_lb" 2>/dev/null | sort -u)
if [ "$(printf '%s\n' "$lb_ports" | cut -d' ' -f1 | sort -u)" != "8080/tcp" ]; then
    problems+=("LB publishes more than 8080/tcp: $(printf '%s' "$lb_ports" | paste -sd' ' -)")
fi
if printf '%s\n' "$lb_ports" | grep -qv "127.0.0.1:$LB_PORT\$"; then
    problems+=("LB port not bound to 127.0.0.1:$LB_PORT only: $(printf '%s' "$lb_ports" | paste -sd' ' -)")
fi
answer=$(curl -s --max-time 2 http://127.0.0.1:5000/host 2>/dev/null || true)
if [[ "$answer" =~ ^backend-[0-9]+ ]]; then
    problems+=("127.0.0.1:5000 is served by $answer")
fi
if [ "${#problems[@]}" -eq 0 ]; then
    pass "step 4: backends' port 5000 not published; only the LB's 8080 on 127.0.0.1:$LB_PORT"
else
    fail "step 4: ports: ${problems[*]}"
fi

# --- 5. load while backend-2 is killed and started again --------------------------
cat >"$TMP/count.lua" <<'EOF'
-- Counts non-2xx answers per thread and prints one RESULT line at the end.
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  non2xx = 0
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end
function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, bad, e.connect, e.read, e.write, e.timeout))
end
EOF
if ! command -v wrk >/dev/null 2>&1; then
    fail "step 5: wrk is not installed (apt-get install wrk)"
else
    wrk -t2 -c16 -d10s --timeout 5s -s "$TMP/count.lua" "$LB_URL/host" >"$TMP/wrk.out" 2>&1 &
    wrk_pid=$!
    t_load=$(now)
    sleep 2 # let the load run before the failure
    docker kill "$cid_b2" >/dev/null
    t_kill=$(now)
    sleep 3 # the LB serves from backend-1 alone for a while
    docker start "$cid_b2" >/dev/null
    t_start=$(now)
    back_after=''
    seen=''
    deadline=$(($(date +%s) + BACK_TIMEOUT))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        # Matched in the shell, not with `curl | grep -q`: under pipefail
        # grep's early exit makes curl fail with a broken pipe whenever
        # backend-2 is not the last of the three answers.
        seen=$(curl -s --max-time 2 -w ' [%{http_code}]\n' "$LB_URL/host" "$LB_URL/host" "$LB_URL/host" 2>&1)
        if [[ $'\n'"$seen"$'\n' == *$'\nbackend-2\n'* ]]; then
            back_after=$(elapsed "$t_start")
            break
        fi
        sleep 0.2
    done
    wait "$wrk_pid"
    wrk_rc=$?
    result=$(grep '^RESULT ' "$TMP/wrk.out" || true)
    note "load: wrk -t2 -c16 -d10s $LB_URL/host; backend-2 killed at +$(elapsed "$t_load" "$t_kill") s, started at +$(elapsed "$t_load" "$t_start") s"
    note "wrk: ${result:-no RESULT line} (exit $wrk_rc)"
    field() { # field NAME: a number from the RESULT line (absent: -1)
        local v
        v=$(printf '%s\n' "$result" | sed -n "s/.* $1=\([0-9][0-9]*\).*/\1/p")
        echo "${v:--1}"
    }
    total=$(field requests)
    bad=0
    for f in non2xx connect read write timeout; do
        n=$(field "$f")
        [ "$n" -eq 0 ] || bad=$((bad + 1))
    done
    if [ "$wrk_rc" -eq 0 ] && [ "$total" -gt 0 ] && [ "$bad" -eq 0 ]; then
        pass "step 5a: $total requests during kill/start of backend-2, 0 non-2xx, 0 socket errors"
    else
        fail "step 5a: failed requests during kill/start of backend-2"
        sed 's/^/      /' "$TMP/wrk.out"
    fi
    if [ -n "$back_after" ]; then
        pass "step 5b: restarted backend-2 answered through the LB ${back_after} s after docker start"
    else
        fail "step 5b: backend-2 got no traffic within ${BACK_TIMEOUT} s after docker start"
        note "last answers through the LB (body [status]):"
        printf '%s\n' "$seen" | sed 's/^/        /'
        lb_diagnostics
        logs_tail
    fi
fi

# --- 6. graceful stop of the LB with a request in flight ---------------------------
# Freeze both backends so that a request through the LB stays in flight, stop
# the LB (SIGTERM), then let the backends answer. Each step waits for the
# event it needs, seen from outside the LB:
# - in flight: a backend's socket on :5000 holds bytes its frozen process has
#   not read (the kernel still takes them), i.e. the LB forwarded the request;
# - SIGTERM received: the LB's log says it is draining.
# shellcheck disable=SC2317 # called through wait_for
request_at_a_frozen_backend() {
    local c pid
    for c in "$cid_b1" "$cid_b2"; do
        pid=$(docker inspect -f '{{.State.Pid}}' "$c") || continue
        nsenter -t "$pid" -n ss -tnH state established '( sport = :5000 )' 2>/dev/null |
            awk '$1 > 0 { found = 1 } END { exit !found }' && return 0
    done
    return 1
}
# shellcheck disable=SC2317 # called through wait_for
lb_draining() {
    docker logs "$cid_lb" 2>&1 | grep -qE 'not ready; still accepting during the drain delay|closing listeners and draining in-flight requests'
}
if ! docker pause "$cid_b1" "$cid_b2" >/dev/null 2>&1; then
    fail "step 6: docker pause of the backends failed (needed to hold a request in flight)"
else
    curl -s --max-time 60 -o "$TMP/inflight.body" -w '%{http_code}' "$LB_URL/host" >"$TMP/inflight.code" 2>/dev/null &
    curl_pid=$!
    in_flight=0
    wait_for "request held at a frozen backend (ss in its network namespace)" request_at_a_frozen_backend && in_flight=1
    t_stop=$(now)
    docker stop -t "$STOP_KILL_AFTER" "$cid_lb" >/dev/null 2>&1 &
    stop_pid=$!
    sigterm_seen=0
    wait_for "drain line in the LB's log after docker stop" lb_draining && sigterm_seen=1
    docker unpause "$cid_b1" "$cid_b2" >/dev/null 2>&1
    wait "$stop_pid"
    stop_secs=$(elapsed "$t_stop")
    wait "$curl_pid"
    code=$(cat "$TMP/inflight.code" 2>/dev/null)
    body=$(cat "$TMP/inflight.body" 2>/dev/null)
    exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$cid_lb")
    note "in-flight request: HTTP ${code:-none} '${body}'; LB exit code $exit_code after ${stop_secs} s"
    # Exit code 0 means the LB exited by itself before docker stop's
    # ${STOP_KILL_AFTER} s timeout (a SIGKILL would be 137): no wall-clock
    # bound is needed to tell a graceful stop from a killed one.
    if [ "$in_flight" = 1 ] && [ "$sigterm_seen" = 1 ] && [ "$code" = 200 ] &&
        [[ "$body" =~ ^backend-[0-9]+$ ]] && [ "$exit_code" = 0 ]; then
        pass "step 6: docker stop of the LB (SIGTERM while a request was held at a frozen backend) finished the request, exit 0 in ${stop_secs} s"
    else
        fail "step 6: graceful stop: request held at a backend: $in_flight, SIGTERM seen: $sigterm_seen, HTTP '${code}', exit code $exit_code, ${stop_secs} s"
        docker logs --tail 20 "$cid_lb" 2>&1 | sed 's/^/      /'
    fi
fi

# --- 7. non-root, read-only --------------------------------------------------------
problems=()
for image in "$BACKEND_IMAGE" "$LB_IMAGE"; do
    u=$(docker image inspect -f '{{.Config.User}}' "$image")
    [ "$u" = "65532:65532" ] || problems+=("image $image has USER '$u'")
done
for c in "$cid_b1" "$cid_b2" "$cid_lb"; do
    name=$(docker inspect -f '{{.Config.Hostname}}' "$c")
    read -r user ro caps nnp < <(docker inspect -f '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{join .HostConfig.CapDrop ","}} {{join .HostConfig.SecurityOpt ","}}' "$c")
    [ "$user" = "65532:65532" ] || problems+=("$name runs as '$user'")
    [ "$ro" = true ] || problems+=("$name root filesystem is not read-only")
    [ "$caps" = ALL ] || problems+=("$name drops caps '$caps', not ALL")
    [ "$nnp" = "no-new-privileges:true" ] || problems+=("$name security_opt '$nnp'")
    if [ "$(docker inspect -f '{{.State.Running}}' "$c")" = true ]; then
        # The real process ids as the host sees them.
        uids=$(docker top "$c" -o pid,uid,gid 2>/dev/null | awk 'NR > 1 { print $2 ":" $3 }' | sort -u | paste -sd' ' -)
        [ "$uids" = "65532:65532" ] || problems+=("$name processes run as '$uids'")
    fi
done
if [ "${#problems[@]}" -eq 0 ]; then
    pass "step 7: all containers run as 65532:65532, read-only root fs, cap_drop ALL, no-new-privileges"
else
    fail "step 7: ${problems[*]}"
fi

# --- 8. tear-down -------------------------------------------------------------------
finish
