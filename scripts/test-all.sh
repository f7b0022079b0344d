#!/usr/bin/env bash
# Every test of the project, in one command (the README's test command; CI's
# .ci/run calls it after installing the tools with scripts/ci/install.sh and
# running fmt and clippy):
#
#   scripts/test-all.sh
#
# Suites: Rust unit + integration tests (nextest, or cargo test), the lb
# crate's module graph (scripts/module-graph.py --check), cargo deny,
# a shellcheck pass over every script, test.sh's own tests, the quick start
# (lb demo + test.sh), the admin page in headless Chromium, a short bounded
# fuzzing run,
# the Kubernetes manifest/chart validators, the Docker end-to-end test
# (skipped only where no Docker engine answers), the kind path of
# docs/kubernetes.md and Vagrant's own run of the Vagrantfile (both with
# stand-ins for kind/kubectl, see tests/standins/), actionlint on the
# workflows, the cost-per-request gate (bench/cost.sh --gate) and a 60 s
# soak. The last line is
# "<n> passed, <m> failed" over the suites; the exit code is non-zero if any
# suite failed.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

passed=0
failed=0
failures=()

# Free space (MiB) on the file system that holds target/ (the builds, the
# Docker suite's roots and images live on the same disk here).
free_mib() {
    df -Pm "$root" | awk 'NR == 2 { print $4 }'
}

# A full run writes ~15 GiB (debug, release, static and fuzz builds, image
# roots). CI machines have run out of disk mid-run, which then fails every
# later suite with ENOSPC. So every suite reports the free space it left, and
# when it drops below LOW_DISK_MIB, artifacts that no later suite needs and
# that any later run rebuilds are removed first (the fuzz build, Docker's build
# cache, dangling images), and the run says so.
LOW_DISK_MIB=${LOW_DISK_MIB:-6144}
reclaim_if_low() {
    local free
    free=$(free_mib)
    ((free < LOW_DISK_MIB)) || return 0
    printf 'disk: %s MiB free (< %s); removing rebuildable artifacts\n' "$free" "$LOW_DISK_MIB"
    rm -rf "$root/target/fuzz" "$root/lb/fuzz/target"
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        docker builder prune -af >/dev/null 2>&1 || true
        docker image prune -f >/dev/null 2>&1 || true
    fi
    printf 'disk: %s MiB free after reclaiming\n' "$(free_mib)"
}

suite() {
    local name=$1
    shift
    reclaim_if_low
    printf '\n=== %s\n' "$name"
    local start=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
        printf '=== %s: PASS (%ss, %s MiB free)\n' "$name" $((SECONDS - start)) "$(free_mib)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf '=== %s: FAIL (%ss, %s MiB free)\n' "$name" $((SECONDS - start)) "$(free_mib)"
    fi
}

printf 'disk: %s MiB free at the start\n' "$(free_mib)"

rust_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast
    else
        cargo test --workspace --no-fail-fast
    fi
}

# The CI-sized soak (docs/soak.md) on the static release binaries the Docker
# suite built; without them, soak.sh builds target/release itself.
soak_60() {
    local bins
    bins=target/$(uname -m | sed 's/^arm64$/aarch64/')-unknown-linux-gnu/release
    if [[ -x $bins/lb && -x $bins/backend ]]; then
        SOAK_NO_BUILD=1 LB_BIN=$bins/lb BACKEND_BIN=$bins/backend scripts/soak.sh 60
    else
        scripts/soak.sh 60
    fi
}

# The deterministic cost gate: the LB's user-space instructions per request
# under callgrind for six protocols, against bench/cost-budgets.toml (fails
# over budget by more than 2 %). It measures the static release binaries the
# Docker suite built (bench/cost.sh builds them when missing, and the soak
# then uses the same ones).
cost_gate() {
    bench/cost.sh --gate
}

module_graph() {
    python3 scripts/module-graph.py --check >/dev/null
}

shell_scripts() {
    shellcheck -x test.sh scripts/*.sh scripts/*/*.sh bench/*.sh .ci/run tests/standins/*
}

workflows() {
    actionlint -shellcheck shellcheck .github/workflows/*.yml && zizmor --offline .github/workflows/
}

suite "rust tests" rust_tests
suite "module graph (no cycles between sibling modules)" module_graph
suite "supply chain (cargo deny: licences, bans, sources)" scripts/deny.sh
suite "shellcheck" shell_scripts
suite "test.sh negative paths" env BACKEND_BIN=target/debug/backend scripts/test-test-sh.sh
suite "quick start (lb demo + test.sh)" env LB_BIN=target/debug/lb scripts/demo-test.sh
suite "admin page in a real browser (chromium)" env LB_BIN=target/debug/lb BACKEND_BIN=target/debug/backend scripts/admin-page-test.sh
suite "fuzzing (20 s per target, seed corpus)" env FUZZ_INSTALL=1 scripts/fuzz.sh 20
suite "kubernetes manifests and chart" scripts/k8s/validate.sh
suite "docker images and compose topology" scripts/docker-test.sh
suite "kind path of docs/kubernetes.md (real images, kind/kubectl stand-ins)" scripts/kind-path-test.sh
suite "vagrant up/provision/reload/destroy of the Vagrantfile (docker provider)" scripts/vagrant-test.sh
suite "workflows (actionlint, zizmor)" workflows
suite "cost per request (callgrind instructions vs bench/cost-budgets.toml)" cost_gate
suite "soak (60 s: load, endpoint churn, slow clients)" soak_60

printf '\n'
if ((failed)); then
    printf 'failed suites: %s\n' "${failures[*]}"
fi
printf '%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
