"""Shared fixtures: one local Ray cluster per test session, small stores in tmp folders."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

# A fresh local cluster turns token auth on and writes ~/.ray/auth_token; tests need neither.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYTHONHASHSEED", "0")
# Every embedded cluster a test's `sweeper` starts offers one CPU, as the shared one below does: its
# trials then run one at a time in one reused process instead of each starting an interpreter that
# imports PyTorch and Ray Tune (about 6 s of CPU apiece). The suite's two workers already keep both
# cores busy, so running a sweep's trials side by side saved no time, only cost CPU. A test that
# gives `sweeper` an environment of its own (test_run's CLI run, the README's commands) gets the
# default: all of the machine's CPUs, trials side by side.
os.environ.setdefault("SWEEPER_LOCAL_CPUS", "1")
# Credentials for the S3 test server (moto accepts any). Set before any Ray cluster starts, so
# every worker process inherits them, as nodes of a real cluster get theirs from the environment.
for _key, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                     ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
    os.environ.setdefault(_key, _value)

# Under pytest-xdist (`pytest -q` runs two workers: pyproject.toml's addopts) each worker keeps its
# Ray clusters' sessions, sockets and `ray_current_cluster` (what `--address auto` reads) in a folder
# of its own, so that one worker's `auto` never finds the other's cluster. Set before Ray is imported;
# every subprocess a test starts (`sweeper`, `ray start`) inherits it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), f"sweeper-{os.environ['PYTEST_XDIST_WORKER']}"))
    os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)

REPO = Path(__file__).resolve().parents[1]
CIFAR_ROOT = REPO.parent / "shared" / "data" / "cifar10"

# The files that take longest (each starts clusters, nodes or `sweeper` processes), longest first.
# pytest-xdist hands a worker a whole file at a time, in collection order (pyproject.toml's addopts
# turn off its own order, by number of tests, which put these last): started first, they leave the
# many short files to even out the two workers' ends, instead of one worker running a minute-long
# file alone at the end. A file left out of the list only runs later; nothing else depends on it.
LONGEST_FIRST = ("test_s3.py", "test_compact.py", "test_slurm.py", "test_reuse.py", "test_faults.py",
                 "test_auth.py", "test_bench.py", "test_multinode.py", "test_scale_from_zero.py",
                 "test_trackers.py", "test_run.py", "test_remote_data.py", "test_progress.py",
                 "test_reliability_signals.py", "test_frankle_figures.py", "test_nightly.py", "test_version.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def sweeper_in_process(*args, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`sweeper ARGS` (in `cwd`) run in this process by `sweeper.cli.main`, what the console script
    calls, with its exit status, stdout and stderr as a subprocess would give them. For commands
    whose behaviour a test checks (output, exit status, refusals): a new interpreter would import
    torch for each call, about 3 s apiece. The installed command itself runs where being a process
    matters (signals, kills, a missing package, clusters) and in the README's commands."""
    from sweeper.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own exits (--help)
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(["sweeper", *argv], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)  # two cores: tests must not oversubscribe them


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster shared by every test that needs one (one CPU: see SWEEPER_LOCAL_CPUS
    above); stopped at the end."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def cifar_root() -> Path:
    if not (CIFAR_ROOT / "cifar-10-batches-py" / "data_batch_1").exists():
        pytest.skip("../shared/data/cifar10 is not beside this checkout")
    return CIFAR_ROOT


class S3Server:
    """moto's standalone server: a real S3-protocol endpoint on a loopback port."""

    def __init__(self, server, endpoint: str):
        self.server, self.endpoint = server, endpoint

    def uri(self, bucket: str, prefix: str = "") -> str:
        """The pyarrow URI form that carries the endpoint (no environment needed on the nodes)."""
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http"

    def create_bucket(self, name: str) -> None:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True,
                               access_key="testing", secret_key="testing", region="us-east-1")
        fs.create_dir(name)


@pytest.fixture(scope="session")
def s3_server():
    """One S3 test server per session (moto's ThreadedMotoServer on a free loopback port)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(server, f"{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_store(s3_server, request) -> str:
    """A store URI in a fresh bucket of its own: s3://BUCKET/sweeps?endpoint_override=...&scheme=http."""
    import re
    import uuid

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    s3_server.create_bucket(bucket)
    return s3_server.uri(bucket, "sweeps")
