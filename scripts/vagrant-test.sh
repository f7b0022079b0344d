#!/usr/bin/env bash
# Vagrant itself runs the repository's Vagrantfile and its provisioning, in a
# container instead of a VM (no nested virtualisation here).
#
#   scripts/vagrant-test.sh
#
# How: Debian's `vagrant` with its docker provider boots the box made by
# scripts/vagrant-box.sh (debootstrap'ed Debian, sshd, user vagrant with
# Vagrant's insecure key, has_ssh = true). Vagrant reads the REAL Vagrantfile
# of the tree under test (VAGRANT_CWD); the only additions come from a
# Vagrantfile in a temporary VAGRANT_HOME, which Vagrant merges under the
# project's: the docker provider settings (image, container name, volumes) and
# `box = nil` for that provider (the docker provider boots an image, not a box).
# So Vagrant uploads the Vagrantfile's shell provisioners alone to
# /tmp/vagrant-shell and runs them as root, exactly as on a VM.
#
# Replaced, and nothing else: the downloads of kind, kubectl and helm, and
# kind's cluster (tests/standins/, which record every call); the box's Docker
# engine (a container cannot run one: the box uses the HOST engine through its
# socket, so the images are built for real by the box's own docker client,
# installed by apt in the box, and land in the host's image store; that
# socket is root on the host, which is acceptable for a throw-away test box
# and nothing else). The
# in-VM compile in the Rust image (--from-source) cannot run either, since no
# image can be pulled here: the test passes ROUNDHOUSE_BUILD=binaries, so the
# box builds the images from the static binaries the host built
# (scripts/build-images.sh; built first if missing).
#
# Steps (PASS/FAIL each, last line "<n> passed, <m> failed"):
#   up, order of steps, apt installs, image builds, loaded == referenced
#   images, kind config, test.sh in the VM and from the host, kubectl for
#   user vagrant, a second provision (idempotent), reload (nodes stopped as
#   after a reboot: the always-run boot step brings the LB back), a failing
#   step's message, the architecture refusal, destroy.
#
# Environment:
#   VAGRANT_TEST_SRC  tree whose Vagrantfile and scripts are tested (default:
#                     this repository; e.g. a `git archive` of an older commit)
#   KEEP=1            leave the box running at the end
#   SKIP_BUILD=1      do not build missing static binaries first
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$(cd "${VAGRANT_TEST_SRC:-$root}" && pwd)
triple_dir=target/$(uname -m)-unknown-linux-gnu/release
started=$(date +%s)

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS: %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL: %s\n' "$*"; }
check() { # check DESCRIPTION COMMAND...: PASS, or FAIL and return 1 (so `check ... || show LOG` shows it)
    local d=$1
    shift
    if "$@"; then pass "$d"; else fail "$d"; return 1; fi
}
show() { sed 's/^/      | /' "$@" | tail -n "${SHOW_LINES:-25}"; }

