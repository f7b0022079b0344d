#!/usr/bin/env bash
# test.sh — check that a roundhouse deployment balances round-robin.
#
# Successor of the classic exercise's test script (curl nginx 100 times, count
# the answers, print 50). It sends N requests to $LB_URL/host, counts the
# answers per backend name, checks $LB_URL/date once, and exits 0 only when
# each of the expected backends answered exactly N/K of the requests.
#
# All requests go through ONE curl process, which keeps its connection alive
# between transfers: a balancer that balances per request (not per connection)
# must still rotate. Nothing is assumed about the deployment besides the URL.

set -euo pipefail

prog=${0##*/}
lb_url=${LB_URL:-http://localhost:8080}
requests=${REQUESTS:-100}
expect=2
max_time=${MAX_TIME:-5}

usage() {
    cat <<EOF
Usage: $prog [-n N] [--expect-backends K] [-h|--help]

Sends N requests to \$LB_URL/host through one keep-alive curl process, prints
each backend name with its answer count (sorted by name) and, as the last
line, the count of the first backend. Also checks \$LB_URL/date once (HTTP 200,
RFC 3339 UTC ending in Z).

Exits 0 only if exactly K distinct backends answered, each exactly N/K times.

Options:
  -n, --requests N        number of /host requests (default: \$REQUESTS or 100)
  --expect-backends K     number of distinct backends expected (default: 2);
                          N must be divisible by K
  -h, --help              show this help and exit

Environment:
  LB_URL     base URL of the load balancer (default: http://localhost:8080,
             where the quick start, Compose, kind-config.yaml and the
             Vagrant VM all put it)
  REQUESTS   default for -n (default: 100)
  MAX_TIME   per-request curl --max-time in seconds (default: 5)

Exit status: 0 balanced, 1 check failed or balancer unreachable, 2 usage error.

Examples:
  cargo run --release -p lb -- demo          # in another terminal
  ./$prog                                    # http://localhost:8080
  LB_URL=http://localhost:9000 ./$prog       # vagrant up with ROUNDHOUSE_HOST_PORT=9000
EOF
}

usage_error() {
    printf '%s: %s\n\n' "$prog" "$1" >&2
    usage >&2
    exit 2
}

fail() {
    printf '%s: FAIL: %s\n' "$prog" "$1" >&2
    exit 1
}

is_positive_int() {
    [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 > 0))
}

while (($# > 0)); do
    case $1 in
        -h | --help)
            usage
            exit 0
            ;;
        -n | --requests)
            (($# >= 2)) || usage_error "option $1 needs a value"
            requests=$2
            shift 2
            ;;
        --requests=*)
            requests=${1#*=}
            shift
            ;;
        --expect-backends)
            (($# >= 2)) || usage_error "option $1 needs a value"
            expect=$2
            shift 2
            ;;
        --expect-backends=*)
            expect=${1#*=}
            shift
            ;;
        --)
            shift
            break
            ;;
        -*)
            usage_error "unknown option: $1"
            ;;
        *)
            break
            ;;
    esac
done
(($# == 0)) || usage_error "unexpected argument: $1"

is_positive_int "$requests" || usage_error "request count must be a positive integer, got '$requests'"
is_positive_int "$expect" || usage_error "--expect-backends must be a positive integer, got '$expect'"
is_positive_int "$max_time" || usage_error "MAX_TIME must be a positive integer (seconds), got '$max_time'"
requests=$((10#$requests))
expect=$((10#$expect))
((requests % expect == 0)) ||
    usage_error "request count $requests is not divisible by --expect-backends $expect; an exact split is impossible"
per_backend=$((requests / expect))

command -v curl >/dev/null 2>&1 ||
    fail "curl is not installed (it is needed to talk to the load balancer); install it, e.g. 'apt-get install curl'"

lb_url=${lb_url%/}
host_url="$lb_url/host"
date_url="$lb_url/date"

curl_opts=(--silent --show-error --max-time "$max_time" --connect-timeout "$max_time")

unreachable() {
    local url=$1 err=$2
    {
        printf '%s: FAIL: cannot reach the load balancer at %s\n' "$prog" "$url"
        [[ -n $err ]] && printf '  curl said: %s\n' "$err"
        printf '  Is it running? Every way of running it here listens on http://localhost:8080:\n'
        printf '    cargo run --release -p lb -- demo      the quick start, on this machine\n'
        printf '    vagrant up                             the VM (port: ROUNDHOUSE_HOST_PORT, default 8080)\n'
        printf '    kind + manifests/ or Helm              docs/kubernetes.md (kind-config.yaml maps 127.0.0.1:8080)\n'
        printf '    docker compose up -d                   docs/docker.md (port: LB_PORT, default 8080)\n'
        printf '  and point this script at it if it is elsewhere:\n'
        printf '    LB_URL=http://127.0.0.1:8080 ./%s\n' "$prog"
    } >&2
    exit 1
}

failures=()

# --- /date, once; also tells us whether the balancer is reachable at all ----
errfile=$(mktemp "${TMPDIR:-/tmp}/roundhouse-test.XXXXXX")
trap 'rm -f "$errfile"' EXIT

marker='@@roundhouse-test-sh@@'
rc=0
date_out=$(curl "${curl_opts[@]}" --write-out "\n$marker %{http_code}" "$date_url" 2>"$errfile") || rc=$?
if ((rc != 0)); then
    unreachable "$lb_url" "$(tr '\n' ' ' <"$errfile" | sed 's/ *$//')"
fi
date_status=${date_out##*"$marker "}
date_body=${date_out%"$marker "*}
date_body=${date_body%$'\n'}
date_body=${date_body%$'\n'}
date_body=${date_body%$'\r'}
rfc3339_utc='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$'
if [[ $date_status != 200 ]]; then
    failures+=("GET $date_url returned HTTP $date_status, expected 200")
elif [[ ! $date_body =~ $rfc3339_utc ]]; then
    failures+=("GET $date_url returned '$date_body', which is not RFC 3339 UTC ending in Z")
fi
printf 'date: %s\n' "$date_body"

# --- N x /host through one curl process (keep-alive) -------------------------
# One config line per transfer on stdin; --write-out appends a marker line with
# the status code and the number of new connections after every body.
curl_config() {
    local escaped=${host_url//\\/\\\\}
    escaped=${escaped//\"/\\\"}
    local i
    for ((i = 0; i < requests; i++)); do
        printf 'url = "%s"\n' "$escaped"
    done
}

rc=0
host_out=$(curl_config | curl "${curl_opts[@]}" --config - \
    --write-out "\n$marker %{http_code} %{num_connects}\n" 2>"$errfile") || rc=$?

names=()
bad_status=0
first_bad=''
connections=0
seen=0
body=''
while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line == "$marker "* ]]; then
        read -r _ status conns <<<"$line"
        seen=$((seen + 1))
        connections=$((connections + ${conns:-0}))
        body=${body%$'\n'}
        body=${body%$'\n'}
        body=${body%$'\r'}
        if [[ $status == 2?? ]] && [[ -n $body ]]; then
            names+=("$body")
        else
            bad_status=$((bad_status + 1))
            if [[ -z $first_bad ]]; then
                if [[ $status == 000 ]]; then
                    first_bad="request $seen got no HTTP response"
                elif [[ $status == 2?? ]]; then
                    first_bad="request $seen got HTTP $status with an empty body"
                else
                    first_bad="request $seen got HTTP $status"
                fi
            fi
        fi
        body=''
    else
        body+="$line"$'\n'
    fi
done <<<"$host_out"

if ((seen == 0)); then
    unreachable "$lb_url" "$(tr '\n' ' ' <"$errfile" | sed 's/ *$//')"
fi
if ((bad_status > 0)); then
    msg="$bad_status of $requests requests to $host_url failed (non-2xx or no answer); first: $first_bad"
    if ((rc != 0)); then
        msg+="; curl said: $(head -n 1 "$errfile")"
    fi
    failures+=("$msg")
fi
if ((seen != requests)); then
    failures+=("only $seen of $requests requests to $host_url completed (curl exit $rc)")
fi

# --- counts, sorted by name ----------------------------------------------------
counted_names=()
counts=()
if ((${#names[@]} > 0)); then
    while read -r count name; do
        counted_names+=("$name")
        counts+=("$count")
    done < <(printf '%s\n' "${names[@]}" | LC_ALL=C sort | uniq -c)
fi

printf 'requests: %d to %s over %d connection(s)\n' "$requests" "$host_url" "$connections"
width=4
for name in "${counted_names[@]}"; do
    ((${#name} > width)) && width=${#name}
done
for i in "${!counted_names[@]}"; do
    printf '%-*s %d\n' "$width" "${counted_names[$i]}" "${counts[$i]}"
done
# The original script's single number: how many answers the first backend gave.
printf '%d\n' "${counts[0]:-0}"

distinct=${#counted_names[@]}
if ((distinct != expect)); then
    failures+=("expected $expect backends, saw $distinct")
else
    uneven=()
    for i in "${!counted_names[@]}"; do
        if ((counts[i] != per_backend)); then
            uneven+=("${counted_names[$i]}=${counts[$i]}")
        fi
    done
    if ((${#uneven[@]} > 0)); then
        failures+=("uneven split: expected $per_backend per backend, got ${uneven[*]}")
    fi
fi

if ((${#failures[@]} > 0)); then
    for f in "${failures[@]}"; do
        printf '%s: FAIL: %s\n' "$prog" "$f" >&2
    done
    exit 1
fi
printf '%s: OK: %d backends, %d requests each\n' "$prog" "$expect" "$per_backend" >&2
