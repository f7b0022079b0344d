#!/usr/bin/env bash
# Installs every tool the test suite needs on a fresh machine (Debian +
# rustup, with crates.io, PyPI and Debian's archive reachable). Idempotent.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
log() { printf '==> %s\n' "$*"; }

apt_pkgs=()
# valgrind, h2load and strace: the cost gate (bench/cost.sh --gate).
for tool in curl:curl wrk:wrk nginx:nginx shellcheck:shellcheck jq:jq ip:iproute2 \
    valgrind:valgrind h2load:nghttp2-client strace:strace openssl:openssl; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || apt_pkgs+=("${tool#*:}")
done
# Headless Chromium from Debian's archive: the admin page's browser test
# (scripts/admin-page-test.sh); a font so its screenshots have text.
command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium fonts-dejavu-core)
if ((${#apt_pkgs[@]})); then
    log "apt-get install ${apt_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"
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

# Kubernetes validators (kubernetes-validate, checkov, helm-sdkpy, vagrant, …).
"$root/scripts/k8s/install-tools.sh"
log "tools ready"
