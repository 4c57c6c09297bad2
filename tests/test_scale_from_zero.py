"""A sweep on a cluster that has no worker yet, as `ray up cluster.yaml` leaves it (a head with
CPU 0, workers scaled from zero): `sweeper run` waits for a node instead of refusing, runs every
trial once when one joins, gives up after --wait-for-resources with nothing written, and refuses at
once a trial bigger than any node type the autoscaler knows.

The cluster is a real multi-node `ray.cluster_utils.Cluster` (head with `num_cpus=0`) that lives
in a helper process of this module, so that nodes are added from that process's main thread and
the session's own local cluster (conftest) stays untouched. It has no autoscaler: a worker
"joins" when the test adds one, as the autoscaler would after seeing the sweep's demand.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import sweeper_in_process

REPO = Path(__file__).resolve().parents[1]

HELPER = textwrap.dedent(r'''
    import json, signal, sys
    from pathlib import Path
    from ray.cluster_utils import Cluster

    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))  # unwind: shutdown below runs
    dashboard, agent = json.loads(sys.argv[1])
    from ray._common.utils import get_ray_address_file
    current = Path(get_ray_address_file(None))  # /tmp/ray/ray_current_cluster, or under $RAY_TMPDIR
    before = current.read_bytes() if current.exists() else None
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "dashboard_port": dashboard,
        "dashboard_agent_listen_port": agent})
    # Cluster() names itself this host's current cluster; give that back (other tests' `auto`)
    if before is None:
        current.unlink(missing_ok=True)
    else:
        current.write_bytes(before)
    print("ADDRESS", cluster.address, flush=True)
    try:
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "add":
                node = cluster.add_node(num_cpus=int(arg))
                cluster.wait_for_nodes()
                print("ADDED", node.node_id, flush=True)
            elif command == "config":  # the node types an autoscaler reports to the GCS (KubeRay, v2)
                from ray._raylet import GcsClient
                from ray.core.generated import autoscaler_pb2
                config = autoscaler_pb2.ClusterConfig()
                for name, (resources, most) in json.loads(arg).items():
                    group = config.node_group_configs.add()
                    group.name, group.max_count = name, most
                    for key, value in resources.items():
                        group.resources[key] = value
                GcsClient(address=cluster.address).report_cluster_config(config.SerializeToString())
                print("CONFIGURED", flush=True)
            elif command == "stop":
                break
    finally:
        cluster.shutdown()
''')

STUDY = textwrap.dedent("""
    from sweeper import Study

    study = Study(name="zero", dataset="digits", axes={"seed": [0, 1, 2]},
                  recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none", "batch_size": 64},
                  resources={"cpu": 1, "gpu": 0})
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lines:
    """A process's output lines, read in a thread, waited for by content."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, prefix: str, timeout: float, alive=lambda: True) -> str:
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        self.lines.remove(line)
                        return line
                assert time.time() < deadline and alive(), f"no {prefix!r} line; got {self.lines[-20:]}"
                self.cond.wait(timeout=1.0)


class ClusterProcess:
    def __init__(self):
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HELPER, json.dumps([free_port(), free_port()])], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
        self.out = Lines(self.proc.stdout)
        self.address = self.ask(None, "ADDRESS", 180).split()[1]

    def ask(self, command, reply, timeout=120) -> str:
        if command:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        return self.out.wait_for(reply, timeout, alive=lambda: self.proc.poll() is None)

    def stop(self):
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its nodes' reapers end them when it goes


@pytest.fixture(scope="module")
def empty_cluster():
    """A head with CPU 0 and no worker: the shape `ray up cluster.yaml` starts with."""
    cluster = ClusterProcess()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def study(tmp_path) -> Path:
    path = tmp_path / "zero.py"
    path.write_text(STUDY)
    return path


def sweeper_run(*args, home=None):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    if home:
        env["HOME"] = str(home)
    return subprocess.Popen([sys.executable, "-m", "sweeper.cli", "run", *map(str, args), "--no-figures"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_gives_up_after_the_wait_limit_having_written_nothing(empty_cluster, study, tmp_path):
    store = tmp_path / "store"
    started = time.time()
    p = sweeper_run(study, "--store", store, "--address", empty_cluster.address, "--wait-for-resources", "5")
    out, err = p.communicate(timeout=300)
    waited = time.time() - started
    assert p.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sweeper: error: --wait-for-resources: no node with 1 CPU, 0 GPU joined the "
                               "cluster within 5 s, so nothing ran"), err
    assert "zero: waiting up to 5 s for a node with 1 CPU, 0 GPU" in out
    assert waited >= 5
    assert files_under(store) == []  # no study folder, no _tune, not even _sweeper.json


def test_nightly_reports_a_study_that_got_no_node_and_goes_on(empty_cluster, study, tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "nightly", str(study), "--store", str(store),
                        "--address", empty_cluster.address, "--wait-for-resources", "5"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr  # a night with a study that could not run failed
    (summary,) = store.glob("reports/*/summary.json")
    night = json.loads(summary.read_text())["studies"][0]
    assert night["error"].startswith("--wait-for-resources: no node with 1 CPU, 0 GPU joined the cluster within 5 s")
    assert not (store / "zero" / "_tune").exists() and not (store / "zero" / "trials").exists()


@pytest.mark.parametrize("argv", [
    ["run", "s.py", "--wait-for-resources", "-1"],
    ["run", "s.py", "--wait-for-resources", "soon"],
    ["nightly", "s.py", "--store", "x", "--wait-for-resources", "nan"],
    ["submit", "s.py", "--address", "http://h:8265", "--store", "/x", "--wait-for-resources", "inf"],
])
def test_a_bad_wait_limit_is_one_line(argv):
    r = sweeper_in_process(*argv, cwd=REPO)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--wait-for-resources: expected a number of seconds >= 0, got" in lines[0], r.stderr


def test_submit_and_schedule_pass_the_wait_limit_on(tmp_path):
    from sweeper.cli import build_parser
    from sweeper.nightly.schedule import cron_line
    from sweeper.orchestration.submit import entrypoint

    args = build_parser().parse_args(["submit", "s.py", "--address", "http://h:8265", "--store", "/x",
                                      "--wait-for-resources", "1800"])
    assert entrypoint(args, "s.py").endswith("--wait-for-resources 1800.0")
    study = tmp_path / "s.py"
    study.write_text(STUDY)
    args = build_parser().parse_args(["schedule", str(study), "--store", str(tmp_path / "st"), "--at", "02:30",
                                      "--address", "auto", "--wait-for-resources", "1800"])
    assert "--wait-for-resources 1800 " in cron_line(args)
    args = build_parser().parse_args(["run", "s.py"])
    assert args.wait_for_resources is None  # the runner's default: 900 s joined, 0 local


@pytest.mark.parametrize("source", ["gcs", "bootstrap"])
def test_a_trial_bigger_than_every_node_type_is_refused_at_once(empty_cluster, study, tmp_path, source):
    home = None
    if source == "gcs":  # the node types as an autoscaler reports them to the GCS
        empty_cluster.ask("config " + json.dumps({"gpu_worker": [{"CPU": 4, "GPU": 1}, 8]}), "CONFIGURED")
        types = "gpu_worker: 4 CPU, 1 GPU"
    else:  # on the head of a `ray up` cluster: the autoscaler's ~/ray_bootstrap_config.yaml
        empty_cluster.ask("config {}", "CONFIGURED")
        import yaml
        from ray.autoscaler._private.util import prepare_config

        # what `ray up` writes there: cluster.yaml after Ray's prepare_config
        config = prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
        home = tmp_path / "home"
        home.mkdir()
        (home / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(config))
        types = "; ".join(f"{k}: {t['resources'].get('CPU', 0):g} CPU, {t['resources'].get('GPU', 0):g} GPU"
                          for k, t in config["available_node_types"].items() if k != config["head_node_type"])
    store = tmp_path / "store"
    try:
        started = time.time()
        p = sweeper_run(study, "--store", store, "--address", empty_cluster.address, "--cpus-per-trial", "64",
                        home=home)
        out, err = p.communicate(timeout=300)
    finally:
        if source == "gcs":
            empty_cluster.ask("config {}", "CONFIGURED")
    assert p.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0] == (f"sweeper: error: resources: each trial asks for 64 CPU, 0 GPU, more than any node this "
                        f"cluster can add ({types}); ask for less (--cpus-per-trial, --gpus-per-trial) or add a "
                        "node type that big to the cluster config"), err
    assert "waiting" not in out and time.time() - started < 60  # at once, not after a wait
    assert files_under(store) == []


def test_runs_every_trial_once_when_a_worker_joins(empty_cluster, study, tmp_path):
    store = tmp_path / "store"
    started = time.time()
    p = sweeper_run(study, "--store", store, "--address", empty_cluster.address)
    out = Lines(p.stdout)
    waiting = out.wait_for("zero: waiting up to 900 s for a node with 1 CPU, 0 GPU", 180, alive=lambda: p.poll() is None)
    assert "autoscaler" in waiting
    time.sleep(max(3.0, 20 - (time.time() - started)))  # the sweep keeps waiting: nothing refuses it
    assert p.poll() is None and files_under(store) == []
    worker = empty_cluster.ask("add 2", "ADDED").split()[1]
    assert p.wait(timeout=600) == 0, "\n".join(out.lines) + p.stderr.read()
    joined = out.wait_for("zero: a node with 1 CPU, 0 GPU joined after", 5)
    assert int(joined.split("after ")[1].split()[0]) >= 2  # it waited for the node, at least the 3 s above
    trials = pd.read_parquet(store / "zero" / "trials")
    assert len(trials) == 3 and trials["trial_id"].nunique() == 3 and set(trials["status"]) == {"done"}
    assert set(trials["node_id"]) == {worker}  # never on the CPU-0 head
    tune_trial_dirs = [d for d in (store / "zero" / "_tune").glob("*/*") if d.is_dir()]
    assert sorted(d.name for d in tune_trial_dirs) == sorted(trials["trial_id"])  # each ran once
    curves = pd.read_parquet(store / "zero" / "curves")
    assert len(curves) == 3  # one epoch each, none run twice
    assert (store / "_sweeper.json").exists()
