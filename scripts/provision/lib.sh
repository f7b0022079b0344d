# shellcheck shell=bash
# Helpers shared by the provisioning scripts.

log() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# fetch URL DEST: download with retries, failing on HTTP errors.
fetch() {
  curl --fail --silent --show-error --location --retry 5 --retry-delay 2 \
    --output "$2" "$1"
}

# verify_sha256 FILE PINNED CHECKSUM_URL
# Checks FILE against the pinned sha256. If no checksum is pinned, falls back
# to the checksum file published next to the download and says so loudly.
verify_sha256() {
  local file="$1" pinned="$2" checksum_url="$3" expected actual
  if [[ -n "$pinned" ]]; then
    expected="$pinned"
  else
    log "WARNING: no pinned sha256 for $(basename "$file"); using published $checksum_url"
    expected="$(curl --fail --silent --show-error --location --retry 5 "$checksum_url" | awk '{print $1}')"
    [[ "$expected" =~ ^[0-9a-f]{64}$ ]] || die "could not read a sha256 from $checksum_url"
  fi
  actual="$(sha256sum "$file" | awk '{print $1}')"
  [[ "$actual" == "$expected" ]] || die "sha256 mismatch for $file: got $actual, want $expected"
  log "sha256 ok: $(basename "$file") $actual"
}
