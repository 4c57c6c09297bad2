#!/bin/bash
# A Ray cluster on this SLURM allocation, running one sweep. Written by `sweeper slurm`
# (sweeper @VERSION@) on @DATE@.
#
#   sbatch THIS_FILE       submit; resubmit the same file after a time-limit kill to resume
#                          (the store keeps finished trials; only the missing ones run)
#
# Job exit status: the sweep's (0 all trials done, 1 some failed or missing, 2 bad input),
# @EXIT_NO_CLUSTER@ when Ray did not come up, @EXIT_SIGNAL@ when cancelled or past the time limit.
#
@SBATCH@

# Ray's SLURM pattern: the head on this node (SLURM runs the batch script on the first node of the
# allocation), one `ray start --block` per other node through srun, then the driver here.
# Ports are free ports picked on each node when it starts, unless set in the environment
# (SWEEPER_RAY_PORT, SWEEPER_DASHBOARD_PORT, SWEEPER_CLIENT_PORT, SWEEPER_AGENT_PORT), so that
# several Ray clusters can share a node. Extra `ray start` options: SWEEPER_RAY_START_ARGS.
# Ray keeps its sockets and session files in a private folder (SWEEPER_RAY_TMPDIR); everything this
# job starts it stops itself, by process id: never `ray stop`, which kills every Ray of this user
# on the host, other jobs' included.

export PATH=@BIN@:$PATH
@SETUP@
@AUTH@
unset RAY_ADDRESS  # the driver joins this job's cluster, named below, and no other
# On SIGTERM (scancel, the time limit, this script's cleanup) a Ray 2.60 node first drains for up
# to 30 s, for Ray Serve's proxies; when its raylet got the same SIGTERM, the drain waits out all
# 30 s. A sweep has nothing to drain (finished trials are in the store; a resubmission runs the
# rest), and SLURM sends SIGKILL 30 s (KillWait) after its SIGTERM: stop at once instead.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}

STUDY=@STUDY@
STORE=@STORE@
RUN_ARGS=(@RUN_ARGS@)
GPU_STEP=@GPU_STEP@
LOG_DIR=@LOG_DIR@
say() { echo "sweeper-slurm: $*"; }

if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "sweeper-slurm: error: SLURM_JOB_ID is not set: submit this file with sbatch" >&2
  exit 2
fi
if [ "${RAY_AUTH_MODE}" = token ] && [ ! -s "${RAY_AUTH_TOKEN_PATH}" ]; then
  echo "sweeper-slurm: error: ${RAY_AUTH_TOKEN_PATH}: no Ray token (create one: ray get-auth-token --generate)" >&2
  exit 2
fi
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
export SWEEPER_CPUS=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-@CPUS@}}
export SWEEPER_GPUS=@GPUS@
export SWEEPER_RAY_TMPDIR=${SWEEPER_RAY_TMPDIR:-/tmp/sweeper-ray-$SLURM_JOB_ID}
JOB_LOGS=$LOG_DIR/$SLURM_JOB_ID

# -- the nodes: this one is the head, the others are workers --------------------------------------
HEAD_NODE=${SLURMD_NODENAME:-$(hostname -s)}
WORKER_NODES=()
if [ "$NNODES" -gt 1 ]; then
  for tool in scontrol srun; do
    if ! command -v "$tool" >/dev/null; then
      echo "sweeper-slurm: error: a $NNODES-node job needs $tool on PATH" >&2
      exit 2
    fi
  done
  mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  case " ${NODES[*]} " in *" $HEAD_NODE "*) ;; *) HEAD_NODE=${NODES[0]} ;; esac
  for node in "${NODES[@]}"; do
    if [ "$node" != "$HEAD_NODE" ]; then WORKER_NODES+=("$node"); fi
  done
fi

