#!/usr/bin/env bash
# make ndif-check: run `infoflow decompose --remote` against NDIF's own server stack, started
# here on loopback ports, and compare it with the same decomposition run locally (docs/ndif.md).
#
# Services (each in its own process group, all stopped on exit, failure included):
#   redis-server   Debian's 7.0.15 (tools/ndif/setup.sh)       127.0.0.1:$BASE
#   moto_server    S3 endpoint for result blobs (NDIF: RustFS)  127.0.0.1:$BASE+1
#   gunicorn       NDIF's FastAPI app                            127.0.0.1:$BASE+2
#   ray (head)     one node declaring 1 GPU, + NDIF's controller 127.0.0.1:$BASE+3..
# Env: NDIF_CHECK_PORT_BASE (28300), NDIF_CHECK_KEEP_LOGS=1 keeps the log folder,
#      NDIF_CHECK_SANDBOX=1 runs every request in NDIF's sandbox (tools/ndif/ndif_cpu_actor.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DIR=$ROOT/.cache/ndif
NV=$DIR/venv/bin
PV=${PROJECT_VENV:-$ROOT/.venv}/bin
BASE=${NDIF_CHECK_PORT_BASE:-28300}
REDIS_PORT=$BASE; S3_PORT=$((BASE + 1)); API_PORT=$((BASE + 2)); GCS_PORT=$((BASE + 3))
CLIENT_PORT=$((BASE + 4)); DASH_PORT=$((BASE + 5))
RUN=$(mktemp -d /tmp/ndif-check.XXXXXX)   # short: Ray's unix sockets live under it
LOGS=$RUN/logs
mkdir -p "$LOGS"
PGIDS=()

