#!/usr/bin/env bash
# The kind path of docs/kubernetes.md (section 1, for users without Vagrant),
# run on this machine as a user would run it: the command block between the
# markers `<!-- kind-path:begin -->` and `<!-- kind-path:end -->` is read
# from the document and executed line by line, in order.
#
#   scripts/kind-path-test.sh
#
# Real: scripts/build-images.sh (cargo + BuildKit image builds), the images,
# ./test.sh, the Docker engine. Replaced: kind and kubectl (tests/standins/:
# they record every call, and the "cluster" runs the images that were loaded
# as plain containers in the host's network namespace, the lb on the address
# kind-config.yaml gives: 127.0.0.1:8080). So this needs 127.0.0.1:8080 free.
#
# Asserts (PASS/FAIL each, last line "<n> passed, <m> failed"): every command
# of the block exits 0; kind got kind-config.yaml (127.0.0.1:8080, two nodes);
# kind loaded exactly the images manifests/ references, as just built; the
# pods run those image IDs; ./test.sh passed; the lb listens on 127.0.0.1
# only; a cluster that missed `kind load` fails the rollout with
# ErrImageNeverPull instead of pulling; `kind delete cluster` cleans up.
#
# Environment: SKIP_BUILD=1 replaces the block's build-images.sh line with
# --from-binaries (reuse target/<triple>/release).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
doc=docs/kubernetes.md
started=$(date +%s)

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS: %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL: %s\n' "$*"; }
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; return 1; fi; }
show() { sed 's/^/      | /' "$@" | tail -n 25; }
finish() { printf 'kind path test %ss\n%d passed, %d failed\n' "$(($(date +%s) - started))" "$passed" "$failed"; ((failed == 0)); exit; }

