# shellcheck shell=bash
# Helpers shared by the provisioning scripts.

log() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# step NAME HINT COMMAND...: run one provisioning step in a subshell with
# errexit in force (a function called from `if` or `||` would run without it).
# On failure print which step failed, the hint, and how to retry, then exit
# with the step's status. Never call step itself from `if`, `&&` or `||`.
step() {
  local name="$1" hint="$2" rc
  shift 2
  log "step: $name"
  set +e
  (set -e; "$@")
  rc=$?
  set -e
  if ((rc != 0)); then
    printf "ERROR: step '%s' failed (exit %d).\n" "$name" "$rc" >&2
    [[ -n "$hint" ]] && printf '  %s\n' "$hint" >&2
    printf '  Fix the cause, then re-run the provisioning from the host: vagrant provision\n' >&2
    exit "$rc"
  fi
}

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

# linux_arch: the Go/Kubernetes name of this machine's CPU (amd64, arm64).
linux_arch() {
  case "$(uname -m)" in
    x86_64 | amd64) echo amd64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) die "unsupported CPU $(uname -m): roundhouse's VM provisioning supports x86_64 (amd64) and aarch64 (arm64)" ;;
  esac
}

# wait_for_api SECONDS: poll the API server until it answers /readyz. After a
# reboot `docker start` returns before the API server listens, and
# `kubectl wait` does not retry a refused connection.
wait_for_api() {
  local deadline=$((SECONDS + $1)) out
  until out="$(kubectl get --raw /readyz 2>&1)" && [[ "$out" == ok ]]; do
    if ((SECONDS >= deadline)); then
      printf 'the API server did not answer within %ss; last answer: %s\n' "$1" "$out" >&2
      return 1
    fi
    sleep 2
  done
  log "API server answers /readyz"
}