# -- stop what this job started, whatever ends it -------------------------------------------------
HEAD_PID=; CHILD=; WORKER_PIDS=(); SIGNALLED=
alive() {  # a child that has exited stays a zombie until waited for: not alive
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${stat:0:1}" != Z ]
}
stop_pids() {  # WHAT SECONDS PID...: SIGTERM, up to SECONDS to exit, then SIGKILL
  local what=$1 pid start=$SECONDS deadline=$((SECONDS + $2)) killed=
  shift 2
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "$@"; do
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null; killed=" (killed)"; fi
    wait "$pid" 2>/dev/null
  done
  # How long each stop took, so that a job killed during its cleanup (KillWait) says what was slow.
  say "$what stopped in $((SECONDS - start)) s$killed"
}
cleanup() {
  local rc=$?
  trap - EXIT TERM INT HUP
  # Ended by a signal, at most 10 + 6 + 6 s in all: SLURM's SIGKILL comes 30 s (KillWait) after
  # its SIGTERM. Killing the sweep loses nothing (a trial's row is written whole or not at all; the
  # rest rerun). Otherwise a Ray node has up to 60 s to stop by itself.
  local node_wait=60
  if [ -n "$SIGNALLED" ]; then node_wait=6; fi
  if [ -n "$CHILD" ]; then stop_pids "the running step" 10 "$CHILD"; fi  # when a signal ends the job
  # Workers first (srun passes the SIGTERM on to their `ray start`), then the head; a Ray node's
  # processes share its `ray start`'s fate, so they go with it.
  if [ "${#WORKER_PIDS[@]}" -gt 0 ]; then stop_pids "the Ray workers" "$node_wait" "${WORKER_PIDS[@]}"; fi
  if [ -n "$HEAD_PID" ]; then stop_pids "the Ray head" "$node_wait" "$HEAD_PID"; fi
  rm -rf "$SWEEPER_RAY_TMPDIR"
  say "job exits with status $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'SIGNALLED=1; say "signal received: stopping the sweep and Ray"; exit @EXIT_SIGNAL@' TERM INT HUP
# Long steps run in the background and are waited for, so that a signal reaches the trap at once.
run() { "$@" & CHILD=$!; wait "$CHILD"; local rc=$?; CHILD=; return "$rc"; }
mkdir -p "$JOB_LOGS" "$SWEEPER_RAY_TMPDIR" || exit 2

# -- the head ------------------------------------------------------------------------------------
HEAD_IP=${SWEEPER_HEAD_IP:-$(python -m sweeper.slurm node-ip)}
read -r PORT_A PORT_B PORT_C PORT_D < <(python -m sweeper.slurm free-ports 4)
if [ -z "$HEAD_IP" ] || [ -z "$PORT_D" ]; then
  echo "sweeper-slurm: error: 'python -m sweeper.slurm' fails on $HEAD_NODE: is the project's environment on PATH? (--setup)" >&2
  exit 2
fi
RAY_PORT=${SWEEPER_RAY_PORT:-$PORT_A}
DASHBOARD_PORT=${SWEEPER_DASHBOARD_PORT:-$PORT_B}
CLIENT_PORT=${SWEEPER_CLIENT_PORT:-$PORT_C}
AGENT_PORT=${SWEEPER_AGENT_PORT:-$PORT_D}
export SWEEPER_HEAD_ADDRESS=$HEAD_IP:$RAY_PORT
say "job $SLURM_JOB_ID: $NNODES node(s), head $HEAD_NODE at $SWEEPER_HEAD_ADDRESS, logs in $JOB_LOGS"
# The dashboard listens on the head's loopback only; reach it with
#   ssh -L 8265:127.0.0.1:$DASHBOARD_PORT $HEAD_NODE     (then http://127.0.0.1:8265)
say "dashboard: ssh -L 8265:127.0.0.1:$DASHBOARD_PORT $HEAD_NODE"
# shellcheck disable=SC2086  # SWEEPER_RAY_START_ARGS is a list of options
ray start --head --block --node-ip-address="$HEAD_IP" --port="$RAY_PORT" \
  --temp-dir="$SWEEPER_RAY_TMPDIR" --num-cpus="$SWEEPER_CPUS" --num-gpus="$SWEEPER_GPUS" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
  --dashboard-agent-listen-port="$AGENT_PORT" --ray-client-server-port="$CLIENT_PORT" \
  ${SWEEPER_RAY_START_ARGS:-} >"$JOB_LOGS/ray-head-$HEAD_NODE.log" 2>&1 &
HEAD_PID=$!
run python -m sweeper.slurm wait --address "$SWEEPER_HEAD_ADDRESS" --nodes 0 --pid "$HEAD_PID" \
  --timeout "${SWEEPER_NODE_WAIT:-300}" || exit @EXIT_NO_CLUSTER@

# -- the workers: one srun step per other node -----------------------------------------------------
# What each worker node runs inside its srun step.  Passed as text rather than as an exported
# bash function: srun hands every environment variable to the step, and this needs nothing else.
WORKER_SCRIPT=$(cat <<'EOF'
agent_port=${SWEEPER_AGENT_PORT:-$(python -m sweeper.slurm free-ports 1)}
mkdir -p "$SWEEPER_RAY_TMPDIR"
# shellcheck disable=SC2086  # SWEEPER_RAY_START_ARGS is a list of options
ray start --address="$SWEEPER_HEAD_ADDRESS" --block --temp-dir="$SWEEPER_RAY_TMPDIR" \
  --num-cpus="$SWEEPER_CPUS" --num-gpus="$SWEEPER_GPUS" --dashboard-agent-listen-port="$agent_port" \
  ${SWEEPER_RAY_START_ARGS:-} &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' TERM INT
wait "$pid"; wait "$pid"  # the first wait returns early when the trap runs
rm -rf "$SWEEPER_RAY_TMPDIR"
EOF
)
for node in "${WORKER_NODES[@]}"; do
  # shellcheck disable=SC2086  # GPU_STEP is one option or none
  srun --nodes=1 --ntasks=1 --cpus-per-task="$SWEEPER_CPUS" $GPU_STEP -w "$node" \
    bash -c "$WORKER_SCRIPT" >"$JOB_LOGS/ray-worker-$node.log" 2>&1 &
  WORKER_PIDS+=($!)
done
run python -m sweeper.slurm wait --address "$SWEEPER_HEAD_ADDRESS" --nodes "$NNODES" --pid "$HEAD_PID" \
  --timeout "${SWEEPER_NODE_WAIT:-300}" || exit @EXIT_NO_CLUSTER@

# -- the sweep -----------------------------------------------------------------------------------
run sweeper run "$STUDY" --address "$SWEEPER_HEAD_ADDRESS" --store "$STORE" "${RUN_ARGS[@]}"
