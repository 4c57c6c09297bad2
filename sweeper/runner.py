"""The runner: the only module that imports Ray. It turns a study's missing trials into Ray Tune
trials, one `sweeper.trial.execute` each, and reports progress.

Why it looks like this:
- The store, not Tune's experiment state, is the record of what is done: a re-run (after a killed
  driver, a failed trial, a new seed) plans only what the store lacks. Tune's state under
  `<store>/<study>/_tune` serves only to resume a trial from its last checkpoint after a lost node.
- Actors are reused between trials (Tune's per-trial start-up cost is otherwise ~1.7 s here), and
  each trial sets torch's threads to its CPU count (oversubscription made two trials 5x slower).
- Only scalars go to Tune (it keeps statistics of every metric); tables go straight to Parquet.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sweeper.errors import SweeperError
from sweeper.store import Store
from sweeper.study import Study

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines replace Tune's tables
# Ctrl-C raises KeyboardInterrupt out of `tuner.fit` (one line from the CLI; Ray shuts down, trials
# end without a row and run again next time). Tune's own handler would instead stop every trial
# as if its scheduler had, and print a restore hint that does not apply to sweeper.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


@dataclass
class RunSummary:
    study: str
    planned: int
    skipped: int  # already done in the store
    ran: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> error (this run)
    missing: int = 0  # neither done nor failed after the run (lost to faults)
    seconds: float = 0.0
    best: tuple[float, str] | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing


# -- connecting ------------------------------------------------------------------------------
def token_source() -> str | None:
    """Where Ray would find this user's authentication token, in Ray 2.60's order: RAY_AUTH_TOKEN,
    then the file RAY_AUTH_TOKEN_PATH names, then ~/.ray/auth_token. None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        path = Path(named).expanduser()
        if not path.is_file() or not path.read_text().strip():
            # Ray aborts the process on an unreadable token file: say so in one line first
            raise SweeperError(f"names {named}, which is missing or empty", "RAY_AUTH_TOKEN_PATH")
        return named
    default = Path.home() / ".ray" / "auth_token"
    return "~/.ray/auth_token" if default.is_file() else None