# Without an engine nothing here can run: a skip (exit 77) for test-all.sh.
docker info >/dev/null 2>&1 || { echo "SKIP: no Docker engine answers (docker info failed)"; exit 77; }
if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
    fail "127.0.0.1:8080 is in use; the kind path publishes the lb there (kind-config.yaml): free it and re-run"
    finish
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kind-path-test.XXXXXX")
run_id="rhkp$$"
export STANDIN_ENV=$work/standins.env
cat >"$STANDIN_ENV" <<EOF
STANDIN_LOG=$work/calls.log
STANDIN_STATE=$work/state
STANDIN_NETNS=host
STANDIN_PREFIX=$run_id-
STANDIN_NODE_IMAGE=${KIND_PATH_NODE_IMAGE:-}
STANDIN_VERSIONS=$root/scripts/provision/versions.sh
EOF
mkdir -p "$work/bin" "$work/home"
ln -s "$root/tests/standins/kind" "$work/bin/kind"
ln -s "$root/tests/standins/kubectl" "$work/bin/kubectl"
export PATH="$work/bin:$PATH" KUBECONFIG=$work/home/kubeconfig
log=$work/calls.log
: >"$log"
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local ids
    mapfile -t ids < <(docker ps -aq --filter "label=dev.roundhouse.standin=$run_id-")
    ((${#ids[@]} == 0)) || docker rm -f "${ids[@]}" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The stand-in nodes are idle containers; any local image with `sleep` will do.
if [[ -z ${KIND_PATH_NODE_IMAGE:-} ]]; then
    node_image=$(docker images --format '{{.Repository}}:{{.Tag}}' 'roundhouse-vagrant-box' | head -n1)
    [[ -n $node_image ]] || node_image=$("$root/scripts/vagrant-box.sh" 2>"$work/box.log") || {
        fail "an image for the stand-in nodes (scripts/vagrant-box.sh)"
        show "$work/box.log"
        finish
    }
    sed -i "s|^STANDIN_NODE_IMAGE=.*|STANDIN_NODE_IMAGE=$node_image|" "$STANDIN_ENV"
fi

# --- every command block says what runs it -----------------------------------
unmarked() { # FILE: sh blocks without a "run by" / "not run here" mark in the 3 lines above
    awk '/^```sh/ { ok = 0; for (i = 1; i <= 3; i++) if (prev[i] ~ /<!-- (run by|not run here):/) ok = 1
                       if (!ok) printf "%s:%d\n", FILENAME, FNR }
         { prev[3] = prev[2]; prev[2] = prev[1]; prev[1] = $0 }' "$1"
}
marks=$(unmarked "$doc"; unmarked README.md)
if [[ -z $marks ]]; then
    pass "every sh block in $doc and README.md is marked 'run by' or 'not run here'"
else
    fail "sh blocks without a 'run by' / 'not run here' mark: $(echo "$marks" | paste -sd' ' -)"
fi

# --- the block from the document ---------------------------------------------
mapfile -t block < <(awk '/<!-- kind-path:begin -->/ { on = 1; next } /<!-- kind-path:end -->/ { on = 0 }
    on && !/^```/ && NF { sub(/[[:space:]]+#.*$/, ""); print }' "$doc")
if ((${#block[@]} < 5)); then
    fail "$doc has a kind-path block (found ${#block[@]} commands)"
    finish
fi
i=0
for cmd in "${block[@]}"; do
    i=$((i + 1))
    [[ ${SKIP_BUILD:-0} == 1 && $cmd == scripts/build-images.sh ]] && cmd="scripts/build-images.sh --from-binaries"
    t=$SECONDS
    if bash -c "$cmd" >"$work/cmd.$i" 2>&1; then
        pass "doc command $i: $cmd ($((SECONDS - t))s)"
    else
        fail "doc command $i: $cmd"
        show "$work/cmd.$i"
    fi
done

manifest_images() { grep -h '^[[:space:]-]*image:' manifests/*.yaml | awk '{ print $NF }' | tr -d '"' | sort -u; }
check "kind create got kind-config.yaml: 2 nodes, NodePort 30080 published on 127.0.0.1:8080 only" \
    grep -q '^# create: .*nodes=control-plane,worker listenAddress=127.0.0.1 hostPort=8080' "$log"
# shellcheck disable=SC2317 # called through check
loaded_fresh() {
    local img id
    diff <(manifest_images) <(awk '/^# loaded / { print $3 }' "$log" | sort -u) || return 1
    for img in $(manifest_images); do
        id=$(docker image inspect -f '{{.Id}}' "$img") || return 1
        grep -qx "# loaded $img $id" "$log" || { echo "      $img: loaded ID is not the current image"; return 1; }
        grep -q "^# run deployment/.* image $img $id" "$log" || { echo "      no pod runs $img $id"; return 1; }
        if ! grep -q "writing image $id" "$work/cmd.1" || ! grep -q "naming to docker.io/$img" "$work/cmd.1"; then
            echo "      the block's build command did not write $img as $id"
            return 1
        fi
    done
}
check "kind loaded exactly the images manifests/ references ($(manifest_images | paste -sd' ' -)), as built; the pods run those IDs" loaded_fresh
check "./test.sh (default http://localhost:8080) gave the exact split" \
    grep -q 'test.sh: OK: 2 backends, 50 requests each' "$work"/cmd.*
check "the lb listens on 127.0.0.1:8080, not on all interfaces" \
    bash -c "ss -ltnH | awk '{ print \$4 }' | grep -qx '127.0.0.1:8080' && ! ss -ltnH | awk '{ print \$4 }' | grep -qE '^(0\\.0\\.0\\.0|\\*|\\[::\\]):8080$'"

# The workflow's restart-under-load counter, against the stand-in (whose
# restart is a hard container replacement: failures are expected here, the
# count and the MAX_FAILED verdict are what is checked).
MAX_FAILED=-1 TIMEOUT=30 scripts/ci/rollout-under-load.sh >"$work/rollout-load.log" 2>&1
rc=$?
check "scripts/ci/rollout-under-load.sh counts requests during kubectl rollout restart and enforces MAX_FAILED" \
    bash -c "[[ $rc -eq 1 ]] && grep -qE '^requests: [1-9][0-9]*, failed: [0-9]+ \(during kubectl rollout restart deployment/backend deployment/lb\)' '$work/rollout-load.log'" ||
    show "$work/rollout-load.log"
check "after the restart the split is exact again" bash -c "./test.sh >/dev/null 2>&1"

# --- a cluster that missed kind load ------------------------------------------
kind delete cluster --name roundhouse >"$work/delete.log" 2>&1
check "kind delete cluster --name roundhouse removes every node and pod container" \
    bash -c "[[ -z \$(docker ps -aq --filter label=dev.roundhouse.standin=$run_id-) ]]"
kind create cluster --config kind-config.yaml >"$work/create2.log" 2>&1 &&
    kubectl apply -f manifests/ >"$work/apply2.log" 2>&1
kubectl -n roundhouse rollout status deployment/lb --timeout=5s >"$work/rollout2.log" 2>&1
rc=$?
check "without kind load the rollout fails with ErrImageNeverPull (imagePullPolicy Never), nothing is pulled" \
    bash -c "[[ $rc -ne 0 ]] && grep -q 'ErrImageNeverPull' '$work/rollout2.log'"
kind delete cluster --name roundhouse >/dev/null 2>&1

finish
