#!/usr/bin/env bash
# Runs every cargo-fuzz target of lb/fuzz for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]     # per target; default 60
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`); without either it prints "SKIP: reason" and exits 77, which
# scripts/test-all.sh counts as a skip, and a skip fails its run. Set
# FUZZ_INSTALL=1 to install cargo-fuzz when it is missing.
# FUZZ_TARGETS="a b" runs only those targets.
#
# Shows that it ran: per target the seed corpus it started from, then the
# executions, coverage and the corpus it reached (a Markdown table), and one
# line "summary: TARGET N execs, ..." for test-all's verdict. A target that
# reports no executions fails the run, like a crash.
#
# Each target starts from its committed seed corpus (lb/fuzz/corpus/TARGET,
# never written to); new inputs go to a temporary directory that is deleted
# afterwards (FUZZ_KEEP_CORPUS=1 merges them into the seed corpus instead).
# A crash leaves its input in lb/fuzz/artifacts/TARGET/ and makes the script
# exit 1 after all targets ran; reproduce it with
#   cd lb/fuzz && cargo +nightly fuzz run --target-dir ../../target/fuzz \
#     TARGET artifacts/TARGET/crash-...
# and minimise it with `cargo +nightly fuzz tmin TARGET FILE`.
set -euo pipefail

SECS="${1:-60}"
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || ((SECS < 1)); then
  echo "usage: $0 [SECONDS>=1]" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/lb/fuzz"

SKIP=77
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "SKIP: fuzzing needs the nightly toolchain (rustup toolchain install nightly)"
  exit "$SKIP"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  if [[ "${FUZZ_INSTALL:-0}" == 1 ]]; then
    cargo install cargo-fuzz --locked
  else
    echo "SKIP: cargo-fuzz is not installed (cargo install cargo-fuzz --locked, or FUZZ_INSTALL=1)"
    exit "$SKIP"
  fi
fi
echo "fuzz: $(cargo +nightly --version), $(cargo +nightly fuzz --version)"

# Build output goes under the workspace's target/ (git- and docker-ignored)
# rather than lb/fuzz/target.
TARGET_DIR="${FUZZ_TARGET_DIR:-$ROOT/target/fuzz}"

cd "$FUZZ_DIR"
read -r -a TARGETS <<<"${FUZZ_TARGETS:-$(cargo +nightly fuzz list | tr '\n' ' ')}"

echo "fuzz: building ${TARGETS[*]} (release, debug assertions, AddressSanitizer)"
cargo +nightly fuzz build --target-dir "$TARGET_DIR"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

failed=()
summary=()
ran=()
for target in "${TARGETS[@]}"; do
  seeds="$FUZZ_DIR/corpus/$target"
  mkdir -p "$seeds" "$WORK/$target" "$FUZZ_DIR/artifacts/$target"
  log="$WORK/$target.log"
  seed_files=$(find "$seeds" -type f | wc -l)
  seed_kb=$(du -sk "$seeds" | cut -f1)
  echo "fuzz: $target for ${SECS}s from $seed_files seed inputs ($seed_kb KiB)"
  status=0
  # -max_total_time bounds libFuzzer; `timeout` bounds everything else (a
  # hang past -timeout, a stuck build lock).
  timeout --kill-after=30 $((SECS + 300)) \
    cargo +nightly fuzz run --target-dir "$TARGET_DIR" "$target" "$WORK/$target" "$seeds" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
  [[ -n "$execs" ]] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  rate=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$last")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
  if ((status != 0)); then
    failed+=("$target")
    echo "fuzz: $target FAILED (exit $status); last lines:"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|artifact' "$log" | head -20 || true
    tail -5 "$log"
    result="CRASH"
  elif ! [[ "$execs" =~ ^[0-9]+$ ]] || ((execs == 0)); then
    # libFuzzer exited 0 but printed no executions: it did not fuzz.
    failed+=("$target")
    echo "fuzz: $target reported no executions; last lines:"
    tail -5 "$log"
    result="DID NOT RUN"
  else
    result="ok"
  fi
  echo "fuzz: $target: ${execs:-?} execs, corpus ${corp:-?} ($result)"
  summary+=("| $target | ${SECS}s | $seed_files | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $result |")
  ran+=("$target ${execs:-?} execs (corpus $seed_files -> ${corp:-?})")
  if [[ "${FUZZ_KEEP_CORPUS:-0}" == 1 && $status == 0 ]]; then
    # libFuzzer's merge: inputs from the run that add coverage go to $seeds.
    cargo +nightly fuzz run --target-dir "$TARGET_DIR" "$target" "$seeds" "$WORK/$target" -- -merge=1 >/dev/null 2>&1 || true
  fi
done

echo
echo "| target | time | seeds | execs | exec/s | cov (edges) | features | corpus reached (entries/size) | result |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${summary[@]}"
echo "summary: $(printf '%s, ' "${ran[@]}" | sed 's/, $//')"

if ((${#failed[@]} > 0)); then
  echo "fuzz: failed: ${failed[*]} (crash inputs in lb/fuzz/artifacts/)" >&2
  exit 1
fi
