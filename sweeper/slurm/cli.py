"""`sweeper slurm`: a SLURM batch script that starts a Ray cluster on its own allocation and runs
one sweep on it.

    sweeper slurm STUDY --nodes N --gpus-per-node G --cpus-per-node C --time HH:MM:SS --store DIR \\
                  [--partition P] [--account A] [--print | --submit] [sweeper run options]

The script follows Ray's documented SLURM pattern: `ray start --head --block` on the first node of
the allocation (where SLURM runs the batch script), `srun --nodes=1 --ntasks=1 -w NODE ray start
--address HEAD --block` on every other node, a wait until the nodes have joined, then `sweeper run
STUDY --address HEAD` on the head. The sweep's exit status becomes the job's. Resubmitting the same
file after a time-limit kill resumes: the store keeps every finished trial and `sweeper run` runs only
the missing ones; the script never deletes or renames anything in the store.

It is a plain text template, not submitit: the user gets a short bash file they can read, edit, keep
beside their results and resubmit with `sbatch`, with the Ray start sequence in plain sight; submitit
would hide it inside a pickled Python callable, add a dependency, and still need this start
sequence.

The script starts its Ray on free ports picked on each node when it starts (a node shared with
another job, or with a second sweep of the same user, has its own Ray on the defaults 6379, 8265,
10001, 52365), with a private `--temp-dir`, and stops only the processes it started, by process id.
It never runs `ray stop`, which kills every Ray of the user on the host, other jobs' included.

With token authentication (the default), every Ray process and the driver read the token from a file
in the user's home directory (`~/.ray/auth_token`, where `ray get-auth-token --generate` puts it),
which SLURM clusters share between login and compute nodes; `--token-file` names another shared
path. The file is created here, on the login node, when it does not exist yet, so that the jobs of a
user never race to create it.

Bad input (a malformed --time, --nodes 0, no `sbatch` with --submit, a study that does not load, a
trial that asks for more CPUs or GPUs than a node has) is refused in one line with exit status 2, and
nothing is written.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from sweeper.errors import SweeperError

# Job exit status of the script itself, besides the sweep's own (0 done, 1 failed trials, 2 bad input).
EXIT_NO_CLUSTER = 3  # Ray did not come up on the allocation
EXIT_SIGNAL = 143  # cancelled or past its time limit (SIGTERM): resubmit to resume

TIME_RE = re.compile(r"(?:(?P<days>\d+)-)?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2})")
NAME_RE = re.compile(r"[A-Za-z0-9_.,:+-]+")  # a partition, account, job or GPU type name
DEFAULT_TOKEN = Path("~/.ray/auth_token")  # Ray's own default (ray get-auth-token --generate)


def add_parser(sub) -> None:
    p = sub.add_parser("slurm", help="a SLURM batch script that starts Ray on its allocation and runs one sweep",
                       description="Print (or submit with sbatch) a batch script that starts a Ray cluster on a "
                                   "SLURM allocation and runs `sweeper run STUDY` on it. Resubmit it to resume.")
    p.add_argument("study")
    p.add_argument("--nodes", type=int, required=True, help="nodes in the allocation (the first is Ray's head)")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node (0 for CPU-only nodes)")
    p.add_argument("--cpus-per-node", type=int, required=True, help="CPUs per node, given to Ray for trials")
    p.add_argument("--time", required=True, help="time limit HH:MM:SS (or D-HH:MM:SS)")
    p.add_argument("--store", required=True, help="results store every node reaches: a shared path, s3://, gs://")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--job-name", default=None, help="default: sweeper-<study name>")
    p.add_argument("--gpu-type", default=None, help="a GPU model your site names, e.g. a100 (gpu:a100:G)")
    p.add_argument("--gres", action="store_true", help="request GPUs as --gres=gpu:G instead of --gpus-per-node=G")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="another #SBATCH line, e.g. --sbatch=--mem=64G (repeatable)")
    p.add_argument("--setup", action="append", default=[], metavar="COMMAND",
                   help="a shell line run first on the head, e.g. 'module load cuda' (repeatable); the "
                        "environment it sets reaches the workers through srun")
    p.add_argument("--log-dir", default="slurm-logs", help="job output and per-node Ray logs (default: %(default)s)")
    p.add_argument("--auth", choices=["token", "disabled"], default="token",
                   help="Ray token authentication (default: %(default)s)")
    p.add_argument("--token-file", default=str(DEFAULT_TOKEN),
                   help="the token, on a path every node reads (default: %(default)s, created when missing)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print", dest="submit", action="store_false", help="print the script (the default)")
    mode.add_argument("--submit", dest="submit", action="store_true",
                      help="write the script into --log-dir and submit it with sbatch")
    run = p.add_argument_group("passed to `sweeper run`")
    run.add_argument("--quick", action="store_true")
    run.add_argument("--data-root", default=None)
    run.add_argument("--cpus-per-trial", type=float, default=None)
    run.add_argument("--gpus-per-trial", type=float, default=None)
    run.add_argument("--max-failures", type=int, default=None)
    run.add_argument("--checkpoint-seconds", type=float, default=None)
    run.add_argument("--no-figures", action="store_true")
    p.set_defaults(fn=cmd_slurm, submit=False)


# -- checks ---------------------------------------------------------------------------------------
def parse_time(value: str) -> str:
    """SLURM's time limit in the forms this command accepts, HH:MM:SS or D-HH:MM:SS."""
    m = TIME_RE.fullmatch(value or "")
    if not m or int(m["m"]) > 59 or int(m["s"]) > 59:
        raise SweeperError(f"expected HH:MM:SS or D-HH:MM:SS, got {value!r}", "--time")
    if int(m["days"] or 0) + int(m["h"]) + int(m["m"]) + int(m["s"]) == 0:
        raise SweeperError("must be longer than 00:00:00", "--time")
    return value


