#!/usr/bin/env bash
# Build both images, create the kind cluster unless it exists, load the
# images the manifests reference into it, apply manifests/, wait for the
# rollouts and run ./test.sh. Idempotent: `vagrant provision` runs it again to
# redeploy fresh images.
#
#   deploy.sh          build + deploy + test (vagrant up, vagrant provision)
#   deploy.sh --boot   start an existing cluster after a reboot, wait for it,
#                      check the lb answers (every vagrant up/reload)
#
# Env: ROUNDHOUSE_SRC        repository root (default: two levels up)
#      ROUNDHOUSE_BUILD      from-source (default: compile in the Rust image),
#                            binaries (use the static binaries already in
#                            target/<triple>/release, e.g. built on the host),
#                            skip (reuse the images in the local Docker cache;
#                            SKIP_BUILD=1 means the same)
#      ROUNDHOUSE_HOST_PORT  host port Vagrant forwards to the lb (for the
#                            closing message; default 8080)
#      CLUSTER_NAME          kind cluster name (default: roundhouse)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/provision/lib.sh
source "$here/lib.sh"
# shellcheck source=scripts/provision/versions.sh
source "$here/versions.sh"

mode=deploy
[[ "${1:-}" == --boot ]] && mode=boot
src="${ROUNDHOUSE_SRC:-$(cd "$here/../.." && pwd)}"
cluster="${CLUSTER_NAME:-roundhouse}"
namespace=roundhouse
build="${ROUNDHOUSE_BUILD:-from-source}"
[[ "${SKIP_BUILD:-0}" == 1 ]] && build=skip
host_port="${ROUNDHOUSE_HOST_PORT:-8080}"
vm_url=http://localhost:8080
export KUBECONFIG="${KUBECONFIG:-/root/.kube/config}"
cd "$src"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The images manifests/ runs: exactly these are loaded into kind.
mapfile -t images < <(grep -h '^[[:space:]-]*image:' manifests/*.yaml | awk '{print $NF}' | tr -d '"' | sort -u)
((${#images[@]} > 0)) || die "no image: lines in manifests/"

build_images() {
  case "$build" in
    from-source) bash scripts/build-images.sh --from-source ;;
    binaries) bash scripts/build-images.sh --from-binaries ;;
    skip) log "ROUNDHOUSE_BUILD=skip: reusing the images in the Docker cache" ;;
    *) echo "ROUNDHOUSE_BUILD must be from-source, binaries or skip, not '$build'" >&2; return 2 ;;
  esac
  local image
  for image in "${images[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 || { echo "image $image is missing after the build" >&2; return 1; }
  done
}

# (The whole list is read first: with pipefail, `kind get clusters | grep -q`
# fails when grep exits at a match before kind has written every name.)
cluster_exists() { grep -qx "$cluster" <<<"$(kind get clusters 2>/dev/null)"; }

# cluster_up [create]: start (or, with "create", create) the cluster and wait
# until the API server and the nodes are ready.
cluster_up() {
  if cluster_exists; then
    log "kind cluster $cluster exists; starting its node containers (no-op if running)"
    local nodes
    mapfile -t nodes < <(kind get nodes --name "$cluster")
    docker start "${nodes[@]}" >/dev/null
  elif [[ "${1:-}" == create ]]; then
    # Inside the VM the port mapping must listen on the VM's interfaces:
    # Vagrant forwards host 127.0.0.1:$host_port to the VM's address, not to
    # its loopback. (On a laptop kind-config.yaml keeps 127.0.0.1.)
    sed 's/listenAddress: "127.0.0.1"/listenAddress: "0.0.0.0"/' kind-config.yaml >"$work/kind-config.yaml"
    grep -q 'listenAddress: "0.0.0.0"' "$work/kind-config.yaml" ||
      { echo "kind-config.yaml has no listenAddress: \"127.0.0.1\" to open up for the VM" >&2; return 1; }
    log "creating kind cluster $cluster ($KIND_NODE_IMAGE)"
    kind create cluster --name "$cluster" --config "$work/kind-config.yaml" \
      --image "$KIND_NODE_IMAGE" --wait 180s
    touch "$work/created"
  else
    echo "there is no kind cluster '$cluster' in the VM yet" >&2
    return 1
  fi
  kind export kubeconfig --name "$cluster" --kubeconfig "$KUBECONFIG"
  wait_for_api 180
  kubectl wait --for=condition=Ready nodes --all --timeout=180s
  if id vagrant >/dev/null 2>&1; then
    install -d -o vagrant -g vagrant /home/vagrant/.kube
    install -o vagrant -g vagrant -m 0600 "$KUBECONFIG" /home/vagrant/.kube/config
  fi
}

load_images() {
  log "loading images into kind: ${images[*]}"
  kind load docker-image --name "$cluster" "${images[@]}"
}

apply_manifests() {
  log "applying manifests/"
  kubectl apply -f manifests/
  kubectl wait --for condition=established --timeout=60s crd/upstreams.roundhouse.dev
  if [[ ! -e "$work/created" ]]; then
    # Same tags, new image contents: restart so the pods pick them up.
    log "restarting deployments to pick up the freshly loaded images"
    kubectl -n "$namespace" rollout restart deployment/backend deployment/lb
  fi
}

rollouts() {
  kubectl -n "$namespace" rollout status deployment/backend --timeout=300s
  kubectl -n "$namespace" rollout status deployment/lb --timeout=300s
  kubectl -n "$namespace" get pods -o wide
}

run_test() {
  log "running LB_URL=$vm_url ./test.sh"
  LB_URL="$vm_url" ./test.sh
}

# After a reboot the lb may need a moment after its rollout reports ready
# (endpoints re-published): retry test.sh for a bounded time.
run_test_until() {
  local deadline=$((SECONDS + $1))
  until LB_URL="$vm_url" ./test.sh >"$work/test.out" 2>&1; do
    if ((SECONDS >= deadline)); then cat "$work/test.out"; return 1; fi
    sleep 1
  done
  cat "$work/test.out"
}

reach_message() {
  local cmd="./test.sh"
  [[ "$host_port" != 8080 ]] && cmd="LB_URL=http://localhost:$host_port ./test.sh"
  log "the lb answers on the host at http://localhost:$host_port (VM port 8080, forwarded by Vagrant)"
  log "  from the host:  curl http://localhost:$host_port/host   and   $cmd"
  log "  in the VM:      vagrant ssh, then  kubectl -n $namespace get pods,upstreams"
}

kind_hint="Inside the VM: kind get clusters; docker ps -a; journalctl -u docker. A cluster in a bad state: kind delete cluster --name $cluster, then vagrant provision."
if [[ "$mode" == boot ]]; then
  if ! cluster_exists; then
    log "no kind cluster '$cluster' in the VM yet: run 'vagrant provision' to build and deploy"
    exit 1
  fi
  step "start the kind cluster" "$kind_hint" cluster_up
  step "wait for the rollouts" "kubectl -n $namespace get pods; kubectl -n $namespace describe pods" rollouts
  step "check that the lb answers" "kubectl -n $namespace logs deploy/lb" run_test_until 60
  reach_message
  exit 0
fi

step "build the images" \
  "Not enough memory shows as 'signal: 9' in the build: ROUNDHOUSE_VM_MEMORY=8192 vagrant reload --provision." build_images
step "create or start the kind cluster" "$kind_hint" cluster_up create
step "load the images into kind" "The images come from manifests/ (image:); check them with: docker images roundhouse/*" load_images
step "apply manifests/" "kubectl apply -f manifests/ prints which object was refused." apply_manifests
step "wait for the rollouts" "kubectl -n $namespace get pods; kubectl -n $namespace describe pods (ErrImageNeverPull: an image was not loaded)" rollouts
step "run test.sh in the VM" "kubectl -n $namespace get upstreams; kubectl -n $namespace logs deploy/lb" run_test
log "RESULT: test.sh PASSED (exact 50/50 across the two backends)"
reach_message