def use_auth_token() -> str | None:
    """Send this user's Ray token to the cluster when they have one; returns where it was found.

    A cluster started with RAY_AUTH_MODE=token (cluster.yaml's) refuses every client without its
    token, but Ray 2.60's client sends the token to an address it is given only when RAY_AUTH_MODE
    is `token` in the client's own environment (it guesses only for `auto`). So: when the mode is
    unset and a token is at hand, turn token mode on for this process and the processes it starts
    (`sweeper submit`'s HTTP client reads the same setting). A cluster without authentication
    ignores the token (tests/test_auth.py checks both), and an explicit RAY_AUTH_MODE is left as
    the user set it."""
    if os.environ.get("RAY_AUTH_MODE"):
        return None
    source = token_source()
    if source is None:
        return None
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:  # Ray caches its config: make this process see the new mode too
        from ray._raylet import Config

        Config.initialize("")
    return source


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (Ray's C++ client logs there) for a probe whose failure we report
    ourselves in one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def token_refused(address: str) -> SweeperError:
    """The one line for a cluster that refused this client's token (or its lack of one)."""
    mode, source = os.environ.get("RAY_AUTH_MODE", ""), token_source()
    if mode and mode != "token":
        why = f"RAY_AUTH_MODE is {mode} here (unset it, or set it to token)"
    elif mode != "token" or source is None:
        why = "this client has no token"
    else:
        why = f"the token in {source} is not the cluster's"
    return SweeperError(
        f"the Ray cluster at {address} requires its authentication token, and {why}; put the cluster's "
        "token in ~/.ray/auth_token or name its file in RAY_AUTH_TOKEN_PATH (docs/cluster.md)", "--address")


def _check_token(address: str) -> None:
    """Ask the cluster's GCS one question, to turn a refused token into one line within seconds
    (ray.init retries for 20 s, then says only that it failed to connect)."""
    from ray._raylet import InnerGcsClient
    from ray.exceptions import AuthenticationError

    try:
        with _quiet_stderr():
            InnerGcsClient.standalone(address, None, 5000)
    except AuthenticationError:
        raise token_refused(address) from None
    except Exception:  # anything else: ray.init reports it in its own words
        return


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail within seconds, not minutes, when no Ray cluster answers at `address` or it refuses
    this client's token."""
    if address == "local":
        return
    target = address
    if address == "auto":  # the cluster this host runs, or RAY_ADDRESS
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not os.environ.get("RAY_ADDRESS") and not current.exists():
            raise SweeperError("no Ray cluster is running on this host (start one with `ray start --head`)", "--address")
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto") or ""
        except Exception:
            target = ""
        if not target:  # let ray.init say what it finds
            use_auth_token()
            return
    scheme, _, hostport = target.rpartition("://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweeperError(f"expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}", "--address")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        where = address if target == address else f"{target} (from {address})"
        raise SweeperError(f"no Ray cluster answers at {where} ({e.strerror or e})", "--address") from None
    use_auth_token()
    if not scheme:  # a GCS address (ray:// is Ray Client's own server)
        _check_token(hostport)


def is_local(address: str | None) -> bool:
    """The embedded cluster on this machine, which this process starts and which never grows."""
    return address in (None, "local")


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Start an embedded local cluster (address None) or join one. Returns True when this call
    started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if is_local(address):
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,  # no open port on a laptop; `ray start` users opt in
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        check_address(address)
        # configure_logging=False: Ray's INFO lines on stderr would break the one-line error rule
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    from sweeper.interrupt import on_sigterm_interrupt

    on_sigterm_interrupt()  # take SIGTERM back from ray.init (see sweeper.interrupt)
    return True


# -- resources: a cluster that starts with no workers ----------------------------------------------
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


# -- the trial function -------------------------------------------------------------------------
def tune_trial(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: rebuild the spec, run it with a callback that reports each
    epoch to Tune and checkpoints its state, resume from Tune's checkpoint if there is one."""
    import ray
    import torch
    from ray import tune

    from sweeper.experiments import EXPERIMENTS
    from sweeper.trial import TrialContext, execute
    from sweeper.version import code_version

    experiment = EXPERIMENTS[config["experiment"]]
    spec = experiment.spec_type.from_values(dict(config["spec"]))

    def result_scalars(row: dict[str, Any]) -> dict[str, float]:
        # the float result columns of a trials row: what Tune sees of a finished trial (a search's
        # metric is one of them)
        return {k: row[k] for k, t in experiment.columns.items() if t is float and isinstance(row.get(k), float)}

    if config.get("reuse_done"):  # a search that proposes a finished trial gets its stored result
        row = Store(config["store"]).trial_row(config["study"], spec.trial_id)
        if row and row["status"] == "done":
            tune.report({"status": "done", "trial_done": 1, "reused": 1, "epoch": row.get("epochs") or 0,
                         **result_scalars(row)})
            return
    cpus = float(config["cpus"])
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    ctx = TrialContext(
        study=config["study"],
        store=Store(config["store"]),
        data_root=config["data_root"],
        code_version=code_version(),  # of the code this node runs, which the driver's may not be
        cpus=cpus,
        gpus=float(config["gpus"]),
        node_id=ray.get_runtime_context().get_node_id(),
        early_stopping=bool(config.get("early_stopping")),
    )
    every = float(config["checkpoint_seconds"])
    last = [time.monotonic()]

    def report_to_tune(progress) -> None:
        if progress.end or progress.epoch == progress.epochs:
            return  # the last epoch is reported after the trial commits (a scheduler may stop here)
        report = {"epoch": progress.epoch, "node_id": ctx.node_id,
                  **{k: v for k, v in progress.metrics.items() if isinstance(v, (int, float))}}
        if progress.state is not None and time.monotonic() - last[0] >= every:
            with tempfile.TemporaryDirectory() as d:
                torch.save(progress.state(), os.path.join(d, "state.pt"))
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))
            last[0] = time.monotonic()
        else:
            tune.report(report)

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(os.path.join(d, "state.pt"), weights_only=True)
    row = execute(spec, ctx, threads=threads, callbacks=[report_to_tune], resume=resume)
    final = {"status": row["status"], "trial_done": 1, "epoch": getattr(spec, "epochs", 0) or 0,
             **result_scalars(row)}
    tune.report(final)


