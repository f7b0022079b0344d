#!/usr/bin/env bash
# Installs every tool the test suites need on a fresh machine (Debian +
# rustup, with crates.io, PyPI and Debian's archive reachable). Idempotent:
# what is present is left alone, so a second run installs nothing.
# scripts/test-all.sh runs it first; so does CI's .ci/run (for fmt, clippy
# and cargo doc). As a non-root user, apt-get runs through sudo.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
log() { printf '==> %s\n' "$*"; }
as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }

apt_pkgs=()
# valgrind, h2load and strace: the cost gate (bench/cost.sh --gate); make:
# tikv-jemalloc-sys builds jemalloc with it (the lb binary's allocator).
for tool in curl:curl wrk:wrk nginx:nginx shellcheck:shellcheck jq:jq ip:iproute2 \
    valgrind:valgrind h2load:nghttp2-client strace:strace openssl:openssl make:make; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || apt_pkgs+=("${tool#*:}")
done
# Headless Chromium from Debian's archive: the admin page's browser test
# (scripts/admin-page-test.sh); a font so its screenshots have text.
command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium fonts-dejavu-core)
if ((${#apt_pkgs[@]})); then
    log "apt-get install ${apt_pkgs[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"
fi

# grpcio: the gRPC client of `test.sh --grpc` (and its tests).
if ! python3 -c 'import grpc' >/dev/null 2>&1; then
    log "pip install grpcio"
    python3 -m pip install --quiet grpcio ||
        python3 -m pip install --quiet --break-system-packages grpcio
fi

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    log "rustup component add rustfmt clippy"
    rustup component add rustfmt clippy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    log "cargo install cargo-nextest"
    cargo install --locked cargo-nextest || log "nextest unavailable; cargo test will be used"
fi
# The supply-chain suite (scripts/deny.sh).
if ! cargo deny --version >/dev/null 2>&1; then
    log "cargo install cargo-deny"
    cargo install --locked cargo-deny
fi
# Fuzzing (scripts/fuzz.sh) needs a nightly toolchain and cargo-fuzz. Where
# rustup cannot fetch a toolchain, the fuzzing suite says SKIP, and a skip
# fails scripts/test-all.sh: this step does not hide it.
if ! cargo +nightly --version >/dev/null 2>&1; then
    log "rustup toolchain install nightly --profile minimal"
    timeout 600 rustup toolchain install nightly --profile minimal ||
        log "no nightly toolchain: the fuzzing suite will be a skip (which fails test-all.sh)"
fi
if cargo +nightly --version >/dev/null 2>&1 && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "cargo install cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# Kubernetes validators (kubernetes-validate, checkov, helm-sdkpy, vagrant, …).
"$root/scripts/k8s/install-tools.sh"
log "tools ready"