# Without an engine nothing here can run: a skip (exit 77) for test-all.sh.
command -v docker >/dev/null 2>&1 || { echo "SKIP: no Docker engine (the docker client is not installed)"; exit 77; }
docker info >/dev/null 2>&1 || { echo "SKIP: no Docker engine answers (docker info failed)"; exit 77; }
command -v vagrant >/dev/null 2>&1 || { echo "FAIL: vagrant is not installed (scripts/ci/install.sh)"; echo "0 passed, 1 failed"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/vagrant-test.XXXXXX")
run_id="rhvt$$"
box_name="$run_id-box"
export VAGRANT_CWD=$src
export VAGRANT_HOME=$work/vagrant.d
export VAGRANT_DOTFILE_PATH=$work/dot-vagrant
export VAGRANT_DEFAULT_PROVIDER=docker
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_NO_PLUGINS=1
export VAGRANT_TEST_BOX_NAME=$box_name
export ROUNDHOUSE_BUILD=binaries

cleanup() {
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "KEEP=1: box $box_name left running (VAGRANT_CWD=$src VAGRANT_HOME=$VAGRANT_HOME VAGRANT_DOTFILE_PATH=$VAGRANT_DOTFILE_PATH)"
        return
    fi
    vagrant destroy -f >/dev/null 2>&1 || true
    local ids
    # (two queries: docker ANDs filters of different kinds)
    mapfile -t ids < <(docker ps -aq --filter "label=dev.roundhouse.standin=$run_id-"; docker ps -aq --filter "name=^$box_name\$")
    ((${#ids[@]} == 0)) || docker rm -f "${ids[@]}" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the box, binaries, stand-in configuration -------------------------------
t=$SECONDS
if ! box=$("$root/scripts/vagrant-box.sh" 2>"$work/box.log"); then
    fail "box image built (scripts/vagrant-box.sh)"
    show "$work/box.log"
    echo "$passed passed, $failed failed"
    exit 1
fi
pass "box image $box ready ($((SECONDS - t))s)"
if [[ ${SKIP_BUILD:-0} != 1 && ( ! -x $src/$triple_dir/lb || ! -x $src/$triple_dir/backend ) ]]; then
    t=$SECONDS
    if (cd "$src" && scripts/build-images.sh) >"$work/build.log" 2>&1; then
        pass "static binaries built on the host for ROUNDHOUSE_BUILD=binaries ($((SECONDS - t))s)"
    else
        fail "static binaries built on the host"
        show "$work/build.log"
    fi
fi

port=
for ((i = 0; i < 50; i++)); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
export ROUNDHOUSE_HOST_PORT=$port
mkdir -p "$work/state" "$VAGRANT_HOME"
chmod 0777 "$work/state"
log=$work/state/calls.log
: >"$log"
standin_env=$work/standins.env
write_env() { # write_env [STANDIN_FAIL value]
    cat >"$standin_env" <<EOF
STANDIN_LOG=/var/lib/roundhouse-standins/calls.log
STANDIN_STATE=/var/lib/roundhouse-standins
STANDIN_NETNS=container:$box_name
STANDIN_PREFIX=$run_id-
STANDIN_NODE_IMAGE=$box
STANDIN_VERSIONS=/vagrant/scripts/provision/versions.sh
STANDIN_FAIL="${1:-}"
EOF
}
write_env
cat >"$VAGRANT_HOME/Vagrantfile" <<EOF
# Written by scripts/vagrant-test.sh: the docker provider for the test box,
# merged under the project's Vagrantfile. Nothing here touches provisioning.
Vagrant.configure("2") do |config|
  config.vm.provider "docker" do |d, override|
    override.vm.box = nil
    d.image = "$box"
    d.name = ENV.fetch("VAGRANT_TEST_BOX_NAME")
    d.has_ssh = true
    d.remains_running = true
    d.volumes = [
      "/var/run/docker.sock:/var/run/docker.sock",
      "$root/tests/standins:/opt/roundhouse-standins:ro",
      "$standin_env:/etc/roundhouse-standins.env:ro",
      "$work/state:/var/lib/roundhouse-standins",
    ]
  end
end
EOF

# calls_since N: the stand-in calls after line N of the record.
calls_since() { tail -n "+$(($1 + 1))" "$log"; }
mark() { wc -l <"$log"; }
in_box() { vagrant ssh -c "$1" -- -q 2>/dev/null; }
host_test() { # host_test LABEL: the README's host command, against the forwarded port
    if LB_URL="http://127.0.0.1:$port" "$src/test.sh" >"$work/host-test.$1" 2>&1; then
        pass "$1: LB_URL=http://127.0.0.1:$port ./test.sh on the host passes (VM port forwarded by Vagrant)"
    else
        fail "$1: ./test.sh on the host against the forwarded port $port"
        show "$work/host-test.$1"
    fi
}
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null; }
manifest_images() { grep -h '^[[:space:]-]*image:' "$src"/manifests/*.yaml | awk '{ print $NF }' | tr -d '"' | sort -u; }
loaded_images() { awk '/^# loaded / { print $3 }' "$log" | sort -u; }

# --- 1. vagrant up ------------------------------------------------------------
t=$SECONDS
vagrant up --provider=docker >"$work/up.log" 2>&1
up_rc=$?
up_secs=$((SECONDS - t))
if ((up_rc == 0)) && grep -q 'RESULT: test.sh PASSED' "$work/up.log"; then
    pass "vagrant up --provider=docker ran the provisioning to 'RESULT: test.sh PASSED' (${up_secs}s)"
else
    fail "vagrant up --provider=docker (exit $up_rc, ${up_secs}s); last lines:"
    SHOW_LINES=30 show "$work/up.log"
fi
check "vagrant uploaded the provisioner to /tmp/vagrant-shell and ran it as root" \
    grep -q 'Running provisioner: roundhouse (shell)' "$work/up.log"

# --- 2. order of steps ----------------------------------------------------------
order_ok() {
    local want=("kind get clusters" "kind create cluster" "kind export kubeconfig" "kubectl wait --for=condition=Ready nodes"
        "kind load docker-image" "kubectl apply -f manifests/" "kubectl wait --for condition=established"
        "kubectl -n roundhouse rollout status deployment/backend" "kubectl -n roundhouse rollout status deployment/lb")
    local line=0 w n
    for w in "${want[@]}"; do
        n=$(grep -n -F -- "$w" "$log" | awk -F: -v l="$line" '$1 > l { print $1; exit }')
        [[ -n $n ]] || { echo "      missing (in order): $w"; return 1; }
        line=$n
    done
    # Images are built before they are loaded, and test.sh runs last.
    local b l r
    b=$(grep -n '==> image roundhouse/lb' "$work/up.log" | head -n1 | cut -d: -f1)
    l=$(grep -n 'loading images into kind' "$work/up.log" | head -n1 | cut -d: -f1)
    r=$(grep -n 'RESULT: test.sh PASSED' "$work/up.log" | head -n1 | cut -d: -f1)
    [[ -n $b && -n $l && -n $r ]] && ((b < l && l < r))
}
check "order: tools, build, create cluster, kubeconfig, nodes Ready, kind load, apply, CRD established, rollouts, test.sh" order_ok

# --- 3. apt installs in the box -------------------------------------------------
# shellcheck disable=SC2016 # expanded by dpkg-query in the box
in_box 'dpkg-query -W -f "\${Package} \${Status}\n" docker.io docker-cli docker-buildx curl; sudo docker buildx version; grep -h "^Commandline: apt-get install" /var/log/apt/history.log' \
    >"$work/apt.txt" 2>&1
apt_ok() {
    [[ $(grep -c "install ok installed" "$work/apt.txt") -eq 4 ]] &&
        grep -q 'github.com/docker/buildx' "$work/apt.txt" &&
        grep -q 'docker.io' "$work/apt.txt" && grep -q 'docker-buildx' "$work/apt.txt"
}
check "apt installed docker.io, docker-cli, docker-buildx and curl in the box; docker buildx works there" apt_ok || show "$work/apt.txt"

# --- 4. image builds, and what kind loaded ---------------------------------------
built_ok() { # the box's docker wrote and tagged each image, and kind loaded that ID
    local img id
    for img in roundhouse/backend:0.1.0 roundhouse/lb:0.1.0; do
        id=$(image_id "$img") || return 1
        if ! grep -q "writing image $id" "$work/up.log" || ! grep -q "naming to docker.io/$img" "$work/up.log"; then
            echo "      the box's build did not write $img as $id"
            return 1
        fi
        grep -qx "# loaded $img $id" "$log" || { echo "      kind did not load $img $id"; return 1; }
    done
    grep -q 'builder: /usr/bin/docker buildx build --load' "$work/up.log"
}
check "the box's own docker client (buildx) built and tagged both images, and kind loaded exactly those image IDs" built_ok
check "images loaded into kind == images referenced by manifests/ ($(manifest_images | paste -sd' ' -))" \
    diff <(manifest_images) <(loaded_images)
check "the pods run the loaded images (stand-in cluster)" \
    bash -c "grep -q '^# run deployment/backend .* roundhouse/backend:0.1.0 $(image_id roundhouse/backend:0.1.0)' '$log' && grep -q '^# run deployment/lb .* roundhouse/lb:0.1.0 $(image_id roundhouse/lb:0.1.0)' '$log'"
check "manifests use imagePullPolicy Never: a missed kind load fails instead of pulling a public image" \
    bash -c "! grep -q 'imagePullPolicy=IfNotPresent' '$log' && grep -q 'imagePullPolicy=Never' '$log'"
check "kind got kind-config.yaml with the VM's listenAddress 0.0.0.0 and hostPort 8080 (forwarded by Vagrant)" \
    grep -q '^# create: .*listenAddress=0.0.0.0 hostPort=8080' "$log"

# --- 5. test.sh in the VM (above) and from the host -------------------------------
host_test "after vagrant up"
check "vagrant up's last lines tell the host URL (http://localhost:$port)" \
    bash -c "tail -n 8 '$work/up.log' | grep -q 'http://localhost:$port'"
check "user vagrant gets the cluster's kubeconfig (~/.kube/config, owned by vagrant)" \
    in_box 'test -O ~/.kube/config && grep -q kind-roundhouse ~/.kube/config'

# --- 6. second provision: idempotent ----------------------------------------------
m=$(mark)
t=$SECONDS
vagrant provision >"$work/provision2.log" 2>&1
rc=$?
if ((rc == 0)) && grep -q 'RESULT: test.sh PASSED' "$work/provision2.log"; then
    pass "second vagrant provision passes ($((SECONDS - t))s)"
else
    fail "second vagrant provision (exit $rc)"
    show "$work/provision2.log"
fi
idem_ok() {
    calls_since "$m" >"$work/calls2"
    ! grep -q '^kind create cluster' "$work/calls2" &&
        grep -q '^kubectl -n roundhouse rollout restart deployment/backend deployment/lb' "$work/calls2" &&
        grep -q '^kind load docker-image' "$work/calls2" &&
        ! grep -q 'apt-get' "$work/provision2.log" &&
        grep -q 'already installed' "$work/provision2.log" &&
        [[ $(in_box 'grep -c "^Commandline: apt-get install" /var/log/apt/history.log') == "$(grep -c '^Commandline: apt-get install' "$work/apt.txt")" ]]
}
check "second provision: no apt-get, no new cluster; images rebuilt, reloaded and the deployments restarted" idem_ok
host_test "after the second provision"

# --- 7. vagrant reload, with the kind nodes down as after a reboot ---------------
mapfile -t nodes < <(docker ps -q --filter "label=dev.roundhouse.standin=$run_id-" --filter "name=$run_id-roundhouse-")
((${#nodes[@]} > 0)) && docker stop -t 1 "${nodes[@]}" >/dev/null
m=$(mark)
t=$SECONDS
vagrant reload >"$work/reload.log" 2>&1
rc=$?
calls_since "$m" >"$work/calls3"
if ((rc == 0)); then pass "vagrant reload exits 0 ($((SECONDS - t))s)"; else fail "vagrant reload (exit $rc)"; show "$work/reload.log"; fi
reload_ok() {
    ! grep -q 'Running provisioner: roundhouse (shell)' "$work/reload.log" &&
        grep -q 'Running provisioner: roundhouse-boot (shell)' "$work/reload.log" &&
        ! grep -qE '^(kind create|kind load|kubectl apply)' "$work/calls3" &&
        grep -q 'refusing call' "$work/calls3" &&
        grep -q '^kubectl wait --for=condition=Ready nodes' "$work/calls3" &&
        [[ -z $(docker ps -q --filter "label=dev.roundhouse.standin=$run_id-" --filter "name=$run_id-roundhouse-" --filter status=exited) ]]
}
check "reload: only the boot step runs (no build, no apply); it starts the stopped kind nodes and waits out the API server's refusals" reload_ok ||
    show "$work/calls3"
host_test "after vagrant reload"

# --- 8. a failing step says which step and what to do ------------------------------
write_env "kind load"
vagrant provision >"$work/provision-fail.log" 2>&1
rc=$?
write_env
fail_ok() {
    ((rc != 0)) &&
        grep -q "ERROR: step 'load the images into kind' failed" "$work/provision-fail.log" &&
        grep -q 'vagrant provision' "$work/provision-fail.log" &&
        ! grep -q 'RESULT: test.sh PASSED' "$work/provision-fail.log"
}
check "a failing kind load: vagrant provision exits non-zero and names the step and the retry command" fail_ok ||
    show "$work/provision-fail.log"

# --- 9. architecture refusal before any download ----------------------------------
arch_ok() {
    local rc
    ROUNDHOUSE_HOST_ARCH=riscv64 VAGRANT_DOTFILE_PATH=$work/dot-arch vagrant up --provider=virtualbox >"$work/arch.log" 2>&1
    rc=$?
    ((rc != 0)) && grep -q 'riscv64' "$work/arch.log" && ! grep -qiE 'downloading|adding box|loading metadata' "$work/arch.log"
}
check "an unsupported host CPU (riscv64): vagrant up refuses in the Vagrantfile, before any box is looked up" arch_ok ||
    show "$work/arch.log"
arm_ok() { # Vagrant < 2.4 cannot pick a box's arm64 build: refused, naming the version needed
    if vagrant --version | grep -qE 'Vagrant 2\.[0-3]\.'; then
        ! ROUNDHOUSE_HOST_ARCH=arm64 VAGRANT_DOTFILE_PATH=$work/dot-arch vagrant status >"$work/arm.log" 2>&1 &&
            grep -q 'Vagrant >= 2.4.0 is needed to pick the arm64 build' "$work/arm.log"
    else
        ROUNDHOUSE_HOST_ARCH=arm64 vagrant validate --ignore-provider >"$work/arm.log" 2>&1
    fi
}
libvirt_arm_ok() {
    ! ROUNDHOUSE_HOST_ARCH=arm64 VAGRANT_DOTFILE_PATH=$work/dot-arch vagrant up --provider=libvirt >"$work/arm-libvirt.log" 2>&1 &&
        grep -q 'exists for amd64 only' "$work/arm-libvirt.log" && ! grep -qiE 'downloading|adding box|loading metadata' "$work/arm-libvirt.log"
}
check "an arm64 host with --provider=libvirt: refused (the libvirt box is amd64 only) before any box is looked up" libvirt_arm_ok ||
    show "$work/arm-libvirt.log"
check "an arm64 host: with Vagrant < 2.4 refused before any download, naming the version needed (>= 2.4: accepted)" arm_ok ||
    show "$work/arm.log"

# --- 10. destroy --------------------------------------------------------------------
if [[ ${KEEP:-0} != 1 ]]; then
    vagrant destroy -f >"$work/destroy.log" 2>&1
    check "vagrant destroy -f removes the box" bash -c "[[ -z \$(docker ps -aq --filter name=$box_name) ]]"
    # What a real `vagrant destroy` takes with the VM: the kind nodes and pods.
    mapfile -t leftovers < <(docker ps -aq --filter "label=dev.roundhouse.standin=$run_id-")
    ((${#leftovers[@]} == 0)) || docker rm -f "${leftovers[@]}" >/dev/null
fi
printf 'vagrant up %ss; whole test %ss\n' "$up_secs" "$(($(date +%s) - started))"
printf '%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
