#!/usr/bin/env bash
# Install Docker (with BuildKit), kind, kubectl and Helm at pinned versions
# (idempotent). Run as root inside the VM (Ubuntu/Debian, amd64 or arm64).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/provision/lib.sh
source "$here/lib.sh"
# shellcheck source=scripts/provision/versions.sh
source "$here/versions.sh"

[[ "$(id -u)" -eq 0 ]] || die "run as root"
arch="$(linux_arch)"

export DEBIAN_FRONTEND=noninteractive
bin_dir=/usr/local/bin
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# buildkit_client: true if the docker client can run a BuildKit build
# (scripts/build-images.sh needs one): the buildx plugin, or a client < 23.
buildkit_client() {
  command -v docker >/dev/null 2>&1 || return 1
  docker buildx version >/dev/null 2>&1 && return 0
  local v
  v="$(docker version --format '{{.Client.Version}}' 2>/dev/null || true)"
  [[ "${v%%.*}" =~ ^[0-9]+$ ]] && ((${v%%.*} < 23))
}

# Docker from the distribution archive: apt verifies the signed Release file
# and every package's sha256. Since Docker 23 the client's BuildKit support is
# the separate buildx plugin: Ubuntu 24.04 and Debian 13 ship it as
# docker-buildx, which --no-install-recommends would otherwise leave out.
# (That was the VM's "no BuildKit-capable docker client".)
if buildkit_client && command -v curl >/dev/null 2>&1; then
  log "docker (with BuildKit) and curl already installed"
else
  pkgs=(docker.io curl ca-certificates)
  log "apt-get update"
  apt-get update -q
  # Debian 13 also moved the client into docker-cli, which docker.io only
  # recommends; Ubuntu 24.04 still ships it inside docker.io.
  for p in docker-cli docker-buildx; do
    if [[ -n "$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" { print $2 }')" ]]; then
      pkgs+=("$p")
    fi
  done
  log "apt-get install ${pkgs[*]}"
  apt-get install -y -q --no-install-recommends "${pkgs[@]}"
  command -v docker >/dev/null 2>&1 || die "apt installed ${pkgs[*]} but there is no docker command"
  buildkit_client || die "docker $(docker version --format '{{.Client.Version}}' 2>/dev/null) has no BuildKit client and this release has no docker-buildx package; install the buildx plugin (https://docs.docker.com/go/buildx/)"
fi
# The engine: started by the package on a VM. Where one already answers
# (e.g. a host engine reached through its socket) there is nothing to start.
if docker info >/dev/null 2>&1; then
  log "Docker engine answers"
else
  systemctl enable --now docker >/dev/null
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "the Docker engine did not start (systemctl status docker)"
fi
if id vagrant >/dev/null 2>&1; then
  usermod -aG docker vagrant
fi

# have TOOL VERSION-STRING VERSION-COMMAND...: true if TOOL reports VERSION.
have() {
  local tool="$1" want="$2"
  shift 2
  # The whole output is read first: with pipefail, `"$@" | grep -q` fails
  # when grep exits at a match before the tool has written everything.
  command -v "$tool" >/dev/null 2>&1 && grep -qF "$want" <<<"$("$@" 2>/dev/null)"
}
# pinned NAME: the pinned sha256 of NAME for this CPU (may be empty).
pinned() { local v="${1}_SHA256_${arch}"; printf '%s' "${!v:-}"; }

if have kind "$KIND_VERSION" kind version; then
  log "kind $KIND_VERSION already installed"
else
  log "installing kind $KIND_VERSION ($arch)"
  url="https://github.com/kubernetes-sigs/kind/releases/download/${KIND_VERSION}/kind-linux-${arch}"
  fetch "$url" "$work/kind"
  verify_sha256 "$work/kind" "$(pinned KIND)" "${url}.sha256sum"
  install -m 0755 "$work/kind" "$bin_dir/kind"
fi

if have kubectl "$KUBECTL_VERSION" kubectl version --client; then
  log "kubectl $KUBECTL_VERSION already installed"
else
  log "installing kubectl $KUBECTL_VERSION ($arch)"
  url="https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${arch}/kubectl"
  fetch "$url" "$work/kubectl"
  verify_sha256 "$work/kubectl" "$(pinned KUBECTL)" "${url}.sha256"
  install -m 0755 "$work/kubectl" "$bin_dir/kubectl"
fi

if have helm "$HELM_VERSION" helm version --short; then
  log "helm $HELM_VERSION already installed"
else
  log "installing helm $HELM_VERSION ($arch)"
  tarball="helm-${HELM_VERSION}-linux-${arch}.tar.gz"
  url="https://get.helm.sh/${tarball}"
  fetch "$url" "$work/$tarball"
  verify_sha256 "$work/$tarball" "$(pinned HELM)" "${url}.sha256sum"
  tar -xzf "$work/$tarball" -C "$work" "linux-${arch}/helm"
  install -m 0755 "$work/linux-${arch}/helm" "$bin_dir/helm"
fi

log "tools: $(docker --version); buildx $(docker buildx version 2>/dev/null | awk '{print $2}' || echo none); kind $(kind version); $(kubectl version --client 2>/dev/null | head -n1); helm $(helm version --short)"
