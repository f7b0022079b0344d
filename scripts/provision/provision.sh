#!/usr/bin/env bash
# Vagrant entry point: install the pinned tools, then build and deploy.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/install-tools.sh"
bash "$here/deploy.sh"
