#!/usr/bin/env bash
# Builds the throw-away "VM" that scripts/vagrant-test.sh boots with Vagrant's
# docker provider: a Debian root made with debootstrap from Debian's archive
# (nothing is pulled from a container registry), imported with `docker
# import`, with sshd, a `vagrant` user that has passwordless sudo, and
# Vagrant's well-known INSECURE public key (taken from the installed vagrant
# package, keys/vagrant.pub; Vagrant replaces it with a fresh key pair on first
# boot). Never use this image for anything but that test.
#
#   scripts/vagrant-box.sh          # prints the image tag (builds it if absent)
#
# The tag carries a hash of this script and the suite, so an unchanged box is
# reused between runs on one machine (docker image cache); CI starts without
# it and pays the debootstrap (about 2 minutes).
#
# What differs from a real Vagrant box, and why (a container is not a VM):
#   - no systemd and no init: the container runs sshd in the foreground;
#   - /usr/sbin/policy-rc.d refuses to start services, so installing
#     docker.io does not try to start a Docker engine inside the container
#     (the test gives the box the host's engine through its socket);
#   - /usr/local/bin/{kind,kubectl,helm} are symlinks to the stand-ins that
#     the test mounts at /opt/roundhouse-standins (tests/standins/).
#
# Environment: BOX_SUITE (default trixie: docker.io >= 23 with a separate
# docker-buildx package, like Ubuntu 24.04), DEBIAN_MIRROR.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
suite=${BOX_SUITE:-trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'vagrant-box.sh: %s\n' "$*" >&2; exit 1; }

pubkey=
for k in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
    /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
    [[ -f $k ]] && pubkey=$k
done
[[ -n $pubkey ]] || die "Vagrant's insecure public key (keys/vagrant.pub) not found: install vagrant"

key=$( (cat "${BASH_SOURCE[0]}" "$pubkey"; echo "$suite $mirror") | sha256sum | cut -c1-12)
tag="roundhouse-vagrant-box:$suite-$key"
if docker image inspect "$tag" >/dev/null 2>&1; then
    log "box $tag already built"
    echo "$tag"
    exit 0
fi
command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap)"
[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"

mkdir -p "$root/target"
work=$(mktemp -d "$root/target/vagrant-box.XXXXXX")
cleanup() {
    # debootstrap may leave proc/sys mounted on failure.
    local m
    for m in proc sys dev/pts dev; do
        mountpoint -q "$work/rootfs/$m" 2>/dev/null && umount -l "$work/rootfs/$m"
    done
    rm -rf "$work"
}
trap cleanup EXIT

start=$SECONDS
log "debootstrap --variant=minbase $suite ($mirror)"
debootstrap --variant=minbase --include=openssh-server,sudo,ca-certificates \
    "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed"
}
r=$work/rootfs
chroot "$r" useradd --create-home --shell /bin/bash vagrant
install -d -m 0700 -o 1000 -g 1000 "$r/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$pubkey" "$r/home/vagrant/.ssh/authorized_keys"
[[ $(stat -c %u "$r/home/vagrant") == 1000 ]] || die "vagrant user did not get uid 1000"
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' >"$r/etc/sudoers.d/vagrant"
chmod 0440 "$r/etc/sudoers.d/vagrant"
printf '#!/bin/sh\n# No services start inside this test container (see scripts/vagrant-box.sh).\nexit 101\n' \
    >"$r/usr/sbin/policy-rc.d"
chmod 0755 "$r/usr/sbin/policy-rc.d"
for tool in kind kubectl helm; do
    ln -sf "/opt/roundhouse-standins/$tool" "$r/usr/local/bin/$tool"
done
# Each box makes its own host keys at start; none are baked into the image.
rm -f "$r"/etc/ssh/ssh_host_*
printf 'UseDNS no\nPasswordAuthentication no\n' >"$r/etc/ssh/sshd_config.d/vagrant-test.conf"
cat >"$r/usr/local/sbin/box-init" <<'EOF'
#!/bin/sh
# PID 1 of the test box: host keys, then sshd in the foreground.
set -e
ssh-keygen -A >/dev/null
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e
EOF
chmod 0755 "$r/usr/local/sbin/box-init"
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*

log "docker import -> $tag"
tar -C "$r" --numeric-owner -c . |
    docker import --change 'CMD ["/usr/local/sbin/box-init"]' --change 'EXPOSE 22' \
        --change 'LABEL dev.roundhouse.test-box=1' - "$tag" >/dev/null
log "box built in $((SECONDS - start))s"
echo "$tag"
