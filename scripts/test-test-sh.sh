#!/usr/bin/env bash
# scripts/test-test-sh.sh — tests for the repo-root test.sh against real
# backends (no load balancer needed).
#
# Starts two real backends on free 127.0.0.1 ports (the OS picks them; the
# bound address is read from the backend's "listening" log line), waits for
# /healthz with a bounded retry loop, then checks test.sh's paths that do not
# need a balancer: --help, a bad option, an impossible split, an unreachable
# URL, curl missing, and LB_URL pointing at ONE backend directly (which must
# fail with "expected 2 backends, saw 1" — and pass with --expect-backends 1).
# The same for --grpc (one gRPC channel straight to one backend, which speaks
# h2c and gRPC on its port), plus grpcio or Python missing and a LB_URL that
# is not a bare server; the cases that need grpcio are skipped, and said so,
# when the Python in use has none (scripts/ci/install.sh installs it): then
# the script exits 77 (a skip, which fails scripts/test-all.sh) unless a case
# failed (exit 1).
# --admin / ADMIN_URL: the admin-page line after the verdict, against a
# stand-in page (python3 -m http.server), a closed port and a backend (404).
#
# Environment:
#   BACKEND_BIN  backend binary (default: target/release/backend, else
#                target/debug/backend; build one with `cargo build -p backend`)

set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
test_sh=$root/test.sh

if [[ -n ${BACKEND_BIN:-} ]]; then
    backend_bin=$BACKEND_BIN
elif [[ -x $root/target/release/backend ]]; then
    backend_bin=$root/target/release/backend
elif [[ -x $root/target/debug/backend ]]; then
    backend_bin=$root/target/debug/backend
else
    echo "test-test-sh: no backend binary; build one with 'cargo build -p backend' or set BACKEND_BIN" >&2
    exit 1
fi
[[ -x $backend_bin ]] || {
    echo "test-test-sh: BACKEND_BIN is not executable: $backend_bin" >&2
    exit 1
}
command -v curl >/dev/null 2>&1 || {
    echo "test-test-sh: curl is required" >&2
    exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/test-test-sh.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_backend NAME -> sets $addr to the bound host:port, once /healthz answers.
start_backend() {
    local name=$1 log=$work/$1.log i
    "$backend_bin" --listen 127.0.0.1:0 --name "$name" --drain-seconds 0 --log-format json \
        >"$log" 2>&1 &
    pids+=("$!")
    addr=''
    for ((i = 0; i < 100; i++)); do
        addr=$(grep -o '"addr":"127\.0\.0\.1:[0-9]*"' "$log" 2>/dev/null | head -n 1 | cut -d'"' -f4) || true
        [[ -n $addr ]] && break
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $addr ]]; then
        echo "test-test-sh: backend $name did not log its listening address; log:" >&2
        cat "$log" >&2
        exit 1
    fi
    for ((i = 0; i < 50; i++)); do
        if curl -fsS --max-time 1 -o /dev/null "http://$addr/healthz" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "test-test-sh: backend $name at $addr never answered /healthz; log:" >&2
    cat "$log" >&2
    exit 1
}

