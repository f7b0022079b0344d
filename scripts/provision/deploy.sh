#!/usr/bin/env bash
# Build both images, (re)create nothing that exists, load the images into
# kind, apply manifests/, wait for the rollouts and run ./test.sh.
# Idempotent: `vagrant provision` runs it again to redeploy fresh images.
#
# Env: ROUNDHOUSE_SRC   repository root (default: two levels up)
#      CLUSTER_NAME     kind cluster name (default: roundhouse)
#      SKIP_BUILD=1     reuse images already in the local Docker cache
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/provision/lib.sh
source "$here/lib.sh"
# shellcheck source=scripts/provision/versions.sh
source "$here/versions.sh"

src="${ROUNDHOUSE_SRC:-$(cd "$here/../.." && pwd)}"
cluster="${CLUSTER_NAME:-roundhouse}"
namespace=roundhouse
images=(roundhouse/backend:0.1.0 roundhouse/lb:0.1.0)
export KUBECONFIG="${KUBECONFIG:-/root/.kube/config}"
cd "$src"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building images from source (scripts/build-images.sh --from-source)"
  bash scripts/build-images.sh --from-source
fi
for image in "${images[@]}"; do
  docker image inspect "$image" >/dev/null 2>&1 || die "image $image missing; build it first"
done

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "kind cluster $cluster already exists"
  # After a VM reboot the node containers may be stopped; start them (no-op if running).
  mapfile -t nodes < <(kind get nodes --name "$cluster")
  docker start "${nodes[@]}" >/dev/null
  fresh=0
else
  log "creating kind cluster $cluster ($KIND_NODE_IMAGE)"
  kind create cluster --name "$cluster" --config kind-config.yaml \
    --image "$KIND_NODE_IMAGE" --wait 180s
  fresh=1
fi
kind export kubeconfig --name "$cluster" --kubeconfig "$KUBECONFIG"
kubectl wait --for=condition=Ready nodes --all --timeout=180s
if id vagrant >/dev/null 2>&1; then
  install -d -o vagrant -g vagrant /home/vagrant/.kube
  install -o vagrant -g vagrant -m 0600 "$KUBECONFIG" /home/vagrant/.kube/config
fi

log "loading images into kind"
kind load docker-image --name "$cluster" "${images[@]}"

log "applying manifests/"
kubectl apply -f manifests/
kubectl wait --for condition=established --timeout=60s crd/upstreams.roundhouse.dev

if [[ "$fresh" == 0 ]]; then
  # Same tags, new image contents: restart so the pods pick them up.
  log "restarting deployments to pick up the freshly loaded images"
  kubectl -n "$namespace" rollout restart deployment/backend deployment/lb
fi
kubectl -n "$namespace" rollout status deployment/backend --timeout=300s
kubectl -n "$namespace" rollout status deployment/lb --timeout=300s
kubectl -n "$namespace" get pods -o wide

log "running LB_URL=http://localhost ./test.sh"
if LB_URL=http://localhost ./test.sh; then
  log "RESULT: test.sh PASSED (exact 50/50 across the two backends)"
else
  rc=$?
  log "RESULT: test.sh FAILED (exit $rc)"
  exit "$rc"
fi
