#!/usr/bin/env bash
# Builds the roundhouse container images from the repository's Dockerfile.
#
#   scripts/build-images.sh                  # static binaries with cargo here,
#                                            # then images from them (no pull)
#   scripts/build-images.sh --from-source    # normal multi-stage build in the
#                                            # Rust image (needs a registry)
#   scripts/build-images.sh --from-binaries  # images from the static binaries
#                                            # already in target/<triple>/release
#                                            # (no cargo; e.g. in the Vagrant VM)
#   scripts/build-images.sh --binaries-only  # only the static binaries, no
#                                            # Docker (what bench/cost.sh measures)
#   scripts/build-images.sh backend          # only some components
#
# The target triple follows the machine (uname -m): x86_64 or aarch64
# -unknown-linux-gnu, so the images are native on amd64 and arm64 hosts
# (TARGET_TRIPLE=... overrides; the Dockerfile's from-source stages derive it
# from Docker's TARGETARCH).
# RUST_IMAGE=<image> overrides the builder stage's base image (--from-source).
# Tags: roundhouse/<component>:<workspace version> and :latest.
# Both paths need BuildKit: `docker buildx` if installed, otherwise a Docker
# CLI older than 23 with DOCKER_BUILDKIT=1 (its built-in BuildKit client).
# Set DOCKER=/path/to/docker to choose the client.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${TARGET_TRIPLE:-}" ]; then
    case "$(uname -m)" in
        x86_64 | amd64) TARGET_TRIPLE=x86_64-unknown-linux-gnu ;;
        aarch64 | arm64) TARGET_TRIPLE=aarch64-unknown-linux-gnu ;;
        *)
            echo "build-images.sh: unsupported CPU $(uname -m): images are built for x86_64 and aarch64" >&2
            exit 1
            ;;
    esac
fi
# A guard against unnoticed growth, not a hard need: 20 MiB since the Gateway
# API and Ingress adapters and the h2-crate HTTP/2 engine took the lb from
# 14.3 MB to 17.5 MB (docs/docker.md, "Image sizes"). Raise it only with a
# line there saying what grew.
MAX_IMAGE_BYTES=$((20 * 1024 * 1024))

usage() {
    sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

from_source=0
from_binaries=0
binaries_only=0
components=()
for arg in "$@"; do
    case "$arg" in
        --from-source) from_source=1 ;;
        --from-binaries) from_binaries=1 ;;
        --binaries-only) binaries_only=1 ;;
        backend | lb) components+=("$arg") ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build-images.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done
if [ "${#components[@]}" -eq 0 ]; then
    components=(backend lb)
fi

# The version in [workspace.package] of Cargo.toml.
VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n1)
VERSION=${VERSION:-0.1.0}