stop_all() {
    local rc=$?
    trap - EXIT INT TERM
    for ((i = ${#PGIDS[@]} - 1; i >= 0; i--)); do      # reverse start order
        kill -TERM -- "-${PGIDS[i]}" 2>/dev/null || true
    done
    for _ in $(seq 20); do
        local alive=0
        for g in "${PGIDS[@]}"; do kill -0 -- "-$g" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.5
    done
    for g in "${PGIDS[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
    if [ "${NDIF_CHECK_KEEP_LOGS:-0}" = 1 ] || [ $rc != 0 ]; then
        mkdir -p "$DIR/logs" && rm -rf "$DIR/logs/last" && cp -r "$LOGS" "$DIR/logs/last" 2>/dev/null || true
        [ $rc != 0 ] && echo "ndif-check: failed (exit $rc); service logs in $DIR/logs/last" >&2
    fi
    rm -rf "$RUN"
    exit $rc
}
trap stop_all EXIT INT TERM

# Start "$@" as the leader of a new process group, logging to $LOGS/$name.log.
start() {
    local name=$1; shift
    setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
    PGIDS+=($!)
    disown $!   # stop_all reaps it; no "Killed" notices from bash
}

wait_for() {   # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - t0 > limit)); then
            echo "ndif-check: $what did not come up in $limit s" >&2
            return 1
        fi
        sleep 1
    done
}

# Set up (needs the network the first time), then run the rest in a network namespace of its
# own with nothing but loopback, where it can be run as root: Ray's gRPC servers listen on
# every interface and have no setting to stop that, and without a network, nothing can reach
# the hub or any registry, so the run proves itself offline.
if [ -z "${NDIF_CHECK_IN_NETNS:-}" ]; then
    t_start=$SECONDS
    bash tools/ndif/setup.sh
    export NDIF_CHECK_SETUP_S=$((SECONDS - t_start))
    if [ "${NDIF_CHECK_NETNS:-1}" = 1 ] && unshare -n true 2>/dev/null; then
        rm -rf "$RUN"; trap - EXIT INT TERM
        exec env NDIF_CHECK_IN_NETNS=1 unshare -n -- bash -c 'ip link set lo up && exec bash "$0"' "$ROOT/tools/ndif/check.sh"
    fi
    echo "ndif-check: no private network namespace (needs root; NDIF_CHECK_NETNS=0 skips it): Ray's" \
         "ports listen on every interface for this run" >&2
fi
t_setup=${NDIF_CHECK_SETUP_S:-0}

MODEL=$("$PV/python" -c "from infoflow.model import converted_default_model; print(converted_default_model())")
export NDIF_HOME=$RUN/home NDIF_REDIS_URL=redis://127.0.0.1:$REDIS_PORT \
    NDIF_OBJECT_STORE_URL=http://127.0.0.1:$S3_PORT NDIF_OBJECT_STORE_ACCESS_KEY=ndif-check \
    NDIF_OBJECT_STORE_SECRET_KEY=ndif-check NDIF_RAY_ADDRESS=ray://127.0.0.1:$CLIENT_PORT \
    NDIF_API_PORT=$API_PORT NDIF_API_URL=http://127.0.0.1:$API_PORT \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 GRPC_ENABLE_FORK_SUPPORT=0 \
    NDIF_DEFAULT_EXECUTION_TIMEOUT_SECONDS=${NDIF_CHECK_EXECUTION_TIMEOUT:-300}
mkdir -p "$NDIF_HOME"

t0=$SECONDS
start redis env LD_LIBRARY_PATH="$DIR/redis/usr/lib/x86_64-linux-gnu" "$DIR/redis/usr/bin/redis-server" \
    --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no
start s3 "$NV/moto_server" -H 127.0.0.1 -p "$S3_PORT"
# One node, declaring one GPU with the machine's memory (NDIF's controller places models only
# on nodes with a "GPU" resource; the CPU actor then ignores the assignment).
MEM=$("$NV/python" -c "import psutil; print(psutil.virtual_memory().total)")
# Ray gives its raylet a fixed 30 s to register (ray/_private/node.py; setup.sh raises it to
# 300 s in the NDIF venv); on a loaded machine that can pass, and `ray start` exits. Try again,
# up to three times.
start_ray() {
    start ray "$NV/ray" start --head --block --disable-usage-stats --node-ip-address=127.0.0.1 \
        --port="$GCS_PORT" --ray-client-server-port="$CLIENT_PORT" \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
        --dashboard-agent-grpc-port=$((BASE + 6)) --dashboard-agent-listen-port=$((BASE + 7)) \
        --metrics-export-port=$((BASE + 8)) --object-manager-port=$((BASE + 9)) \
        --node-manager-port=$((BASE + 10)) --runtime-env-agent-port=$((BASE + 11)) \
        --min-worker-port=$((BASE + 20)) --max-worker-port=$((BASE + 99)) \
        --num-cpus=4 --num-gpus=1 --temp-dir="$RUN/ray" \
        --resources="{\"head\": 10, \"cuda_memory_bytes\": $MEM, \"cpu_memory_bytes\": $MEM}"
}
ray_up() {   # the node registered, and `ray start --block` still holds it
    local out
    kill -0 "${PGIDS[-1]}" 2>/dev/null || return 2
    out=$(env RAY_ADDRESS="127.0.0.1:$GCS_PORT" "$NV/ray" status 2>/dev/null) || return 1
    [[ $out == *"/1.0 GPU"* ]]
}
for attempt in 1 2 3; do
    start_ray
    t_ray=$SECONDS
    up=0
    while kill -0 "${PGIDS[-1]}" 2>/dev/null && ((SECONDS - t_ray < 300)); do
        if ray_up; then up=1; break; fi
        sleep 2
    done
    [ $up = 1 ] && break
    echo "ndif-check: ray did not start (attempt $attempt): $(grep -h Exception "$LOGS/ray.log" | tail -1)" >&2
    kill -TERM -- "-${PGIDS[-1]}" 2>/dev/null || true; sleep 3; kill -KILL -- "-${PGIDS[-1]}" 2>/dev/null || true
    unset 'PGIDS[-1]'
    [ $attempt = 3 ] && exit 1
    cp "$LOGS/ray.log" "$LOGS/ray-attempt$attempt.log"
done
wait_for 30 "redis" env LD_LIBRARY_PATH="$DIR/redis/usr/lib/x86_64-linux-gnu" "$DIR/redis/usr/bin/redis-cli" -p "$REDIS_PORT" ping
wait_for 60 "moto (S3)" curl -sf "http://127.0.0.1:$S3_PORT/"
RAY_ADDRESS=127.0.0.1:$GCS_PORT "$NV/python" -m ndif.services.ray.deployments.controller.controller \
    > "$LOGS/controller-launch.log" 2>&1
start api "$NV/gunicorn" --config python:ndif.services.api.gunicorn_conf \
    --bind "127.0.0.1:$API_PORT" ndif.services.api.app:app
wait_for 120 "NDIF's API" curl -sf "http://127.0.0.1:$API_PORT/ping"
t_services=$((SECONDS - t0))

# Deploy the default model from its converted folder, on CPU in float32, under the key the
# client will name it by (computed by infoflow, which also writes nothing but this file).
t0=$SECONDS
KEY=$(PYTHONPATH=$ROOT "$PV/python" -c "
import sys
from infoflow.cli import _remote_model
from infoflow.remote import local_model_key
m = _remote_model(sys.argv[1]); local_model_key(m); print(m.to_model_key())" "$MODEL" 2>/dev/null)
SIZE=$(stat -c %s "$MODEL/model.safetensors")
ACTOR=CPUModelActor; [ "${NDIF_CHECK_SANDBOX:-0}" = 1 ] && ACTOR=CPUSandboxActor
cat > "$RUN/models.yaml" <<EOF
models:
  - checkpoint: "$MODEL"
    model_key: '$KEY'
    task: text-generation
    dtype: float32
    size_bytes: $SIZE
    actor_class: ndif_cpu_actor.$ACTOR
EOF
(cd "$RUN" && "$NV/ndif" deploy -f "$RUN/models.yaml") > "$LOGS/deploy.log" 2>&1 || {
    tail -20 "$LOGS/deploy.log" >&2; exit 1; }
t_deploy=$((SECONDS - t0))
echo "ndif-check: set-up ${t_setup} s, services up in ${t_services} s, model deployed in ${t_deploy} s"

PYTHONPATH=$ROOT NDIF_HOST=http://127.0.0.1:$API_PORT "$PV/python" tools/ndif/compare.py "$MODEL" "$RUN"
