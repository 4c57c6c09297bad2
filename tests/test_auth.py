"""Ray's token authentication, as cluster.yaml turns it on (RAY_AUTH_MODE=token on every node, the
token in ~/.ray/auth_token): a real head started with `ray start --head` in token mode, on free
ports. A client without the token (or with another one) is refused in one line; `sweeper run` and
`sweeper submit` with the user's token run a sweep to done; a client with a token still reaches a
cluster without authentication.

The head is stopped by signalling the `ray start --block` process this module started, then
killing whatever process still works in this module's own folder: `ray stop` would stop every
Ray cluster on the host.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STUDY = textwrap.dedent("""
    from sweeper import Study

    study = Study(name="auth", dataset="digits", axes={"trainable": ["bn", "output"]},
                  recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none"})
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(home: Path, **extra) -> dict:
    """The environment of a user whose home is `home`: no RAY_AUTH_* of this test session's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, "HOME": str(home), "PATH": f"{BIN}:{env.get('PATH', '')}", **extra}


def processes_in(folder: Path) -> list[int]:
    """Processes whose working directory lies in `folder`: the head's, its workers' (they inherit
    it) and trials' (their trial folders are under the stores here)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                continue
            if cwd == folder or folder in cwd.parents:
                pids.append(int(entry.name))
    return pids


class Head:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"  # the user's home: ~/.ray/auth_token
        self.home.mkdir()
        (root / "run").mkdir()
        # the token, as cluster.yaml's users make it
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=base_env(self.home),
                       capture_output=True, check=True, timeout=120)
        self.token = (self.home / ".ray" / "auth_token").read_text().strip()
        assert len(self.token) >= 32
        self.gcs, self.dashboard = free_port(), free_port()
        ports = {"--port": self.gcs, "--dashboard-port": self.dashboard}
        for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                     "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
                     "--ray-client-server-port"):
            ports[flag] = free_port()
        self.log = open(root / "head.log", "w")
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--temp-dir={root / 't'}", *(f"{k}={v}" for k, v in ports.items())],
            env=base_env(self.home, RAY_AUTH_MODE="token"), cwd=root / "run", stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.address = f"{self._node_ip()}:{self.gcs}"
        deadline = time.time() + 180
        for host, port in (self.address.rsplit(":", 1), ("127.0.0.1", self.dashboard)):  # GCS, then dashboard
            while True:
                try:
                    with socket.create_connection((host, int(port)), timeout=2):
                        break
                except OSError:
                    assert time.time() < deadline and self.proc.poll() is None, (root / "head.log").read_text()[-3000:]
                    time.sleep(1)

    @staticmethod
    def _node_ip() -> str:
        from ray.util import get_node_ip_address

        return get_node_ip_address()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(3):  # what lingers: only processes working in this module's folder
            pids = processes_in(self.root)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        self.log.close()


@pytest.fixture(scope="module")
def head():
    root = Path(tempfile.mkdtemp(prefix="sweeper-auth-"))  # short: Ray's socket paths live under it
    h = None
    try:
        h = Head(root)
        yield h
    finally:
        if h is not None:
            h.stop()
        assert processes_in(root) == []
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def study(tmp_path) -> Path:
    path = tmp_path / "auth.py"
    path.write_text(STUDY)
    return path