# BUILD: the command that runs a BuildKit build and loads the image into the
# engine. BuildKit matters for the prebuilt path: it resolves only the stages
# a target uses, so the Rust base image of the builder stage is never pulled.
BUILD=()
pick_builder() {
    local d v major candidates=()
    if [ -n "${DOCKER:-}" ]; then
        candidates=("$DOCKER")
    else
        mapfile -t candidates < <(type -ap docker | awk '!seen[$0]++')
    fi
    if [ "${#candidates[@]}" -eq 0 ]; then
        echo "build-images.sh: no docker client found" >&2
        return 1
    fi
    for d in "${candidates[@]}"; do
        if "$d" buildx version >/dev/null 2>&1; then
            BUILD=("$d" buildx build --load)
            echo "==> builder: $d buildx build --load"
            return 0
        fi
    done
    for d in "${candidates[@]}"; do
        v=$("$d" version --format '{{.Client.Version}}' 2>/dev/null || true)
        major=${v%%.*}
        if [[ "$major" =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]; then
            BUILD=(env DOCKER_BUILDKIT=1 "$d" build)
            echo "==> builder: DOCKER_BUILDKIT=1 $d build (client $v)"
            return 0
        fi
    done
    echo "build-images.sh: no BuildKit-capable docker client: install the buildx plugin" \
        "(or use a Docker CLI < 23 with DOCKER_BUILDKIT=1)" >&2
    return 1
}

# check_static BIN: a scratch image needs a static binary.
check_static() {
    if command -v readelf >/dev/null 2>&1 && grep -q 'INTERP' <<<"$(readelf -l "$1")"; then
        echo "build-images.sh: $1 is dynamically linked; a scratch image needs a static binary" >&2
        return 1
    fi
}

# use_binaries: --from-binaries takes what is already built, and says so.
use_binaries() {
    local c bin
    for c in "${components[@]}"; do
        bin="$ROOT/target/$TARGET_TRIPLE/release/$c"
        if [ ! -x "$bin" ]; then
            echo "build-images.sh: --from-binaries: $bin is missing; build it first (scripts/build-images.sh on a machine with Rust)" >&2
            return 1
        fi
        check_static "$bin"
        echo "==> using $bin (built $(date -u -r "$bin" +%Y-%m-%dT%H:%M:%SZ))"
    done
}

build_binaries() {
    local c
    for c in "${components[@]}"; do
        local args=(-p "$c")
        if [ "$c" = lb ]; then
            args+=(--no-default-features)
        fi
        echo "==> cargo build --release (static, $TARGET_TRIPLE) ${args[*]}"
        # Symbols stripped as in the Dockerfile's builder stage (2 MB less;
        # panic messages keep file and line).
        (cd "$ROOT" && RUSTFLAGS='-C target-feature=+crt-static' CARGO_PROFILE_RELEASE_STRIP=symbols \
            cargo build --release --locked --target "$TARGET_TRIPLE" \
            --target-dir "$ROOT/target" "${args[@]}")
        check_static "$ROOT/target/$TARGET_TRIPLE/release/$c"
    done
}

build_images() {
    local source=$1 c extra=()
    if [ -n "${RUST_IMAGE:-}" ]; then
        extra+=(--build-arg "RUST_IMAGE=$RUST_IMAGE")
    fi
    for c in "${components[@]}"; do
        echo "==> image roundhouse/$c:$VERSION (BIN_SOURCE=$source)"
        "${BUILD[@]}" --progress=plain \
            --file "$ROOT/Dockerfile" \
            --target "$c" \
            --build-arg "BIN_SOURCE=$source" \
            --build-arg "TARGET_TRIPLE=$TARGET_TRIPLE" \
            --build-arg "VERSION=$VERSION" \
            "${extra[@]}" \
            --tag "roundhouse/$c:$VERSION" \
            --tag "roundhouse/$c:latest" \
            "$ROOT"
    done
}

report_sizes() {
    local c size status=0
    echo "==> image sizes"
    for c in "${components[@]}"; do
        size=$(docker image inspect -f '{{.Size}}' "roundhouse/$c:$VERSION")
        printf '%-28s %10d bytes  (%s MB)\n' "roundhouse/$c:$VERSION" "$size" \
            "$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1000000 }')"
        if [ "$size" -gt "$MAX_IMAGE_BYTES" ]; then
            echo "build-images.sh: roundhouse/$c:$VERSION is larger than $((MAX_IMAGE_BYTES / 1024 / 1024)) MiB (see docs/docker.md, Image sizes)" >&2
            status=1
        fi
    done
    return "$status"
}

if [ "$from_source" -eq 0 ] && [ "$(uname -s)" != Linux ]; then
    echo "build-images.sh: the images need static Linux binaries, which cargo does not build on $(uname -s);" \
        "use: scripts/build-images.sh --from-source (compiles inside Docker, natively for this CPU)" >&2
    exit 1
fi
if [ "$binaries_only" -eq 1 ]; then
    build_binaries
    exit 0
fi
pick_builder
if [ "$from_source" -eq 1 ]; then
    build_images builder
elif [ "$from_binaries" -eq 1 ]; then
    use_binaries
    build_images prebuilt
else
    build_binaries
    build_images prebuilt
fi
report_sizes
