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
#
# With --grpc it makes N unary calls of roundhouse.v1.Hosts/Get over ONE gRPC
# channel (one HTTP/2 connection) instead, with Python's grpcio: the case
# that connection-level balancing (kube-proxy) gets wrong.

set -euo pipefail

prog=${0##*/}
lb_url=${LB_URL:-http://localhost:8080}
requests=${REQUESTS:-100}
expect=2
max_time=${MAX_TIME:-5}
python=${GRPC_PYTHON:-python3}
admin_url=${ADMIN_URL:-}
grpc=0
grpc_method=/roundhouse.v1.Hosts/Get

usage() {
    cat <<EOF
Usage: $prog [--grpc] [-n N] [--expect-backends K] [--admin URL] [-h|--help]

Sends N requests to \$LB_URL/host through one keep-alive curl process, prints
each backend name with its answer count (sorted by name) and, as the last
line, the count of the first backend. Also checks \$LB_URL/date once (HTTP 200,
RFC 3339 UTC ending in Z).

With --grpc: makes N unary gRPC calls of $grpc_method over ONE
gRPC channel (one HTTP/2 connection; h2c for http://, TLS for https://) to
the server named by \$LB_URL, with Python's grpcio, and prints the same counts.

Exits 0 only if exactly K distinct backends answered, each exactly N/K times.
With --admin, one more line after the verdict names the LB's admin page (the
live share of requests per endpoint), and whether it answered.

Options:
  --grpc                  gRPC calls over one channel instead of HTTP requests
  -n, --requests N        number of /host requests or gRPC calls
                          (default: \$REQUESTS or 100)
  --expect-backends K     number of distinct backends expected (default: 2);
                          N must be divisible by K
  --admin URL             base URL of the LB's admin port (e.g.
                          http://127.0.0.1:9090 through kubectl port-forward);
                          printed, after the verdict, as the admin page's
                          address (default: \$ADMIN_URL; none: no line)
  -h, --help              show this help and exit

Environment:
  LB_URL     base URL of the load balancer (default: http://localhost:8080,
             where the quick start, Compose, kind-config.yaml and the
             Vagrant VM all put it)
  REQUESTS   default for -n (default: 100)
  MAX_TIME   per-request curl --max-time in seconds, and the gRPC connect and
             per-call deadline (default: 5)
  GRPC_PYTHON  the Python with grpcio, for --grpc (default: python3)
  ADMIN_URL  default for --admin

Exit status: 0 balanced, 1 check failed or balancer unreachable, 2 usage error.

Examples:
  cargo run --release -p lb -- demo          # in another terminal
  ./$prog                                    # http://localhost:8080
  LB_URL=http://localhost:9000 ./$prog       # vagrant up with ROUNDHOUSE_HOST_PORT=9000
  ./$prog --grpc                             # one gRPC channel; python3 -m pip install grpcio
  ./$prog --admin http://localhost:9090      # and where to watch the split live
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
        --grpc)
            grpc=1
            shift
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
        --admin)
            (($# >= 2)) || usage_error "option $1 needs a value"
            admin_url=$2
            shift 2
            ;;
        --admin=*)
            admin_url=${1#*=}
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
if [[ -n $admin_url ]]; then
    [[ $admin_url =~ ^https?://[^/?#]+/?$ ]] ||
        usage_error "--admin must be the admin port's base URL (http://HOST:PORT), got '$admin_url'"
    admin_url=${admin_url%/}
fi
requests=$((10#$requests))
expect=$((10#$expect))
((requests % expect == 0)) ||
    usage_error "request count $requests is not divisible by --expect-backends $expect; an exact split is impossible"
per_backend=$((requests / expect))

lb_url=${lb_url%/}
failures=()
names=()        # one backend name per successful request or call
bad_status=0    # requests or calls that failed
first_bad=''
seen=0          # requests or calls that completed (answered or failed)
summary=''      # the "requests: ..." / "calls: ..." line

if ((!grpc)); then
    command -v curl >/dev/null 2>&1 ||
        fail "curl is not installed (it is needed to talk to the load balancer); install it, e.g. 'apt-get install curl'"
fi

errfile=$(mktemp "${TMPDIR:-/tmp}/roundhouse-test.XXXXXX")
trap 'rm -f "$errfile"' EXIT

# After the verdict, with --admin: one line naming the admin page, and
# whether it answered (it is on the LB's admin port, which is never
# published; see README, "The admin page").
admin_line() {
    [[ -n $admin_url ]] || return 0
    local page="$admin_url/" code=000
    if command -v curl >/dev/null 2>&1; then
        code=$(curl --silent --output /dev/null --max-time 2 --connect-timeout 2 \
            --write-out '%{http_code}' "$page" 2>/dev/null) || true
    fi
    case $code in
        200) printf '%s: admin page: %s (live share of requests, rates and state per endpoint)\n' "$prog" "$page" >&2 ;;
        000) printf '%s: admin page: %s did not answer (is the admin port forwarded? e.g. kubectl -n roundhouse port-forward deploy/lb 9090)\n' "$prog" "$page" >&2 ;;
        *) printf '%s: admin page: %s answered HTTP %s (is that the LB'"'"'s admin port?)\n' "$prog" "$page" "$code" >&2 ;;
    esac
}

# unreachable URL CLIENT-SAID: the balancer cannot be reached at all.
unreachable() {
    local url=$1 err=$2 client=curl run="./$prog"
    if ((grpc)); then
        client=grpcio
        run="./$prog --grpc"
    fi
    {
        printf '%s: FAIL: cannot reach the load balancer at %s\n' "$prog" "$url"
        [[ -n $err ]] && printf '  %s said: %s\n' "$client" "$err"
        ((grpc)) && printf '  (--grpc needs HTTP/2 on that port: h2c for http://, TLS with ALPN h2 for https://)\n'
        printf '  Is it running? Every way of running it here listens on http://localhost:8080:\n'
        printf '    cargo run --release -p lb -- demo      the quick start, on this machine\n'
        printf '    vagrant up                             the VM (port: ROUNDHOUSE_HOST_PORT, default 8080)\n'
        printf '    kind + manifests/ or Helm              docs/kubernetes.md (kind-config.yaml maps 127.0.0.1:8080)\n'
        printf '    docker compose up -d                   docs/docker.md (port: LB_PORT, default 8080)\n'
        printf '  and point this script at it if it is elsewhere:\n'
        printf '    LB_URL=http://127.0.0.1:8080 %s\n' "$run"
    } >&2
    admin_line
    exit 1
}

# --- HTTP: /date once, then N x /host through one curl process ---------------
http_requests() {
    host_url="$lb_url/host"
    date_url="$lb_url/date"
    curl_opts=(--silent --show-error --max-time "$max_time" --connect-timeout "$max_time")

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

    connections=0
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
    summary=$(printf 'requests: %d to %s over %d connection(s)' "$requests" "$host_url" "$connections")
}

# --- gRPC: N x Hosts/Get over one channel (--grpc) ---------------------------
# The client: Python's grpcio with a generic unary method, so no generated
# code is needed. The request is the empty GetRequest (no bytes); the answer
# GetResponse { string host = 1; } is decoded by hand. Prints one line per
# call, "ok NAME" or "err CODE DETAILS"; exit 3: no HTTP/2 connection in time,
# exit 4: no grpcio.
grpc_client='
import os, sys
try:
    import grpc
except ImportError as e:
    print(e, file=sys.stderr)
    sys.exit(4)

target, secure, calls, timeout, method = sys.argv[1:6]
calls, timeout = int(calls), float(timeout)

def varint(b, i):
    value = shift = 0
    while True:
        if i >= len(b) or shift >= 70:
            raise ValueError("bad varint")
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return value, i

def host_of(b):
    i, host = 0, None
    while i < len(b):
        key, i = varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(b, i)
            continue
        if wire == 2:
            n, i = varint(b, i)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
        else:
            raise ValueError("wire type %d" % wire)
        if i + n > len(b):
            raise ValueError("truncated field")
        if field == 1 and wire == 2:
            host = b[i:i + n].decode()
        i += n
    if not host:
        raise ValueError("no host in the answer")
    return host

options = [("grpc.enable_http_proxy", 0)]
if secure == "1":
    roots = None
    if os.environ.get("SSL_CERT_FILE"):
        with open(os.environ["SSL_CERT_FILE"], "rb") as f:
            roots = f.read()
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options)
else:
    channel = grpc.insecure_channel(target, options)
try:
    grpc.channel_ready_future(channel).result(timeout=timeout)
except grpc.FutureTimeoutError:
    print("no HTTP/2 connection to %s within %g s" % (target, timeout), file=sys.stderr)
    sys.exit(3)
get = channel.unary_unary(method, request_serializer=lambda _: b"", response_deserializer=host_of)
for _ in range(calls):
    try:
        print("ok", get(None, timeout=timeout))
    except grpc.RpcError as e:
        print("err", e.code().name, " ".join((e.details() or "").split()))
channel.close()
'

grpc_calls() {
    local rest secure default_port target out rc=0 line kind
    case $lb_url in
        http://*) secure=0 rest=${lb_url#http://} default_port=80 ;;
        https://*) secure=1 rest=${lb_url#https://} default_port=443 ;;
        *) usage_error "with --grpc, LB_URL must start with http:// or https://, got '$lb_url'" ;;
    esac
    [[ -n $rest && $rest != */* && $rest != *[?#@]* ]] ||
        usage_error "with --grpc, LB_URL names the server only (http://HOST[:PORT]), got '$lb_url'"
    target=$rest
    [[ $target =~ :[0-9]+$ ]] || target+=":$default_port"

    command -v "$python" >/dev/null 2>&1 ||
        fail "$python is not installed (--grpc uses Python's grpcio as the gRPC client); install Python 3 and 'python3 -m pip install grpcio', or set GRPC_PYTHON"

    out=$("$python" -c "$grpc_client" "$target" "$secure" "$requests" "$max_time" "$grpc_method" 2>"$errfile") || rc=$?
    case $rc in
        0) ;;
        3) unreachable "$lb_url" "$(tr '\n' ' ' <"$errfile" | sed 's/ *$//')" ;;
        4) fail "grpcio is not installed for $python (--grpc needs a real gRPC client): $(head -n 1 "$errfile"); install it with '$python -m pip install grpcio'" ;;
        *) fail "the gRPC client failed (exit $rc): $(tail -n 1 "$errfile")" ;;
    esac
    while IFS= read -r line; do
        [[ -n $line ]] || continue
        kind=${line%% *}
        seen=$((seen + 1))
        if [[ $kind == ok ]]; then
            names+=("${line#ok }")
        else
            bad_status=$((bad_status + 1))
            [[ -n $first_bad ]] || first_bad="call $seen failed: ${line#err }"
        fi
    done <<<"$out"
    if ((bad_status > 0)); then
        failures+=("$bad_status of $requests gRPC calls of $grpc_method failed; first: $first_bad")
    fi
    if ((seen != requests)); then
        failures+=("only $seen of $requests gRPC calls completed")
    fi
    summary=$(printf 'calls: %d to %s %s over 1 gRPC channel' "$requests" "$target" "$grpc_method")
}

if ((grpc)); then
    grpc_calls
else
    http_requests
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

printf '%s\n' "$summary"
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
    admin_line
    exit 1
fi
what=requests
((grpc)) && what=calls
printf '%s: OK: %d backends, %d %s each\n' "$prog" "$expect" "$per_backend" "$what" >&2
admin_line