# -- progress -----------------------------------------------------------------------------------
def _progress_callback(total: int, skipped: int, say: Callable[[str], None], metric: str, mode: str):
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished trial: counts and the best accuracy so far."""

        def __init__(self):
            self.started, self.finished, self.failed, self.best = set(), 0, 0, None

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.add(trial.trial_id)

        def _line(self, trials, last):
            running = len(self.started) - self.finished
            pending = total - self.finished - running
            best = f" · best {metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
            say(
                f"[{self.finished + skipped}/{total + skipped}] {self.finished - self.failed} done, "
                f"{running} running, {pending} pending, {self.failed} failed{best}  <- {last}"
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            self.finished += 1
            label = _trial_label(trial)
            if result.get("status") != "done":
                self.failed += 1
                last = f"{label}: FAILED"
            else:
                value = result.get(metric)
                lower = mode == "min"
                if isinstance(value, float) and (self.best is None or (value < self.best[0] if lower else value > self.best[0])):
                    self.best = (value, label)
                last = f"{label}: {metric} {value:.4f}" if isinstance(value, float) else label
            self._line(trials, last)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.finished += 1
            self.failed += 1
            record_lost_trial(trial)
            self._line(trials, f"{_trial_label(trial)}: ERROR (retries exhausted)")

    return Progress()


def record_lost_trial(trial) -> None:
    """A trial whose process died on every attempt (out of memory, a node lost each time) wrote no
    row of its own: record it as failed from the driver, so the summary, `sweeper status` and the
    next run see it. A row the trial did commit is never overwritten."""
    from sweeper.experiments import EXPERIMENTS
    from sweeper.trial import TrialContext, TrialResult, _commit, now

    config = trial.config
    spec_values = config["point"]["spec"] if "point" in config else {**config["base"], **config["sampled"]}
    spec = EXPERIMENTS[config["experiment"]].spec_type.from_values(dict(spec_values))
    store = Store(config["store"])
    if store.trial_row(config["study"], spec.trial_id) is not None:
        return
    message = str(getattr(trial, "error_msg", None) or "the trial's process died")
    ctx = TrialContext(study=config["study"], store=store, code_version=config["code_version"],
                       cpus=config["cpus"], gpus=config["gpus"])
    _commit(spec, ctx, now(), "failed", f"lost after all retries: {message.strip().splitlines()[-1] if message.strip() else message}",
            TrialResult({}, {}))


def _trial_label(trial) -> str:
    if "point" in trial.config:
        return trial.config["point"]["label"]
    sampled = trial.config.get("sampled", {})
    return f"{trial.trial_id} " + " ".join(f"{k}={v:.3g}" for k, v in sampled.items())


def _label(spec) -> str:
    changed = spec.non_default()
    keys = [k for k in ("model", "trainable", "activation", "norm", "weight_init", "seed") if hasattr(spec, k)]
    parts = [spec.model] if hasattr(spec, "model") else []
    parts += [f"{k}={changed[k]}" for k in keys if k in changed and k != "model"]
    return f"{spec.trial_id[:8]} {' '.join(parts)}".strip()


# -- the sweep -----------------------------------------------------------------------------------
def run_study(
    study: Study,
    store: Store,
    *,
    address: str | None = None,
    data_root: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_failures: int = 2,
    checkpoint_seconds: float = 30.0,
    rerun: set[str] | None = None,
    say: Callable[[str], None] = print,
    reuse_actors: bool = True,
    wait_for_resources: float | None = None,
) -> RunSummary:
    """Run every trial of `study` that the store does not have as done. Failed trials are
    retried; trials in `rerun` run again even when done. `reuse_actors=False` is Tune's default
    (a fresh worker per trial), kept for `sweeper bench` to compare against.
    `wait_for_resources`: seconds to wait for a node that can hold one trial (see
    `await_resources`); None: REMOTE_WAIT_S on a cluster joined by address, 0 on the local one."""
    started = time.perf_counter()
    specs = study.specs()
    if study.search is not None:
        return run_search(study, store, specs[0], address=address, data_root=data_root,
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                          max_failures=max_failures, checkpoint_seconds=checkpoint_seconds, say=say,
                          wait_for_resources=wait_for_resources)
    status = store.trial_status(study.name)
    for path in status.corrupt:
        say(f"warning: {path}: unreadable trials file; its trial runs again")
    rerun = rerun or set()
    todo = [s for s in specs if s.trial_id not in status.done or s.trial_id in rerun]
    summary = RunSummary(study.name, planned=len(specs), skipped=len(specs) - len(todo))
    if summary.skipped:
        say(f"{study.name}: {summary.skipped} of {len(specs)} trials already in the store; skipped")
    if not todo:
        summary.seconds = time.perf_counter() - started
        return summary

    import ray
    from ray import tune

    cpus, gpus = _resources(study, cpus_per_trial, gpus_per_trial)
    started_ray = connect(address)
    try:
        _await_then_mark(store, study.name, cpus, gpus, address, wait_for_resources, len(todo), say)
        say(f"{study.name}: running {len(todo)} trials ({cpus:g} CPU, {gpus:g} GPU each) -> {store.uri}")
        by_label = {s.trial_id: _label(s) for s in todo}
        common = _common_config(study, store, data_root, cpus, gpus, checkpoint_seconds)
        points = [{"spec": s.to_dict(), "label": by_label[s.trial_id], "trial_id": s.trial_id} for s in todo]
        param_space = {**common, "point": tune.grid_search(points)}
        trainable = tune.with_resources(_flatten_point, {"cpu": cpus, "gpu": gpus})
        from sweeper.experiments import EXPERIMENTS

        experiment = EXPERIMENTS[study.experiment]
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                reuse_actors=reuse_actors,
                trial_dirname_creator=lambda t: t.config["point"]["trial_id"],
                trial_name_creator=lambda t: t.config["point"]["trial_id"],
            ),
            run_config=tune.RunConfig(
                name=f"sweep-{int(time.time())}",
                **store.tune_storage(study.name),  # storage_path, and an object store's filesystem
                verbose=0,
                callbacks=[_progress_callback(len(todo), summary.skipped, say, experiment.metric, experiment.mode)],
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()

    after = store.trial_status(study.name)
    ids = {s.trial_id for s in todo}
    summary.ran = len(todo)
    summary.done = len(ids & after.done)
    summary.failed = {t: e for t, e in after.failed.items() if t in ids}
    summary.missing = len(ids - after.done - set(after.failed))
    summary.seconds = time.perf_counter() - started
    return summary


def _flatten_point(config: dict[str, Any]) -> None:
    point = config["point"]
    tune_trial({**config, "spec": point["spec"], "label": point["label"]})


def _search_point(config: dict[str, Any]) -> None:
    tune_trial({**config, "spec": {**config["base"], **config["sampled"]}, "reuse_done": True})


def _resources(study: Study, cpus_per_trial, gpus_per_trial) -> tuple[float, float]:
    cpus = float(cpus_per_trial if cpus_per_trial is not None else study.resources.get("cpu", 1))
    gpus = float(gpus_per_trial if gpus_per_trial is not None else study.resources.get("gpu", 0))
    return cpus, gpus


def _await_then_mark(store: Store, name: str, cpus: float, gpus: float, address: str | None,
                     wait_s: float | None, demand: int, say: Callable[[str], None]) -> None:
    """Wait for a node that holds one trial, then make the store's first write (its version
    file): a sweep that gives up waiting leaves the store as it found it."""
    if wait_s is None:
        wait_s = 0.0 if is_local(address) else REMOTE_WAIT_S
    await_resources(cpus, gpus, wait_s=wait_s, local=is_local(address), demand=demand,
                    say=lambda line: say(f"{name}: {line}"))
    store.write_marker()


def _common_config(study, store, data_root, cpus, gpus, checkpoint_seconds) -> dict[str, Any]:
    from sweeper.version import code_version

    return {
        "experiment": study.experiment,
        "study": study.name,
        "store": store.uri,
        "data_root": data_root,
        "code_version": code_version(),
        "cpus": cpus,
        "gpus": gpus,
        "checkpoint_seconds": checkpoint_seconds,
    }


def run_search(study: Study, store: Store, base, *, address=None, data_root=None, cpus_per_trial=None,
               gpus_per_trial=None, max_failures=2, checkpoint_seconds=30.0, say=print,
               wait_for_resources=None) -> RunSummary:
    """An Optuna search (Ray Tune's OptunaSearch, optionally with ASHA) over `study.search.space`
    around the study's one base trial. Sampled trials are ordinary trials in the store; a one-row
    file in table `search` names the chosen one."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    search = study.search
    started = time.perf_counter()
    search_id = search.identity(base.trial_id)
    space = {k: (tune.loguniform if kind == "loguniform" else tune.uniform)(low, high)
             for k, (kind, low, high) in search.space.items()}
    cpus, gpus = _resources(study, cpus_per_trial, gpus_per_trial)
    before = store.trial_status(study.name)
    started_ray = connect(address)
    try:
        # a searcher proposes one trial at a time: Tune keeps one pending, so shall the wait
        _await_then_mark(store, study.name, cpus, gpus, address, wait_for_resources, 1, say)
        say(f"{study.name}: Optuna search {search_id}: {search.num_samples} trials over "
            f"{', '.join(search.space)} ({search.mode} {search.metric}) -> {store.uri}")
        scheduler = None
        if search.asha:
            epochs = getattr(base, "epochs", 1) or 1
            scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1)
        tuner = tune.Tuner(
            tune.with_resources(_search_point, {"cpu": cpus, "gpu": gpus}),
            param_space={**_common_config(study, store, data_root, cpus, gpus, checkpoint_seconds),
                         "base": base.to_dict(), "sampled": space, "early_stopping": search.asha},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(seed=search.seed),
                scheduler=scheduler,
                metric=search.metric,
                mode=search.mode,
                num_samples=search.num_samples,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"search-{search_id}-{int(time.time())}",
                **store.tune_storage(study.name),
                verbose=0,
                callbacks=[_progress_callback(search.num_samples, 0, say, search.metric, search.mode)],
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        results = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()

    spec_type = type(base)
    ids = set()
    for result in results:
        if result.config:
            ids.add(spec_type.from_values({**base.to_dict(), **result.config["sampled"]}).trial_id)
    after = store.trial_status(study.name)
    summary = RunSummary(study.name, planned=search.num_samples, skipped=len(ids & before.done))
    summary.ran = len(ids - before.done)
    summary.done = len(ids & after.done)
    summary.failed = {t: e for t, e in after.failed.items() if t in ids}
    summary.missing = len(ids - after.done - set(after.failed) - after.stopped)
    trials = store.read(study.name, "trials")
    trials = trials[trials["trial_id"].isin(ids) & (trials["status"] == "done")]
    if len(trials) and search.metric in trials:
        best = trials.sort_values(search.metric, ascending=search.mode == "min").iloc[0]
        summary.best = (float(best[search.metric]), best["trial_id"])
        store.append_row(study.name, "search", search_id, {
            "search_id": search_id, "base_trial_id": base.trial_id, "chosen_trial_id": best["trial_id"],
            "metric": search.metric, "mode": search.mode, "value": float(best[search.metric]),
            "trials": len(ids), "space": repr(search.space), "asha": search.asha, "ended_at": _now(),
        })
        say(f"{study.name}: search {search_id} chose {best['trial_id']} ({search.metric} {best[search.metric]:.4f})")
    summary.seconds = time.perf_counter() - started
    return summary


def _now() -> str:
    from sweeper.trial import now

    return now()
