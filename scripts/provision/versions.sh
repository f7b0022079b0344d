# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are consumed by the scripts that source this file
# Pinned tool versions and the sha256 of each linux download, per CPU
# (amd64, arm64). Sourced by install-tools.sh. To bump a tool: change the
# version AND its checksums together (take each checksum from the project's
# release page / published .sha256 file, never from the downloaded file itself).
# An empty checksum makes install-tools.sh fall back to the checksum published
# next to the download, with a warning.

# kind: https://github.com/kubernetes-sigs/kind/releases/tag/v0.29.0
KIND_VERSION="v0.29.0"
KIND_SHA256_amd64="c72eda46430f065fb45c5f70e7c957cc9209402ef309294821978677c8fb3284"
# NOT PINNED (could not be read offline when arm64 support was added).
KIND_SHA256_arm64=""
# Node image that kind v0.29.0 was released with (Kubernetes v1.33.1); kind
# publishes it for amd64 and arm64.
KIND_NODE_IMAGE="kindest/node:v1.33.1"

# kubectl: matches the node image's Kubernetes minor.
KUBECTL_VERSION="v1.33.1"
# NOT PINNED: these checksums could not be verified offline when the script
# was written, so they are left empty and install-tools.sh falls back to the
# checksum published next to the binary (dl.k8s.io/.../kubectl.sha256),
# printing a warning. Pin one by pasting the value of
#   https://dl.k8s.io/release/v1.33.1/bin/linux/<arch>/kubectl.sha256
KUBECTL_SHA256_amd64=""
KUBECTL_SHA256_arm64=""

# Helm: https://github.com/helm/helm/releases/tag/v3.18.4
HELM_VERSION="v3.18.4"
HELM_SHA256_amd64="f8180838c23d7c7d797b208861fecb591d9ce1690d8704ed1e4cb8e2add966c1"
# NOT PINNED (see above): get.helm.sh/helm-v3.18.4-linux-arm64.tar.gz.sha256sum
HELM_SHA256_arm64=""