def _name(value: str | None, flag: str) -> str | None:
    # These land on #SBATCH lines: a space or newline would end the option or start a command.
    if value is not None and not NAME_RE.fullmatch(value):
        raise SweeperError(f"expected letters, digits and _ . , : + - only, got {value!r}", flag)
    return value


def _check(args) -> None:
    for flag, value, least in (("--nodes", args.nodes, 1), ("--cpus-per-node", args.cpus_per_node, 1),
                               ("--gpus-per-node", args.gpus_per_node, 0)):
        if value < least:
            raise SweeperError(f"must be at least {least}, got {value}", flag)
    parse_time(args.time)
    for flag in ("partition", "account", "job_name", "gpu_type"):
        _name(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.gpu_type and not args.gpus_per_node:
        raise SweeperError("names a GPU type but --gpus-per-node is 0", "--gpu-type")
    for option in args.sbatch:
        if not option.startswith("--") or any(c in option for c in "\n\r"):
            raise SweeperError(f"expected one sbatch option such as --mem=64G, got {option!r}", "--sbatch")
    for line in args.setup:
        if any(c in line for c in "\n\r"):
            raise SweeperError("one shell line per --setup (repeat the flag for more)", "--setup")
    if re.search(r"\s", _absolute(args.log_dir)):  # on the #SBATCH --output line, which a space ends
        raise SweeperError(f"must not contain spaces, got {_absolute(args.log_dir)!r}", "--log-dir")
    if args.max_failures is not None and args.max_failures < 0:
        raise SweeperError(f"must be at least 0, got {args.max_failures}", "--max-failures")


def _check_trial_fits(study, args) -> None:
    """A trial that asks for more than one node has would wait in the queue and then forever."""
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else float(study.resources.get("cpu", 1))
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else float(study.resources.get("gpu", 0))
    if cpus > args.cpus_per_node:
        raise SweeperError(f"a trial asks for {cpus:g} CPUs but a node has {args.cpus_per_node}",
                           "--cpus-per-trial" if args.cpus_per_trial is not None else "--cpus-per-node")
    if gpus > args.gpus_per_node:
        raise SweeperError(f"a trial asks for {gpus:g} GPUs but a node has {args.gpus_per_node}",
                           "--gpus-per-trial" if args.gpus_per_trial is not None else "--gpus-per-node")


def _absolute(path: str) -> str:
    """Paths as the compute nodes see them: the job's working directory need not be this one."""
    return path if "://" in path else str(Path(path).expanduser().absolute())


def ensure_token(path: Path) -> bool:
    """Create Ray's token file (Ray's own format: 32 random bytes in hex) when it is missing, readable
    only by its owner. Returns True when it was created."""
    if path.exists():
        if not path.is_file() or not path.read_text().strip():
            raise SweeperError("exists but holds no token", "--token-file")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return True


# -- the script -----------------------------------------------------------------------------------
def gpu_request(args) -> str | None:
    """How the job (and each worker's step) asks for its GPUs."""
    if not args.gpus_per_node:
        return None
    count = f"{args.gpu_type}:{args.gpus_per_node}" if args.gpu_type else str(args.gpus_per_node)
    return f"--gres=gpu:{count}" if args.gres else f"--gpus-per-node={count}"


def sbatch_lines(args, job_name: str, log_dir: str) -> list[str]:
    lines = [f"--job-name={job_name}", f"--nodes={args.nodes}",
             # one task per node: the batch step on the head, one `srun` step per worker node
             "--ntasks-per-node=1", f"--cpus-per-task={args.cpus_per_node}"]
    if gpu_request(args):
        lines.append(gpu_request(args))
    lines.append(f"--time={args.time}")
    if args.partition:
        lines.append(f"--partition={args.partition}")
    if args.account:
        lines.append(f"--account={args.account}")
    lines.append(f"--output={log_dir}/%x-%j.out")  # sbatch does not create folders: cmd_slurm does
    lines += args.sbatch
    return ["#SBATCH " + line for line in lines]


def run_arguments(args) -> list[str]:
    """The `sweeper run` options this command passes through."""
    out: list[str] = []
    if args.quick:
        out.append("--quick")
    if args.data_root:
        out += ["--data-root", _absolute(args.data_root)]
    for flag in ("cpus_per_trial", "gpus_per_trial", "max_failures", "checkpoint_seconds"):
        value = getattr(args, flag)
        if value is not None:
            out += ["--" + flag.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    if args.no_figures:
        out.append("--no-figures")
    return out


def render(args, study_path: Path, job_name: str, log_dir: str) -> str:
    q = shlex.quote
    auth = ("export RAY_AUTH_MODE=token\n"
            f"export RAY_AUTH_TOKEN_PATH={q(str(Path(args.token_file).expanduser().absolute()))}"
            if args.auth == "token" else "export RAY_AUTH_MODE=disabled")
    gpu_step = gpu_request(args) or ""
    values = {
        "VERSION": _version(),
        "DATE": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "SBATCH": "\n".join(sbatch_lines(args, job_name, log_dir)),
        "BIN": q(str(Path(os.path.abspath(sys.executable)).parent)),
        "SETUP": "\n".join(args.setup) if args.setup else "# (none: --setup adds lines here)",
        "AUTH": auth,
        "STUDY": q(str(study_path)),
        "STORE": q(_absolute(args.store)),
        "RUN_ARGS": " ".join(q(a) for a in run_arguments(args)),
        "CPUS": str(args.cpus_per_node),
        "GPUS": str(args.gpus_per_node),
        "GPU_STEP": q(gpu_step) if gpu_step else "''",
        "LOG_DIR": q(log_dir),
        "EXIT_NO_CLUSTER": str(EXIT_NO_CLUSTER),
        "EXIT_SIGNAL": str(EXIT_SIGNAL),
    }
    # One pass: a value (a --setup line, a path) is never searched for placeholders itself.
    return re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], TEMPLATE)


