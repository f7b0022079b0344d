#!/usr/bin/env bash
# Counts failed requests while the deployments restart: one request at a time
# (a new connection each) to $LB_URL/host from the start of
# `kubectl rollout restart` until both rollouts have finished.
#
#   scripts/ci/rollout-under-load.sh        # used by .github/workflows/kind.yml
#
# Env: LB_URL (default http://localhost:8080), NAMESPACE (roundhouse),
#      DEPLOYMENTS ("backend lb"), MAX_FAILED (default 0), TIMEOUT (300 s).
# Prints "requests: N, failed: M" (and appends it to $GITHUB_STEP_SUMMARY when
# set); exits 1 if M > MAX_FAILED or a rollout does not finish.
set -uo pipefail

lb_url=${LB_URL:-http://localhost:8080}
ns=${NAMESPACE:-roundhouse}
read -r -a deployments <<<"${DEPLOYMENTS:-backend lb}"
max_failed=${MAX_FAILED:-0}
timeout=${TIMEOUT:-300}
work=$(mktemp -d)
trap 'kill "${load_pid:-}" 2>/dev/null; rm -rf "$work"' EXIT

load() { # one request at a time until $work/stop exists (bounded by the deadline)
    local deadline=$((SECONDS + timeout + 30)) code
    while [[ ! -e $work/stop ]] && ((SECONDS < deadline)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$lb_url/host") || true
        echo "$code" >>"$work/codes"
    done
}

curl -fsS --max-time 2 -o /dev/null "$lb_url/host" || { echo "the lb does not answer at $lb_url before the restart" >&2; exit 1; }
load &
load_pid=$!
rc=0
targets=()
for d in "${deployments[@]}"; do targets+=("deployment/$d"); done
kubectl -n "$ns" rollout restart "${targets[@]}" || rc=1
for d in "${deployments[@]}"; do
    kubectl -n "$ns" rollout status "deployment/$d" --timeout="${timeout}s" || rc=1
done
touch "$work/stop"
wait "$load_pid"
total=$(wc -l <"$work/codes")
bad=$(grep -vc '^200$' "$work/codes")
line="requests: $total, failed: $bad (during kubectl rollout restart ${targets[*]})"
echo "$line"
if [[ -n ${GITHUB_STEP_SUMMARY:-} ]]; then echo "$line" >>"$GITHUB_STEP_SUMMARY"; fi
grep -v '^200$' "$work/codes" | sort | uniq -c | sed 's/^/  status /'
((rc == 0)) || { echo "a rollout did not finish" >&2; exit 1; }
((bad <= max_failed)) || { echo "$bad failed requests > MAX_FAILED=$max_failed" >&2; exit 1; }
