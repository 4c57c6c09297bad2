"""What a trial asks of the cluster, and waiting until some node can give it: a cluster from
`ray up` starts as a head with no trial resources and grows only for demand it sees."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from sweeper.errors import SweeperError
from sweeper.orchestration.connect import is_local
from sweeper.store import Store
from sweeper.study import Study

# How long a sweep on a cluster it joins waits for the first node that can hold one trial. A
# cluster from `ray up cluster.yaml` starts as a head with CPU 0 and adds GPU workers only for
# demand it sees: launching a g5 instance, pulling the ~10 GB CUDA image and installing the project
# takes 5 to 10 minutes from zero, spot capacity can add a few more. 15 minutes covers a cold start
# with room to spare; a sweep that has no node by then is stuck (no capacity in the region, an
# instance quota, a broken setup command) and says so, instead of sitting all night on an idle head.
# The embedded local cluster never grows: it waits 0 s.
REMOTE_WAIT_S = 900.0
# Placement groups pending at once while waiting: the demand Tune itself keeps for a grid
# (TUNE_MAX_PENDING_TRIALS_PG's "auto" is at least 200), so the autoscaler starts as many nodes now
# as it will for the sweep.
MAX_DEMAND = 200


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}


def _fits(bundle: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(k, 0) >= v for k, v in bundle.items())


def _shape(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def cluster_node_types() -> dict[str, dict[str, float]] | None:
    """The node types the cluster's autoscaler may add (name -> resources of one node), or None
    when that cannot be known. Ray 2.60 offers two sources:
    - the cluster config in the GCS (`ray._private.state.state.get_cluster_config()`, which Ray
      Train and Data read), reported by KubeRay and autoscaler-v2 deployments;
    - `~/ray_bootstrap_config.yaml`, the config `ray up` leaves on the head for its autoscaler
      (Tune reads the same file to tell an autoscaling cluster), when this driver runs on that
      head, as under `sweeper submit` or `ray exec cluster.yaml`.
    A cluster of `ray start` nodes without an autoscaler has neither: only the wait limit applies."""
    from_gcs = _node_types_from_gcs()
    return from_gcs if from_gcs is not None else _node_types_from_bootstrap()


def _node_types_from_gcs() -> dict[str, dict[str, float]] | None:
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # an older or partial GCS: unknown, not an error
        return None
    if config is None or not config.node_group_configs:
        return None
    return {g.name or f"group{i}": {k: float(v) for k, v in g.resources.items()}
            for i, g in enumerate(config.node_group_configs) if g.max_count != 0}


def _node_types_from_bootstrap() -> dict[str, dict[str, float]] | None:
    import ray

    path = Path("~/ray_bootstrap_config.yaml").expanduser()
    if not path.is_file():
        return None
    heads = [n for n in _alive_nodes() if "node:__internal_head__" in n.get("Resources", {})]
    if not heads or heads[0].get("NodeManagerAddress") != ray.util.get_node_ip_address():
        return None  # a file left by another cluster: this driver is not on this cluster's head
    try:
        import yaml

        config = yaml.safe_load(path.read_text())
        head = config.get("head_node_type")
        types = {}
        for name, node_type in config["available_node_types"].items():
            if name == head or node_type.get("max_workers", 0) == 0 or config.get("max_workers") == 0:
                continue  # the head is among the alive nodes; a type the autoscaler never starts
            if "resources" not in node_type:
                return None  # left for the cloud to fill in: unknown
            types[name] = {k: float(v) for k, v in node_type["resources"].items()}
        return types
    except Exception:  # not a cluster config we can read: unknown
        return None


def await_resources(cpus: float, gpus: float, *, wait_s: float, local: bool, demand: int = 1,
                    say: Callable[[str], None] = print) -> None:
    """Return once some node of the cluster can hold one trial; raise SweeperError when none ever
    can (no node type of the autoscaler's is big enough) or none joined within `wait_s` seconds.

    While it waits, one pending placement group per trial (up to `demand`) shows the autoscaler
    the sweep's demand, as Tune's pending trials will once the sweep starts. Placement groups
    rather than `ray.autoscaler.sdk.request_resources`: both reach the v1 and v2 autoscalers and
    do nothing where there is none, but a resource request stays in the GCS after its driver dies
    (a killed sweep would keep GPU nodes up until someone clears it), while a placement group is
    the job's and goes with it. They are removed before Tune starts."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = _bundle(cpus, gpus)
    if not bundle:
        return
    nodes = [n.get("Resources", {}) for n in _alive_nodes()]
    if any(_fits(bundle, r) for r in nodes):
        return
    asked = f"each trial asks for {_shape(bundle)}"
    types = None if local else cluster_node_types()
    if types is not None and not any(_fits(bundle, r) for r in types.values()):
        offers = "; ".join(f"{name}: {_shape(r)}" for name, r in types.items()) or "no worker types"
        raise SweeperError(f"{asked}, more than any node this cluster can add ({offers}); ask for less "
                           "(--cpus-per-trial, --gpus-per-trial) or add a node type that big to the cluster "
                           "config", "resources")
    largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    if local:
        raise SweeperError(f"{asked}, but this machine's cluster has {_shape(largest)}; ask for less "
                           "(--cpus-per-trial, --gpus-per-trial), or run on a cluster (--address)", "resources")
    if wait_s <= 0:
        raise SweeperError(f"{asked}, but no node of the cluster at hand has that (the largest: "
                           f"{_shape(largest)}) and --wait-for-resources is 0", "resources")
    fitting = ""
    if types:
        fitting = "; node types that fit: " + ", ".join(n for n, r in types.items() if _fits(bundle, r))
    say(f"waiting up to {wait_s:g} s for a node with {_shape(bundle)}: the cluster has none yet, and its "
        f"autoscaler (if it has one) adds workers for the pending trials{fitting}")
    started = time.monotonic()
    groups = [placement_group([bundle]) for _ in range(max(1, min(demand, MAX_DEMAND)))]
    try:
        next_note = started + 60
        while True:
            if any(_fits(bundle, n.get("Resources", {})) for n in _alive_nodes()):
                say(f"a node with {_shape(bundle)} joined after {time.monotonic() - started:.0f} s")
                return
            now = time.monotonic()
            if now - started >= wait_s:
                raise SweeperError(
                    f"no node with {_shape(bundle)} joined the cluster within {wait_s:g} s, so nothing ran "
                    "(is its autoscaler adding workers? `ray status` on the head, `ray monitor cluster.yaml`); "
                    "wait longer with a larger --wait-for-resources", "--wait-for-resources")
            if now >= next_note:
                say(f"still waiting for a node with {_shape(bundle)} ({now - started:.0f} of {wait_s:g} s)")
                next_note += 60
            time.sleep(1.0)
    finally:
        for group in groups:
            try:
                remove_placement_group(group)
            except Exception:  # the job's groups go with the driver anyway
                pass


def trial_resources(study: Study, cpus_per_trial, gpus_per_trial) -> tuple[float, float]:
    """CPUs and GPUs of one trial: the command's flags, else the study's `resources`."""
    cpus = float(cpus_per_trial if cpus_per_trial is not None else study.resources.get("cpu", 1))
    gpus = float(gpus_per_trial if gpus_per_trial is not None else study.resources.get("gpu", 0))
    return cpus, gpus


def await_then_begin(store: Store, study: Study, cpus: float, gpus: float, address: str | None,
                     wait_s: float | None, demand: int, say: Callable[[str], None]) -> None:
    """Wait for a node that holds one trial, then make the store's first writes: its version file,
    and the plan this run means (see `begin`). A sweep that gives up waiting leaves the store as it
    found it."""
    if wait_s is None:
        wait_s = 0.0 if is_local(address) else REMOTE_WAIT_S
    await_resources(cpus, gpus, wait_s=wait_s, local=is_local(address), demand=demand,
                    say=lambda line: say(f"{study.name}: {line}"))
    store.write_marker()
    begin(store, study)


def begin(store: Store, study: Study) -> None:
    """Record the study's plan as the store's current one (figures and status drawn later without
    the study file restrict to it). At the start, not the end: a run stopped part way (killed, a
    time limit) has still changed what the study means, and figures drawn before the rerun finishes
    it should show the new plan's trials, not the previous run's."""
    from sweeper.analysis.cohort import Plan, record_plan

    record_plan(store, Plan.of(study))


def cluster_cpus(default: float) -> float:
    """The CPUs of the cluster this driver is connected to (`default` when it has none)."""
    import ray

    return float(ray.cluster_resources().get("CPU", default))


# -- a fixed set of nodes (a SLURM allocation) ------------------------------------------------------
class NodesJoined(NamedTuple):
    alive: int  # nodes alive when the wait ended
    resources: dict[str, float] | None  # the cluster's resources, when all `nodes` joined
    head_exited: bool  # the head's process died while waiting


def wait_for_nodes(address: str, nodes: int, deadline: float, head_alive: Callable[[], bool]) -> NodesJoined:
    """Join the cluster at `address` as a driver and wait until `nodes` nodes are alive, the head's
    process has exited (`head_alive()` turns False) or time.monotonic() passes `deadline`."""
    import ray  # only here: counting nodes needs a driver

    ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    try:
        while True:
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) >= nodes:
                return NodesJoined(len(alive), ray.cluster_resources(), False)
            if not head_alive():
                return NodesJoined(len(alive), None, True)
            if time.monotonic() > deadline:
                return NodesJoined(len(alive), None, False)
            time.sleep(2)
    finally:
        ray.shutdown()