def _version() -> str:
    from sweeper.version import code_version

    return code_version()


TEMPLATE = r"""#!/bin/bash
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
HEAD_PID=; CHILD=; WORKER_PIDS=()
alive() {  # a child that has exited stays a zombie until waited for: not alive
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${stat:0:1}" != Z ]
}
stop_pids() {  # SIGTERM, up to 60 s to exit (a Ray node drains, then stops its processes), SIGKILL
  local pid deadline=$((SECONDS + 60))
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "$@"; do
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
}
cleanup() {
  local rc=$?
  trap - EXIT TERM INT HUP
  if [ -n "$CHILD" ]; then stop_pids "$CHILD"; fi  # the sweep, when a signal ends the job
  # Workers first (srun passes the SIGTERM on to their `ray start`), then the head; a Ray node's
  # processes share its `ray start`'s fate, so they go with it.
  if [ "${#WORKER_PIDS[@]}" -gt 0 ]; then stop_pids "${WORKER_PIDS[@]}"; fi
  if [ -n "$HEAD_PID" ]; then stop_pids "$HEAD_PID"; fi
  rm -rf "$SWEEPER_RAY_TMPDIR"
  say "job exits with status $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'say "signal received: stopping the sweep and Ray"; exit @EXIT_SIGNAL@' TERM INT HUP
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
"""


