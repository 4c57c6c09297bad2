"""What the batch script runs on the nodes, as `python -m sweeper.slurm node-ip | free-ports N |
wait --address A --nodes N`: the address of this node, free ports for its Ray, and the wait for the
head and the other nodes (the Ray part of that wait is sweeper.orchestration's)."""
from __future__ import annotations

import argparse
import socket
import sys
import time

from sweeper import procs


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
    return pid is None or procs.alive(pid)  # a zombie (not yet reaped by the batch shell) is dead too


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
    from sweeper.orchestration.resources import wait_for_nodes

    joined = wait_for_nodes(address, nodes, deadline, lambda: _alive(pid))
    if joined.resources is not None:
        print(f"sweeper-slurm: {joined.alive} of {nodes} node(s) up: {joined.resources}")
        return 0
    if joined.head_exited:
        print("sweeper-slurm: error: the Ray head's `ray start` exited", file=sys.stderr)
        return 1
    print(f"sweeper-slurm: warning: only {joined.alive} of {nodes} nodes joined in {timeout:g} s "
          f"(see the workers' logs); the sweep runs on those", file=sys.stderr)
    return 0


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
