"""`sweeper submit` against a real local head started with `ray start --head` (dashboard on
localhost), stopped by killing only the processes this test started."""
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_runs_the_sweep_as_a_job(tmp_path, ray_local):
    # ray_local on purpose: CI runs this beside the embedded cluster, which must not steal the agent
    # the head runs in the project's environment, as on a cluster set up by cluster.yaml
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    # Stopped below by SIGTERM to all its processes, a Ray 2.60 head would wait out a 30-s drain
    # (its raylet dead of the same signal) that has nothing to drain: stop at once, as `sweeper slurm` does.
    head_env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    gcs, dash, agent = free_port(), free_port(), free_port()
    # The session's embedded cluster (ray_local) already holds the agent's default port 52365; a
    # second head on that port gets no job agent and refuses every job, so give it its own.
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={agent}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=head_env, start_new_session=True,
    )
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 120
        while True:
            try:
                JobSubmissionClient(f"http://127.0.0.1:{dash}").list_jobs()
                break
            except Exception:
                assert time.time() < deadline and head.poll() is None, "the head did not come up"
                time.sleep(1)
        study = tmp_path / "job.py"
        study.write_text(textwrap.dedent("""
            from sweeper import Study
            study = Study(name="job", dataset="digits", axes={"trainable": ["bn", "output"]},
                          recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none"})
        """))
        store = tmp_path / "store"
        r = subprocess.run(
            [sys.executable, "-m", "sweeper.cli", "submit", str(study), "--address", f"http://127.0.0.1:{dash}",
             "--store", str(store)],
            capture_output=True, text=True, env=env, timeout=400,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "SUCCEEDED" in r.stdout and "2 ran and done" in r.stdout
        assert len(pd.read_parquet(store / "job" / "trials")) == 2
        # The log was followed (tail_job_logs): what was printed between the submission line and
        # the final status is the job's whole log, each line once, not re-sent or skipped.
        job_id = re.search(r"^submitted (\S+):", r.stdout, re.M).group(1)
        logs = JobSubmissionClient(f"http://127.0.0.1:{dash}").get_job_logs(job_id)
        followed = r.stdout.split("\n", 1)[1].rsplit(f"job {job_id}: SUCCEEDED", 1)[0]
        assert logs.count("ran and done") == 1 and followed == logs
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        time.sleep(1)
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the head's processes lingered
        except ProcessLookupError:
            pass


def test_submit_refuses_a_relative_store(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "submit", "studies/quickstart.py", "--address",
                        "http://127.0.0.1:9", "--store", "relative/store"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 2 and "--store: must be an absolute path or a URI" in r.stderr