def sweeper(*args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "sweeper.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


@pytest.mark.parametrize("case", ["no token", "another token", "mode disabled"])
def test_a_client_without_the_clusters_token_is_refused_in_one_line(head, study, tmp_path, case):
    home = tmp_path / "home"
    home.mkdir()
    extra = {}
    if case == "another token":
        extra["RAY_AUTH_TOKEN"] = "0" * 64
        why = "the token in RAY_AUTH_TOKEN is not the cluster's"
    elif case == "mode disabled":  # the token at hand, but token mode switched off by the user
        shutil.copytree(head.home / ".ray", home / ".ray")
        extra["RAY_AUTH_MODE"] = "disabled"
        why = "RAY_AUTH_MODE is disabled here (unset it, or set it to token)"
    else:
        why = "this client has no token"
    store = head.root / "stores" / case.replace(" ", "-")
    started = time.time()
    r = sweeper("run", study, "--store", store, "--address", head.address, "--no-figures",
                env=base_env(home, **extra), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"sweeper: error: --address: the Ray cluster at {head.address} requires its authentication "
                     f"token, and {why}; put the cluster's token in ~/.ray/auth_token or name its file in "
                     "RAY_AUTH_TOKEN_PATH (docs/cluster.md)"], r.stderr
    assert time.time() - started < 60  # not ray.init's 20 s of retries per attempt
    assert not store.exists() or not any(store.rglob("*"))
    assert head.token not in r.stdout + r.stderr


def test_run_with_the_users_token_runs_the_sweep_to_done(head, study):
    store = head.root / "stores" / "run"
    # the user's ~/.ray/auth_token and no RAY_AUTH_MODE: sweeper turns token mode on itself
    r = sweeper("run", study, "--store", store, "--address", head.address, "--no-figures", env=base_env(head.home))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 ran and done" in r.stdout
    trials = pd.read_parquet(store / "auth" / "trials")
    assert len(trials) == 2 and set(trials["status"]) == {"done"}
    assert head.token not in r.stdout + r.stderr
    for path in store.rglob("*"):  # the token is not written into the store
        if path.is_file():
            assert head.token.encode() not in path.read_bytes(), path


def test_submit_with_the_users_token_runs_the_sweep_as_a_job(head, study):
    """`sweeper submit` end to end, on the cluster cluster.yaml starts (with or without a token the
    path is the same: `use_auth_token` only adds the header, and the refusals above cover its absence)."""
    store = head.root / "stores" / "submit"
    address = f"http://127.0.0.1:{head.dashboard}"
    r = sweeper("submit", study, "--address", address, "--store", store, env=base_env(head.home))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SUCCEEDED" in r.stdout and "2 ran and done" in r.stdout
    assert len(pd.read_parquet(store / "auth" / "trials")) == 2
    # The log was followed (tail_job_logs): what was printed between the submission line and the
    # final status is the job's whole log, each line once, not re-sent or skipped.
    job_id = re.search(r"^submitted (\S+):", r.stdout, re.M).group(1)
    logs = subprocess.run([sys.executable, "-c", GET_JOB_LOGS, address, job_id], capture_output=True, text=True,
                          env=base_env(head.home, RAY_AUTH_MODE="token"), timeout=120, check=True).stdout
    followed = r.stdout.split("\n", 1)[1].rsplit(f"job {job_id}: SUCCEEDED", 1)[0]
    assert logs.count("ran and done") == 1 and followed == logs


GET_JOB_LOGS = ("import sys\nfrom ray.job_submission import JobSubmissionClient\n"
                "sys.stdout.write(JobSubmissionClient(sys.argv[1]).get_job_logs(sys.argv[2]))")  # as the token's user


def test_submit_without_the_token_is_refused_in_one_line(head, study, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    r = sweeper("submit", study, "--address", f"http://127.0.0.1:{head.dashboard}", "--store",
                head.root / "stores" / "refused", env=base_env(home), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"sweeper: error: --address: the Ray cluster at http://127.0.0.1:{head.dashboard} requires its "
                     "authentication token, and this client has no token; put the cluster's token in "
                     "~/.ray/auth_token or name its file in RAY_AUTH_TOKEN_PATH (docs/cluster.md)"], r.stderr


def test_a_client_with_a_token_still_joins_a_cluster_without_authentication(ray_local, head, tmp_path):
    """The session's own cluster runs without authentication: a user who has a token (every Ray
    2.60 user who ever started a local cluster has ~/.ray/auth_token) still reaches it."""
    address = ray_local.get_runtime_context().gcs_address
    probe = textwrap.dedent(f"""
        import os, ray
        from sweeper.orchestration.connect import connect
        connect({address!r})
        print(os.environ["RAY_AUTH_MODE"], ray.cluster_resources().get("CPU"))
        ray.shutdown()
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=base_env(head.home),
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["token", str(ray_local.cluster_resources()["CPU"])]  # the same cluster
