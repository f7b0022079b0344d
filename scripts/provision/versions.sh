# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are consumed by the scripts that source this file
# Pinned tool versions and the sha256 of each linux-amd64 download.
# Sourced by install-tools.sh. To bump a tool: change the version AND its
# checksum together (take the checksum from the project's release page /
# published .sha256 file, never from the downloaded file itself).

# kind: https://github.com/kubernetes-sigs/kind/releases/tag/v0.29.0
KIND_VERSION="v0.29.0"
KIND_SHA256="c72eda46430f065fb45c5f70e7c957cc9209402ef309294821978677c8fb3284"
# Node image that kind v0.29.0 was released with (Kubernetes v1.33.1).
KIND_NODE_IMAGE="kindest/node:v1.33.1"

# kubectl: matches the node image's Kubernetes minor.
KUBECTL_VERSION="v1.33.1"
# NOT PINNED: this checksum could not be verified offline when the script was
# written, so it is left empty and install-tools.sh falls back to the
# checksum published next to the binary (dl.k8s.io/.../kubectl.sha256),
# printing a warning. Pin it by pasting the value of
#   https://dl.k8s.io/release/v1.33.1/bin/linux/amd64/kubectl.sha256
KUBECTL_SHA256=""

# Helm: https://github.com/helm/helm/releases/tag/v3.18.4
HELM_VERSION="v3.18.4"
HELM_SHA256="f8180838c23d7c7d797b208861fecb591d9ce1690d8704ed1e4cb8e2add966c1"
