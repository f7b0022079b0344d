#!/usr/bin/env bash
# Install Docker, kind, kubectl and Helm at pinned versions (idempotent).
# Run as root inside the VM (Ubuntu/Debian).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/provision/lib.sh
source "$here/lib.sh"
# shellcheck source=scripts/provision/versions.sh
source "$here/versions.sh"

[[ "$(id -u)" -eq 0 ]] || die "run as root"
[[ "$(uname -m)" == "x86_64" ]] || die "only linux/amd64 checksums are pinned"

export DEBIAN_FRONTEND=noninteractive
bin_dir=/usr/local/bin
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Docker from the distribution archive: apt verifies the signed Release file
# and every package's sha256.
if ! command -v docker >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
  log "installing docker.io, curl"
  apt-get update -q
  apt-get install -y -q --no-install-recommends docker.io curl ca-certificates
fi
systemctl enable --now docker >/dev/null
if id vagrant >/dev/null 2>&1; then
  usermod -aG docker vagrant
fi

# have TOOL VERSION-STRING VERSION-COMMAND...: true if TOOL reports VERSION.
have() {
  local tool="$1" want="$2"
  shift 2
  command -v "$tool" >/dev/null 2>&1 && "$@" 2>/dev/null | grep -qF "$want"
}

if have kind "$KIND_VERSION" kind version; then
  log "kind $KIND_VERSION already installed"
else
  log "installing kind $KIND_VERSION"
  url="https://github.com/kubernetes-sigs/kind/releases/download/${KIND_VERSION}/kind-linux-amd64"
  fetch "$url" "$work/kind"
  verify_sha256 "$work/kind" "$KIND_SHA256" "${url}.sha256sum"
  install -m 0755 "$work/kind" "$bin_dir/kind"
fi

if have kubectl "$KUBECTL_VERSION" kubectl version --client; then
  log "kubectl $KUBECTL_VERSION already installed"
else
  log "installing kubectl $KUBECTL_VERSION"
  url="https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/amd64/kubectl"
  fetch "$url" "$work/kubectl"
  verify_sha256 "$work/kubectl" "$KUBECTL_SHA256" "${url}.sha256"
  install -m 0755 "$work/kubectl" "$bin_dir/kubectl"
fi

if have helm "$HELM_VERSION" helm version --short; then
  log "helm $HELM_VERSION already installed"
else
  log "installing helm $HELM_VERSION"
  tarball="helm-${HELM_VERSION}-linux-amd64.tar.gz"
  url="https://get.helm.sh/${tarball}"
  fetch "$url" "$work/$tarball"
  verify_sha256 "$work/$tarball" "$HELM_SHA256" "${url}.sha256sum"
  tar -xzf "$work/$tarball" -C "$work" linux-amd64/helm
  install -m 0755 "$work/linux-amd64/helm" "$bin_dir/helm"
fi

log "tools: $(docker --version); kind $(kind version); $(kubectl version --client 2>/dev/null | head -n1); helm $(helm version --short)"