# -- helpers the script runs on the nodes ------------------------------------------------------------
def node_ip() -> str:
    """The address other nodes reach this one at: the source address of a route outwards, as Ray
    picks it itself (a UDP connect sends nothing); the host name's address when there is no route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("8.8.8.8", 80))
            return s.getsockname()[0]
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on this host now (all held open together, then released)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by the batch shell that waits on it) is dead too
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def wait_for_cluster(address: str, nodes: int, timeout: float, pid: int | None = None) -> int:
    """Wait until the head at `address` answers (nodes=0) or until `nodes` nodes are alive.

    0 when they are; 0 with a warning when only some nodes joined in time (the sweep runs on those);
    1 when the head never answered or its `ray start` (`pid`) died.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:  # first the head's GCS port: a driver that connects too early waits minutes
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError:
            if not _alive(pid) or time.monotonic() > deadline:
                why = "its `ray start` exited" if not _alive(pid) else f"nothing answered in {timeout:g} s"
                print(f"sweeper-slurm: error: the Ray head at {address} did not start: {why} (see the head's log)",
                      file=sys.stderr)
                return 1
            time.sleep(1)
    if nodes == 0:
        return 0
    import ray  # only here: waiting for nodes needs a driver

    ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    try:
        while True:
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) >= nodes:
                print(f"sweeper-slurm: {len(alive)} of {nodes} node(s) up: {ray.cluster_resources()}")
                return 0
            if not _alive(pid):
                print("sweeper-slurm: error: the Ray head's `ray start` exited", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"sweeper-slurm: warning: only {len(alive)} of {nodes} nodes joined in {timeout:g} s "
                      f"(see the workers' logs); the sweep runs on those", file=sys.stderr)
                return 0
            time.sleep(2)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """`python -m sweeper.slurm node-ip | free-ports N | wait --address A --nodes N ...`, for the script."""
    p = argparse.ArgumentParser(prog="python -m sweeper.slurm")
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("node-ip")
    ports = sub.add_parser("free-ports")
    ports.add_argument("count", type=int)
    wait = sub.add_parser("wait")
    wait.add_argument("--address", required=True)
    wait.add_argument("--nodes", type=int, required=True)
    wait.add_argument("--timeout", type=float, default=300)
    wait.add_argument("--pid", type=int, default=None)
    args = p.parse_args(argv)
    if args.what == "node-ip":
        print(node_ip())
    elif args.what == "free-ports":
        print(*free_ports(args.count))
    else:
        return wait_for_cluster(args.address, args.nodes, args.timeout, args.pid)
    return 0


# -- the command ----------------------------------------------------------------------------------
def cmd_slurm(args) -> int:
    from sweeper.study import load_study

    _check(args)
    study_path = Path(args.study).expanduser().absolute()
    study = load_study(study_path, quick=args.quick)  # refuse a bad study here, not after the queue
    _check_trial_fits(study, args)
    sbatch = None
    if args.submit:
        sbatch = shutil.which("sbatch")
        if not sbatch:
            raise SweeperError("no `sbatch` on PATH: run this on a SLURM login node, or --print the script",
                               "--submit")
    job_name = _name(args.job_name or f"sweeper-{study.name}", "--job-name")
    log_dir = _absolute(args.log_dir)
    script = render(args, study_path, job_name, log_dir)

    # Nothing is written before every check has passed.
    if args.auth == "token" and ensure_token(Path(args.token_file).expanduser()):
        print(f"sweeper: created a Ray token in {Path(args.token_file).expanduser()} "
              "(every node must read this path)", file=sys.stderr)
    Path(log_dir).mkdir(parents=True, exist_ok=True)  # sbatch needs --output's folder to exist
    if not args.submit:
        sys.stdout.write(script)
        return 0
    path = Path(log_dir) / f"{job_name}-{dt.datetime.now():%Y%m%d-%H%M%S}.sbatch"
    path.write_text(script)
    r = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SweeperError(f"sbatch refused the job: {(r.stderr or r.stdout).strip().splitlines()[-1:]}", str(path))
    print(f"{r.stdout.strip()} ({path}; output in {log_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
