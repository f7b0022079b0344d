# shellcheck shell=bash
# Shared by the recording stand-ins for kind, kubectl and helm (this folder).
#
# They replace ONLY what cannot run on a machine without internet or nested
# virtualisation: the downloads of those three tools, and kind's cluster.
# Every call is appended to $STANDIN_LOG as one line: "<tool> <args...>".
# The "cluster" they pretend to be runs the images that were really loaded
# into it (kind load docker-image) as plain containers on the same Docker
# engine: two backends and the lb, in ONE network namespace (the test box's,
# or the host's), the lb listening where kind's extraPortMappings would
# publish NodePort 30080. So test.sh talks to the real images, but no
# Kubernetes object is ever created or scheduled: what the manifests say
# beyond their images is checked by scripts/k8s/validate.sh, not here.
#
# Configuration: $STANDIN_ENV (default /etc/roundhouse-standins.env in the box,
# set by the test) may set:
#   STANDIN_LOG      record file (required)
#   STANDIN_STATE    state folder (required)
#   STANDIN_NETNS    docker --network value for the workloads: "host" or
#                    "container:<box container>"
#   STANDIN_PREFIX   prefix of every container the stand-ins create
#   STANDIN_REFUSE   API calls refused after nodes (re)start, like an API
#                    server that is still starting (default 2)
#   STANDIN_FAIL     "<tool> <subcommand>" that must fail (failure messages)
#   STANDIN_VERSIONS versions.sh whose pinned versions the tools report

STANDIN_ENV=${STANDIN_ENV:-/etc/roundhouse-standins.env}
if [[ -r $STANDIN_ENV ]]; then
    # shellcheck source=/dev/null
    source "$STANDIN_ENV"
fi
: "${STANDIN_LOG:?stand-in: STANDIN_LOG is not set (see tests/standins/lib.sh)}"
: "${STANDIN_STATE:?stand-in: STANDIN_STATE is not set}"
STANDIN_NETNS=${STANDIN_NETNS:-host}
STANDIN_PREFIX=${STANDIN_PREFIX:-standin-}
STANDIN_REFUSE=${STANDIN_REFUSE:-2}
mkdir -p "$STANDIN_STATE"

if [[ -n ${STANDIN_VERSIONS:-} && -r $STANDIN_VERSIONS ]]; then
    # shellcheck source=/dev/null
    source "$STANDIN_VERSIONS"
fi
KIND_VERSION=${KIND_VERSION:-v0.29.0}
KUBECTL_VERSION=${KUBECTL_VERSION:-v1.33.1}
HELM_VERSION=${HELM_VERSION:-v3.18.4}

record() { # record TOOL ARGS...
    local IFS=' '
    printf '%s\n' "$*" >>"$STANDIN_LOG"
}
note() { # an extra line in the record, prefixed with '#'
    printf '# %s\n' "$*" >>"$STANDIN_LOG"
}
injected_failure() { # injected_failure TOOL SUBCOMMAND: true if asked to fail
    [[ -n ${STANDIN_FAIL:-} && $STANDIN_FAIL == "$1 $2" ]]
}

cluster_file() { echo "$STANDIN_STATE/cluster"; }
cluster_name() { cat "$(cluster_file)" 2>/dev/null || true; }
node_names() { # node_names CLUSTER: the node containers, one per line
    local c=$1
    [[ -f $STANDIN_STATE/nodes ]] && sed "s/^/${STANDIN_PREFIX}${c}-/" "$STANDIN_STATE/nodes"
}

# api_refusal: print kubectl's message and return 0 if the "API server" is not
# answering: a node container is not running, or it (re)started and fewer than
# STANDIN_REFUSE calls have been refused since (a real API server takes a while
# after `docker start`; a client that does not retry fails here).
api_refusal() {
    local c n started count_file count
    c=$(cluster_name)
    if [[ -z $c ]]; then
        echo "The connection to the server localhost:8080 was refused - did you specify the right host or port?"
        return 0
    fi
    while read -r n; do
        started=$(docker inspect -f '{{if .State.Running}}{{.State.StartedAt}}{{end}}' "$n" 2>/dev/null) || started=
        if [[ -z $started ]]; then
            echo "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?"
            return 0
        fi
        count_file="$STANDIN_STATE/refused.$n.${started//[^0-9]/}"
        count=$(cat "$count_file" 2>/dev/null || echo 0)
        if ((count < STANDIN_REFUSE)); then
            echo $((count + 1)) >"$count_file"
            note "api server on $n started at $started: refusing call $((count + 1)) of $STANDIN_REFUSE"
            echo "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?"
            return 0
        fi
    done < <(node_names "$c")
    return 1
}

free_port() { # a free TCP port on 127.0.0.1 in this network namespace
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
