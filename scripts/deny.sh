#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (policy and rationale: deny.toml).
#
#   scripts/deny.sh                # licences, bans, sources; works offline
#   scripts/deny.sh --advisories   # also RustSec advisories (needs GitHub)
#
# Installs cargo-deny from crates.io when it is missing. The default run is
# offline: the advisory database lives on GitHub, which this project's
# machines and CI cannot reach; Cargo.lock and the local registry cache are
# all the other checks need.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! cargo deny --version >/dev/null 2>&1; then
  echo "deny: installing cargo-deny (cargo install --locked cargo-deny)"
  cargo install --locked cargo-deny
fi
cargo deny --version

if [[ ! -f Cargo.lock ]]; then
  echo "deny: Cargo.lock is missing; it must be committed" >&2
  exit 1
fi

# Make sure the registry cache holds every locked crate (the licence check
# reads their manifests and licence files); a no-op when it does already.
cargo fetch --locked >/dev/null

# Wildcards. deny.toml denies `*` version requirements but lets the
# workspace's own path dependencies (lb -> backend) through
# (allow-wildcard-paths) -- which cargo-deny honours only for crates marked
# `publish = false`. While a workspace crate is still publishable, its path
# dependency counts as a wildcard: then the wildcard lint is lowered to a
# warning for cargo-deny and enforced here instead, precisely: no dependency
# of a workspace crate that is not a path dependency may be `*`.
command -v jq >/dev/null || { echo "deny: jq is required (apt-get install jq)" >&2; exit 2; }
extra=()
metadata=$(cargo metadata --format-version 1 --no-deps --locked --offline)
publishable=$(jq -r '.packages[] | select(.publish != []) | .name' <<<"$metadata" | paste -sd ' ')
if [[ -n "$publishable" ]]; then
  echo "deny: note: publishable workspace crates ($publishable) -- set \`publish = false\` to let cargo-deny enforce wildcards itself"
  wild=$(jq -r '.packages[] | .name as $n | .dependencies[]
    | select(.req == "*" and .path == null) | "\($n) -> \(.name)"' <<<"$metadata")
  if [[ -n "$wild" ]]; then
    echo "deny: wildcard version requirements (not allowed):" >&2
    echo "$wild" >&2
    exit 1
  fi
  extra+=(--warn wildcard)
fi

if [[ "${1:-}" == "--advisories" ]]; then
  exec cargo deny --locked check "${extra[@]}" advisories licenses bans sources
fi
exec cargo deny --offline --locked check "${extra[@]}" licenses bans sources
