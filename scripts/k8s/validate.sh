#!/usr/bin/env bash
# Offline validation of everything Kubernetes/Vagrant in the repository.
# Tools come from scripts/k8s/install-tools.sh. Prints one result line per
# check and ends with "<n> passed, <m> failed"; exits non-zero on failure.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root" || exit 2
PYTHON="${PYTHON:-python3}"
MIN_K8S_MINOR=29
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
failures=()

# check NAME COMMAND...: run, keep the output, print one result line.
check() {
  local name="$1" log
  shift
  log="$work/log.$((passed + failed))"
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    printf 'PASS  %s\n' "$name"
    if [[ -n "${VERBOSE:-}" ]]; then sed 's/^/      /' "$log"; fi
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$log" | tail -n 40
  fi
}

# Kubernetes versions whose schemas kubernetes-validate ships, >= 1.29.
k8s_versions() {
  "$PYTHON" - "$MIN_K8S_MINOR" <<'PY'
import os, re, sys
import kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
vs = sorted({tuple(map(int, m.groups())) for n in os.listdir(d)
             if (m := re.fullmatch(r"v(\d+)\.(\d+)\.\d+-local-strict", n))})
print(" ".join(f"{a}.{b}" for a, b in vs if (a, b) >= (1, int(sys.argv[1]))))
PY
}

kv_strict() { # kv_strict VERSION FILES...: kubernetes-validate --strict, quiet on success
  local version="$1"
  shift
  kubernetes-validate --strict --quiet -k "${version}.0" "$@"
}

mapfile -t manifest_files < <(find manifests -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
versions="$(k8s_versions)"
echo "kubernetes-validate schemas >= 1.${MIN_K8S_MINOR}: ${versions:-none}"
[[ -n "$versions" ]] || check "kubernetes-validate ships schemas >= 1.${MIN_K8S_MINOR}" false

# 1. Schema validation of manifests/ (every file, CRD included) per version.
for v in $versions; do
  check "kubernetes-validate --strict manifests/ (k8s $v)" kv_strict "$v" "${manifest_files[@]}"
done

# 1b. The Ingress mode's files (manifests/ingress/, its examples): built-in
#     kinds only, so the same strict schemas apply.
mapfile -t ingress_files < <(find manifests/ingress -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
for v in $versions; do
  check "kubernetes-validate --strict manifests/ingress/ (k8s $v)" kv_strict "$v" "${ingress_files[@]}"
done

# 1c. manifests/gateway-api/ (applied after manifests/ in Gateway API mode):
#     the built-in kinds strictly; the Gateway API kinds have no schema here
#     (kubernetes-validate warns and skips them): lb/tests/manifests.rs reads
#     them through the lb's own types and applies them to the fake API server.
mapfile -t gateway_files < <(find manifests/gateway-api -type f -name '*.yaml' | sort)
for v in $versions; do
  check "kubernetes-validate --strict manifests/gateway-api/ built-in kinds (k8s $v)" kv_strict "$v" "${gateway_files[@]}"
done

# 2. Helm: lint (default, custom, Ingress-mode and Gateway-API-mode values)
#    and render through Helm's engine.
custom=helm/roundhouse/ci/values-custom.yaml
ingress=helm/roundhouse/ci/values-ingress.yaml
gateway=helm/roundhouse/ci/values-gateway-api.yaml
check "helm lint helm/roundhouse (default values)" "$PYTHON" tests/k8s/k8scheck.py lint
check "helm lint helm/roundhouse -f $custom" "$PYTHON" tests/k8s/k8scheck.py lint "$custom"
check "helm lint helm/roundhouse -f $ingress" "$PYTHON" tests/k8s/k8scheck.py lint "$ingress"
check "helm lint helm/roundhouse -f $gateway" "$PYTHON" tests/k8s/k8scheck.py lint "$gateway"
check "helm render (default values)" "$PYTHON" tests/k8s/k8scheck.py render "$work/render-default"
check "helm render -f $custom" "$PYTHON" tests/k8s/k8scheck.py render "$work/render-custom" "$custom"
check "helm render -f $ingress" "$PYTHON" tests/k8s/k8scheck.py render "$work/render-ingress" "$ingress"
check "helm render -f $gateway" "$PYTHON" tests/k8s/k8scheck.py render "$work/render-gateway" "$gateway"
# The rendered chart (built-in kinds + test hook) against the oldest and
# newest supported versions; Upstream objects are checked against the CRD below.
oldest="${versions%% *}"
newest="${versions##* }"
kv_both() { kv_strict "$oldest" "$1" && kv_strict "$newest" "$1"; }
for r in default custom ingress gateway; do
  if [[ -s "$work/render-$r/objects.yaml" && -n "$newest" ]]; then
    check "kubernetes-validate --strict chart render ($r; k8s $oldest and $newest)" \
      kv_both "$work/render-$r/objects.yaml"
  fi
done

# 3. Upstream examples (values, docs, examples, custom render) vs the CRD schema.
check "Upstream examples vs CRD openAPIV3Schema (manifests/01-crd.yaml)" "$PYTHON" tests/k8s/k8scheck.py upstreams

# 4. Vagrantfile. No VirtualBox here: validate without provider config, and
#    with the libvirt provider when its plugin is installed.
check "vagrant validate --ignore-provider" vagrant validate --ignore-provider
if grep -q vagrant-libvirt <<<"$(vagrant plugin list 2>/dev/null)"; then
  check "vagrant validate (provider libvirt)" env VAGRANT_DEFAULT_PROVIDER=libvirt vagrant validate
fi

# 5. shellcheck on every script of ours.
mapfile -t scripts < <(find scripts/provision scripts/k8s -type f -name '*.sh' | sort)
check "shellcheck -x ${scripts[*]}" shellcheck -x "${scripts[@]}"

# 6. checkov: zero failed checks (skips carry their reason in annotations).
checkov_run() {
  checkov --framework kubernetes --quiet --compact --skip-download -d "$1" >"$work/checkov.out" 2>&1
  local rc=$?
  grep -E 'Passed checks|Failed checks|Check: |FAILED for' "$work/checkov.out"
  grep -q 'Passed checks' "$work/checkov.out" && grep -q 'Failed checks: 0,' "$work/checkov.out" && return "$rc"
  return 1
}
check "checkov --framework kubernetes -d manifests/" checkov_run manifests
check "checkov --framework kubernetes -d manifests/gateway-api/" checkov_run manifests/gateway-api
check "checkov --framework kubernetes -d manifests/ingress/" checkov_run manifests/ingress
if [[ -s "$work/render-default/objects.yaml" ]]; then
  check "checkov --framework kubernetes on chart render (default values)" checkov_run "$work/render-default"
fi

# 7. pytest: policy, drift (chart vs manifests), Upstream schema tests,
#    kubectl and Helm against the API stub. A skipped test fails the check:
#    every tool they need is installed by scripts/k8s/install-tools.sh.
pytest_no_skips() {
  local out rc
  out=$("$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/k8s 2>&1)
  rc=$?
  printf '%s\n' "$out"
  ((rc == 0)) && ! grep -qE '[0-9]+ skipped' <<<"$out"
}
check "pytest tests/k8s (no test skipped)" pytest_no_skips

echo
if ((failed)); then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
((failed == 0))