# A 127.0.0.1 port where nothing listens (connection refused).
closed_port() {
    local p
    for p in 1 9 47 79 1023; do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

passed=0
failed=0
out='' err='' rc=0
problems=()

# run [ENV=VAL ...] -- ARGS...: runs test.sh (bounded) and captures out/err/rc.
run() {
    local envs=()
    while [[ $1 != -- ]]; do
        envs+=("$1")
        shift
    done
    shift
    rc=0
    env "${envs[@]}" timeout 60 "$test_sh" "$@" >"$work/out" 2>"$work/err" || rc=$?
    out=$(cat "$work/out")
    err=$(cat "$work/err")
    problems=()
}

# Expectations on the last run; each failing one is recorded for verdict.
expect_rc() {
    [[ $rc == "$1" ]] || problems+=("exit status $rc, expected $1")
}
expect_out() {
    [[ $out == *"$1"* ]] || problems+=("stdout lacks: $1")
}
expect_err() {
    [[ $err == *"$1"* ]] || problems+=("stderr lacks: $1")
}
expect_out_re() {
    [[ $out =~ $1 ]] || problems+=("stdout does not match: $1")
}
expect_no_err() {
    [[ -z $err ]] || problems+=("stderr is not empty")
}
expect_last_err_line() {
    [[ ${err##*$'\n'} == "$1" ]] || problems+=("last stderr line is '${err##*$'\n'}', expected '$1'")
}
expect_no_err_text() {
    [[ $err != *"$1"* ]] || problems+=("stderr has: $1")
}
expect_last_line() {
    [[ ${out##*$'\n'} == "$1" ]] || problems+=("last stdout line is '${out##*$'\n'}', expected '$1'")
}

# verdict NAME: reports the expectations recorded since the last run.
verdict() {
    if ((${#problems[@]} == 0)); then
        passed=$((passed + 1))
        printf 'ok   %s\n' "$1"
    else
        failed=$((failed + 1))
        printf 'FAIL %s\n' "$1"
        printf '     - %s\n' "${problems[@]}"
        printf -- '--- stdout:\n%s\n--- stderr:\n%s\n---\n' "$out" "$err"
    fi
}

start_backend alpha
alpha=$addr
start_backend beta
beta=$addr
echo "backends: alpha=$alpha beta=$beta ($backend_bin)"

# --- usage -------------------------------------------------------------------------
run -- --help
expect_rc 0
expect_out Usage:
expect_out LB_URL
expect_out REQUESTS
expect_no_err
verdict "--help exits 0 and documents LB_URL and REQUESTS"

run -- -h
expect_rc 0
expect_out Usage:
verdict "-h exits 0"

run -- --bogus
expect_rc 2
expect_err "unknown option: --bogus"
expect_err Usage:
verdict "unknown option exits 2 with usage"

run -- -n
expect_rc 2
expect_err "needs a value"
verdict "-n without a value exits 2"

run -- extra-argument
expect_rc 2
expect_err "unexpected argument"
verdict "a positional argument exits 2"

run "LB_URL=http://$alpha" -- -n 99
expect_rc 2
expect_err "not divisible"
verdict "N not divisible by K exits 2"

run "LB_URL=http://$alpha" -- -n abc
expect_rc 2
expect_err "positive integer"
verdict "non-numeric -n exits 2"

# --- unreachable / curl missing ----------------------------------------------------
port=$(closed_port) || {
    echo "test-test-sh: no closed port found" >&2
    exit 1
}
run "LB_URL=http://127.0.0.1:$port" --
expect_rc 1
expect_err "cannot reach the load balancer at http://127.0.0.1:$port"
expect_err "cargo run --release -p lb -- demo"
expect_err "LB_URL=http://127.0.0.1:8080 ./test.sh"
expect_err "vagrant up"
expect_err "ROUNDHOUSE_HOST_PORT"
verdict "unreachable URL exits 1 naming the URL and how to start the LB"

run -- --help
expect_out "default: http://localhost:8080"
verdict "--help names the default URL http://localhost:8080 (demo, Compose, kind, Vagrant)"

# (env resolves timeout and test.sh's interpreter through PATH, so run by hand)
rc=0
env PATH="$work/empty-path" "$BASH" "$test_sh" >"$work/out" 2>"$work/err" || rc=$?
out=$(cat "$work/out") err=$(cat "$work/err") problems=()
expect_rc 1
expect_err "curl is not installed"
verdict "missing curl is reported"

# --- one backend directly --------------------------------------------------------------
run "LB_URL=http://$alpha" --
expect_rc 1
expect_err "expected 2 backends, saw 1"
expect_out "alpha 100"
expect_last_line 100
expect_out_re 'date: [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z'
verdict "LB_URL at one backend exits 1: expected 2 backends, saw 1"

run "LB_URL=http://$beta/" "REQUESTS=10" --
expect_rc 1
expect_out "beta 10"
expect_last_line 10
expect_err "expected 2 backends, saw 1"
verdict "REQUESTS env and a trailing slash in LB_URL are honoured"

run "LB_URL=http://$beta" -- --expect-backends 1 -n 20
expect_rc 0
expect_out "beta 20"
expect_last_line 20
expect_out "over 1 connection(s)"
verdict "--expect-backends 1 against one backend passes, over one keep-alive connection"

run "LB_URL=http://$alpha/nowhere" --
expect_rc 1
expect_err "returned HTTP 404"
expect_err "got HTTP 404"
verdict "non-2xx answers fail clearly"

# --- --grpc -------------------------------------------------------------------------
run -- --help
expect_out "--grpc"
expect_out "grpcio"
verdict "--help documents --grpc"

run "LB_URL=http://$alpha/host" -- --grpc
expect_rc 2
expect_err "names the server only"
verdict "--grpc with a path in LB_URL exits 2"

run "LB_URL=ftp://$alpha" -- --grpc
expect_rc 2
expect_err "must start with http:// or https://"
verdict "--grpc with a non-HTTP LB_URL exits 2"

run "LB_URL=http://$alpha" "GRPC_PYTHON=$work/no-such-python" -- --grpc
expect_rc 1
expect_err "no-such-python is not installed"
expect_err "pip install grpcio"
verdict "--grpc without Python is reported"

# A grpc package that fails to import, first on the path: grpcio "missing".
mkdir -p "$work/no-grpcio/grpc"
echo 'raise ImportError("No module named grpc")' >"$work/no-grpcio/grpc/__init__.py"
run "LB_URL=http://$alpha" "PYTHONPATH=$work/no-grpcio" -- --grpc
expect_rc 1
expect_err "grpcio is not installed"
expect_err "pip install grpcio"
verdict "--grpc without grpcio exits 1 with the install hint"

skipped=0
if "${GRPC_PYTHON:-python3}" -c 'import grpc' 2>/dev/null; then
    run "LB_URL=http://$alpha" -- --grpc
    expect_rc 1
    expect_err "expected 2 backends, saw 1"
    expect_out "calls: 100 to $alpha /roundhouse.v1.Hosts/Get over 1 gRPC channel"
    expect_out "alpha 100"
    expect_last_line 100
    verdict "--grpc at one backend exits 1: expected 2 backends, saw 1"

    run "LB_URL=http://$beta/" -- --grpc --expect-backends 1 -n 20
    expect_rc 0
    expect_out "beta 20"
    expect_last_line 20
    expect_err "OK: 1 backends, 20 calls each"
    verdict "--grpc --expect-backends 1 against one backend passes"

    run "LB_URL=http://127.0.0.1:$port" "MAX_TIME=1" -- --grpc -n 2 --expect-backends 1
    expect_rc 1
    expect_err "cannot reach the load balancer at http://127.0.0.1:$port"
    expect_err "grpcio said: no HTTP/2 connection"
    expect_err "./test.sh --grpc"
    verdict "--grpc at an unreachable URL exits 1 naming the URL and how to start the LB"
else
    skipped=3
    skip_reason="3 --grpc cases need grpcio: ${GRPC_PYTHON:-python3} cannot import grpc (python3 -m pip install grpcio)"
    echo "skip $skip_reason"
fi

# --- --admin: the admin page's line after the verdict ----------------------------------
# A stand-in admin page: a directory with an index.html, served on a port the
# OS picks (python3 -u prints "Serving HTTP on 127.0.0.1 port N").
mkdir -p "$work/admin"
echo '<!doctype html><title>admin</title>' >"$work/admin/index.html"
python3 -u -m http.server --bind 127.0.0.1 --directory "$work/admin" 0 >"$work/admin.log" 2>&1 &
pids+=("$!")
admin=''
for ((i = 0; i < 100; i++)); do
    admin=$(grep -o 'port [0-9]*' "$work/admin.log" 2>/dev/null | head -n 1 | cut -d' ' -f2) || true
    [[ -n $admin ]] && break
    sleep 0.1
done
[[ -n $admin ]] || { echo "test-test-sh: the stand-in admin page did not start" >&2; cat "$work/admin.log" >&2; exit 1; }
admin=127.0.0.1:$admin

run -- --help
expect_out "--admin URL"
expect_out "ADMIN_URL"
verdict "--help documents --admin and ADMIN_URL"

run "LB_URL=http://$beta" -- --expect-backends 1 -n 10 --admin "ftp://$admin"
expect_rc 2
expect_err "--admin must be the admin port's base URL"
verdict "--admin with a non-HTTP URL exits 2"

run "LB_URL=http://$beta" -- --expect-backends 1 -n 10 --admin "http://$admin/"
expect_rc 0
expect_last_line 10
expect_err "OK: 1 backends, 10 requests each"
expect_last_err_line "test.sh: admin page: http://$admin/ (live share of requests, rates and state per endpoint)"
verdict "--admin: after the OK verdict, one stderr line names the admin page"

run "LB_URL=http://$alpha" "ADMIN_URL=http://127.0.0.1:$port" -- -n 10
expect_rc 1
expect_last_line 10
expect_err "expected 2 backends, saw 1"
expect_last_err_line "test.sh: admin page: http://127.0.0.1:$port/ did not answer (is the admin port forwarded? e.g. kubectl -n roundhouse port-forward deploy/lb 9090)"
verdict "ADMIN_URL at a closed port: after the FAIL verdict, the line says it did not answer"

run "LB_URL=http://$beta" -- --expect-backends 1 -n 10 --admin="http://$alpha"
expect_rc 0
expect_last_err_line "test.sh: admin page: http://$alpha/ answered HTTP 404 (is that the LB's admin port?)"
verdict "--admin=URL at something else: the line gives its HTTP status"

run "LB_URL=http://$beta" "ADMIN_URL=" -- --expect-backends 1 -n 10
expect_rc 0
expect_no_err_text "admin page"
verdict "without --admin or ADMIN_URL there is no admin-page line"

echo "$passed passed, $failed failed, $skipped skipped"
((failed == 0)) || exit 1
if ((skipped)); then
    echo "SKIP: $skip_reason"
    exit 77
fi
