#!/usr/bin/env bash
# Vagrant entry point (both provisioners in the Vagrantfile):
#
#   provision.sh up     install the tools, build, deploy, run test.sh
#   provision.sh boot   after every boot: start the kind cluster again, wait
#                       for it and check that the lb answers
#
# Vagrant uploads THIS FILE ALONE to /tmp/vagrant-shell and runs it there as
# root, so nothing can be found next to it: the repository is the synced
# folder named by ROUNDHOUSE_SRC (the Vagrantfile sets /vagrant). Run by hand
# from a checkout, it falls back to the checkout it is in.
set -euo pipefail

mode="${1:-up}"
src="${ROUNDHOUSE_SRC:-}"
if [[ -z "$src" ]]; then
  src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
fi
if [[ ! -f "$src/scripts/provision/deploy.sh" ]]; then
  printf 'ERROR: the roundhouse repository is not at %s (ROUNDHOUSE_SRC): no scripts/provision/deploy.sh there.\n' "$src" >&2
  printf '  Is the synced folder mounted? Check config.vm.synced_folder in the Vagrantfile, then: vagrant reload --provision\n' >&2
  exit 1
fi
if grep -q $'\r' "$src/scripts/provision/deploy.sh" "$src/scripts/provision/lib.sh"; then
  printf 'ERROR: the scripts in %s have Windows (CRLF) line endings; bash cannot run them.\n' "$src" >&2
  printf '  Check the repository out again with LF endings (.gitattributes asks git for them):\n' >&2
  printf '  git config core.autocrlf false && git rm --cached -r -q . && git reset --hard\n' >&2
  exit 1
fi
export ROUNDHOUSE_SRC="$src"
# shellcheck source=scripts/provision/lib.sh
source "$src/scripts/provision/lib.sh"

case "$mode" in
  up)
    step "install Docker, kind, kubectl and Helm" \
      "See the apt or download error above; behind a proxy, see docs/kubernetes.md (Troubleshooting)." \
      bash "$src/scripts/provision/install-tools.sh"
    exec bash "$src/scripts/provision/deploy.sh"
    ;;
  boot) exec bash "$src/scripts/provision/deploy.sh" --boot ;;
  *) die "usage: provision.sh [up|boot]" ;;
esac
