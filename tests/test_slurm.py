"""`sweeper slurm`: the batch script it writes, and that script's Ray start sequence run for real on
this machine as SLURM would run it on a one-node allocation (no srun, no scontrol here).

Each run starts its own Ray head on free ports with a private --temp-dir (a short one: Ray's socket
paths must stay under 108 bytes), and the test checks that every process the run started is gone
afterwards, found by that folder in their command lines.
"""
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from sweeper import cli

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = """
from sweeper import Study
study = Study(name="tiny", dataset="digits", axes={"trainable": ["bn", "output"]},
              recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none", "lr": %(lr)r},
              quick={"recipe": {"epochs": 1}})
"""


def slurm(*argv, cwd=None, env=None):
    """`sweeper slurm ...` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sweeper.cli", "slurm", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=env or os.environ.copy(), timeout=120)


def sbatch_options(script: str) -> list[str]:
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


@pytest.fixture
def study(tmp_path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(TINY % {"lr": 0.1})
    return path


# -- the script, without running it ---------------------------------------------------------------
def test_script_parses_and_asks_slurm_for_what_the_options_say(study, tmp_path):
    token = tmp_path / "home" / ".ray" / "auth_token"
    r = slurm(study, "--nodes", 4, "--gpus-per-node", 8, "--cpus-per-node", 32, "--time", "1-12:00:00",
              "--store", "s3://bucket/sweeps", "--partition", "gpu", "--account", "lab-42", "--gpu-type", "a100",
              "--sbatch=--mem=200G", "--sbatch=--constraint=ib", "--setup", "module load cuda/12.4",
              "--log-dir", tmp_path / "logs", "--token-file", token,
              "--quick", "--data-root", "data", "--cpus-per-trial", 4, "--gpus-per-trial", 0.5, "--max-failures", 3,
              "--checkpoint-seconds", 60, "--no-figures", "--no-reuse", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script = r.stdout
    path = tmp_path / "job.sh"
    path.write_text(script)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert sbatch_options(script) == [
        "--job-name=sweeper-tiny-quick", "--nodes=4", "--ntasks-per-node=1", "--cpus-per-task=32",
        "--gpus-per-node=a100:8", "--time=1-12:00:00", "--partition=gpu", "--account=lab-42",
        f"--output={tmp_path / 'logs'}/%x-%j.out", "--mem=200G", "--constraint=ib",
    ]
    # every #SBATCH line comes before the first command, or sbatch ignores it
    first_command = next(i for i, line in enumerate(script.splitlines()) if line and not line.startswith("#"))
    assert max(i for i, line in enumerate(script.splitlines()) if line.startswith("#SBATCH")) < first_command
    assert (tmp_path / "logs").is_dir()  # sbatch does not create --output's folder
    # the sweep's options pass through, paths made absolute for the compute nodes
    assert f"STUDY={study}" in script
    assert "STORE=s3://bucket/sweeps" in script
    assert (f"RUN_ARGS=(--quick --data-root {tmp_path / 'data'} --cpus-per-trial 4 --gpus-per-trial 0.5 "
            "--max-failures 3 --checkpoint-seconds 60 --no-figures --no-reuse)") in script
    assert 'run sweeper run "$STUDY" --address "$SWEEPER_HEAD_ADDRESS" --store "$STORE" "${RUN_ARGS[@]}"' in script
    assert "module load cuda/12.4" in script
    assert f"export PATH={BIN}:$PATH" in script
    # Ray's pattern: the head here, the workers through srun, the same GPUs asked for by each step
    assert "ray start --head --block" in script
    assert 'srun --nodes=1 --ntasks=1 --cpus-per-task="$SWEEPER_CPUS" $GPU_STEP -w "$node"' in script
    assert "GPU_STEP=--gpus-per-node=a100:8" in script
    assert not re.search(r"^\s*ray stop", script, re.M)  # it would kill other jobs' Ray on the node
    # token authentication: a token file made here, private, named in the script
    assert f"export RAY_AUTH_TOKEN_PATH={token}" in script and "export RAY_AUTH_MODE=token" in script
    assert len(token.read_text()) == 64 and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert "created a Ray token" in r.stderr


def test_gres_form_and_cpu_only_nodes(study, tmp_path):
    r = slurm(study, "--nodes", 2, "--gpus-per-node", 2, "--cpus-per-node", 8, "--time", "00:30:00",
              "--store", tmp_path / "store", "--gres", "--auth", "disabled", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--gres=gpu:2" in sbatch_options(r.stdout) and "GPU_STEP=--gres=gpu:2" in r.stdout
    assert "export RAY_AUTH_MODE=disabled" in r.stdout and "export RAY_AUTH_TOKEN_PATH" not in r.stdout
    assert f"STORE={tmp_path / 'store'}" in r.stdout
    r = slurm(study, "--nodes", 1, "--gpus-per-node", 0, "--cpus-per-node", 8, "--time", "00:30:00",
              "--store", tmp_path / "store", "--auth", "disabled", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not [o for o in sbatch_options(r.stdout) if "gpu" in o] and "GPU_STEP=''" in r.stdout


GOOD = ["--nodes", "1", "--gpus-per-node", "0", "--cpus-per-node", "2", "--time", "00:10:00"]


@pytest.mark.parametrize("change, where", [
    ({"--time": "2h"}, "--time: expected HH:MM:SS"),
    ({"--time": "01:60:00"}, "--time: expected HH:MM:SS"),
    ({"--time": "00:00:00"}, "--time: must be longer"),
    ({"--nodes": "0"}, "--nodes: must be at least 1, got 0"),
    ({"--cpus-per-node": "0"}, "--cpus-per-node: must be at least 1"),
    ({"--gpus-per-node": "-1"}, "--gpus-per-node: must be at least 0"),
    ({"--partition": "gpu a100"}, "--partition: expected letters"),
    ({"--account": "lab\n#SBATCH --qos=high"}, "--account: has a control character"),  # refused for every command (issue 20)
    ({"--sbatch": "mem=64G"}, "--sbatch: expected one sbatch option"),
    ({"--cpus-per-trial": "4"}, "--cpus-per-trial: a trial asks for 4 CPUs but a node has 2"),
    ({"--gpus-per-trial": "0.5"}, "--gpus-per-trial: a trial asks for 0.5 GPUs but a node has 0"),
    ({"--gpu-type": "a100"}, "--gpu-type: names a GPU type but --gpus-per-node is 0"),
    ({"--max-failures": "-1"}, "--max-failures: must be at least 0"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(study, tmp_path, capsys, change, where):
    argv = dict(zip(GOOD[::2], GOOD[1::2]))
    argv.update(change)
    flat = [x for pair in argv.items() for x in pair]
    code = cli.main(["slurm", str(study), *flat, "--store", str(tmp_path / "store"),
                     "--log-dir", str(tmp_path / "logs"), "--token-file", str(tmp_path / "token")])
    err = capsys.readouterr().err
    assert code == 2 and where in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "token").exists()


def test_a_log_folder_with_spaces_is_refused(study, tmp_path, capsys):
    code = cli.main(["slurm", str(study), *GOOD, "--store", str(tmp_path / "s"), "--log-dir", str(tmp_path / "my logs")])
    assert code == 2 and "--log-dir: must not contain spaces" in capsys.readouterr().err
    assert not (tmp_path / "my logs").exists()


def test_bad_study_and_missing_sbatch_are_refused(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("study = Study(\n")
    code = cli.main(["slurm", str(broken), *GOOD, "--store", str(tmp_path / "s"), "--log-dir", str(tmp_path / "l")])
    err = capsys.readouterr().err
    assert code == 2 and "broken.py: does not parse" in err and not (tmp_path / "l").exists()

    good = tmp_path / "tiny.py"
    good.write_text(TINY % {"lr": 0.1})
    r = slurm(good, *GOOD, "--store", tmp_path / "s", "--log-dir", tmp_path / "l", "--submit",
              env={**os.environ, "PATH": str(tmp_path / "empty-bin")})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("sweeper: error: --submit: no `sbatch` on PATH: run this on a SLURM login node, "
                                "or --print the script")
    assert not (tmp_path / "l").exists()


def test_submit_writes_the_script_and_hands_it_to_sbatch(study, tmp_path):
    # A stand-in for sbatch (there is no SLURM here): it keeps what it was given.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'sbatch-args'}\necho 'Submitted batch job 4711'\n")
    sbatch.chmod(0o755)
    r = slurm(study, *GOOD, "--store", tmp_path / "s", "--log-dir", tmp_path / "logs", "--submit",
              "--auth", "disabled", env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Submitted batch job 4711")
    (written,) = (tmp_path / "logs").glob("sweeper-tiny-*.sbatch")
    assert (tmp_path / "sbatch-args").read_text().split() == [str(written)]
    assert "#SBATCH --job-name=sweeper-tiny" in written.read_text()


# -- the script, run as SLURM runs it on a one-node allocation -------------------------------------
def slurm_env(job_id: int, cpus: int, tmpdir: str) -> dict:
    """What the script sees: SLURM's variables for a one-node allocation, and no srun or scontrol."""
    return {
        **os.environ,
        "SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id), "SLURM_JOB_NAME": "sweeper-tiny",
        "SLURM_JOB_NODELIST": "node001", "SLURM_NODELIST": "node001", "SLURMD_NODENAME": "node001",
        "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_CPUS_ON_NODE": str(cpus), "SLURM_SUBMIT_DIR": os.getcwd(),
        "SWEEPER_RAY_TMPDIR": tmpdir,
        "PATH": "/usr/bin:/bin",  # the script puts the project's bin/ in front itself
        "PYTHONUNBUFFERED": "1",
    }


def ray_processes(tmpdir: str) -> list[str]:
    """Processes of the Ray this run started: all of them name its private temp dir."""
    out = subprocess.run(["pgrep", "-af", tmpdir], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture
def ray_tmpdir():
    path = tempfile.mkdtemp(prefix="sr", dir="/tmp")  # short: Ray's socket paths have a length limit
    yield path
    for line in ray_processes(path):  # only if a test failed half-way: stop exactly what it started
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["rm", "-rf", path, path + "-node002"])


def write_job(study: Path, tmp_path: Path, store: Path) -> Path:
    r = slurm(study, "--nodes", 1, "--gpus-per-node", 0, "--cpus-per-node", 2, "--time", "00:20:00",
              "--store", store, "--log-dir", tmp_path / "logs", "--token-file", tmp_path / "token",
              "--no-figures", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job = tmp_path / "job.sbatch"
    job.write_text(r.stdout)
    return job


def trial_files(store: Path) -> list[str]:
    folder = store / "tiny" / "trials"
    return sorted(p.name for p in folder.glob("*.parquet")) if folder.exists() else []


def assert_cleaned_up(tmpdir: str, out: str):
    deadline = time.time() + 10
    while ray_processes(tmpdir) and time.time() < deadline:
        time.sleep(0.5)
    assert not ray_processes(tmpdir), ray_processes(tmpdir)
    assert not os.path.exists(tmpdir)
    address = re.search(r"head node001 at (\S+),", out).group(1)
    # the head wrote its address into its own temp dir, not where `ray.init()` looks
    from ray._common.utils import get_ray_address_file

    current = Path(get_ray_address_file(None))
    assert not current.exists() or current.read_text().strip() != address


STAND_INS = {
    # scontrol: the allocation's node names
    "scontrol": """#!/bin/bash
[ "$1 $2" = "show hostnames" ] && printf 'node001\\nnode002\\n'
""",
    # srun: runs the step here, as node -w would, with that node's own /tmp for Ray
    "srun": """#!/bin/bash
echo "$@" >> "$SRUN_CALLS"
node=
while [ $# -gt 0 ]; do
  case $1 in -w) node=$2; shift 2 ;; --*) shift ;; *) break ;; esac
done
export SWEEPER_RAY_TMPDIR=$SWEEPER_RAY_TMPDIR-$node
exec "$@"
""",
}


def stand_ins(tmp_path: Path) -> Path:
    bindir = tmp_path / "slurm-bin"
    bindir.mkdir()
    for name, text in STAND_INS.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    return bindir


def test_time_limit_kill_then_resubmission_runs_only_the_missing_trials(study, tmp_path, ray_tmpdir):
    store = tmp_path / "store"
    job = write_job(study, tmp_path, store)
    # One node, one CPU: the trials run one after another, so the kill lands between them.
    first = subprocess.Popen(["bash", str(job)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=slurm_env(101, 1, ray_tmpdir), cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 300
    while not trial_files(store) and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert trial_files(store), "no trial finished before the deadline"
    os.killpg(first.pid, signal.SIGTERM)  # the time limit: SLURM sends SIGTERM to every process of the job
    killed = time.monotonic()
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 143, out
    # ... and SIGKILL after KillWait (30 s by default): the job must have stopped Ray by then. (Ray's
    # own SIGTERM drain took the whole 30 s here, its raylet having died of the same signal; and a
    # sweep whose second SIGTERM cut its Ray shutdown short waited 60 s at exit on the dead GCS.)
    assert time.monotonic() - killed < 30, out
    assert "signal received" in out
    assert re.search(r"the running step stopped in \d+ s", out), out  # each stop says how long it took
    assert_cleaned_up(ray_tmpdir, out)
    assert (tmp_path / "logs" / "101" / "ray-head-node001.log").exists()  # a log per node
    committed = trial_files(store)

    # Resubmitted (a new job id), it runs what the first job did not finish, to the end. This
    # allocation has two nodes: the multi-node path, with stand-ins for srun and scontrol that run
    # the worker's step on this machine (what SLURM itself does with a step, resource binding and
    # signal forwarding, is not tested here).
    env = {**slurm_env(102, 1, ray_tmpdir), "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_JOB_NODELIST": "node[001-002]", "PATH": f"{stand_ins(tmp_path)}:/usr/bin:/bin",
           "SRUN_CALLS": str(tmp_path / "srun-calls"),
           "SWEEPER_RAY_START_ARGS": "--object-store-memory=100000000"}  # two raylets on one small host
    second = subprocess.run(["bash", str(job)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "2 of 2 node(s) up" in out and "'CPU': 2.0" in out  # the worker joined with its CPU
    assert f"{2 - len(committed)} ran and done, 0 failed, 0 missing, {len(committed)} skipped" in out
    trials = pd.read_parquet(store / "tiny" / "trials")
    assert len(trials) == 2 and trials["trial_id"].is_unique and trials["status"].eq("done").all()
    calls = (tmp_path / "srun-calls").read_text()
    assert calls.startswith("--nodes=1 --ntasks=1 --cpus-per-task=1 -w node002 bash -c ")
    assert calls.count(" -w ") == 1  # one step, for the one other node
    assert (tmp_path / "logs" / "102" / "ray-worker-node002.log").exists()
    assert "job exits with status 0" in out
    assert_cleaned_up(ray_tmpdir, out)
    assert not os.path.exists(ray_tmpdir + "-node002")  # the worker removed its own temp dir


def test_a_failing_sweep_fails_the_job(tmp_path, ray_tmpdir):
    study = tmp_path / "inet.py"
    study.write_text(textwrap.dedent("""
        from sweeper import Study
        study = Study(name="inet", dataset="imagenet", axes={"trainable": ["bn"]},
                      recipe={"model": "resnet-8-4", "epochs": 1})
    """))
    (tmp_path / "empty").mkdir()
    r = slurm(study, *GOOD, "--store", tmp_path / "store", "--log-dir", tmp_path / "logs",
              "--token-file", tmp_path / "token", "--data-root", tmp_path / "empty", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job = tmp_path / "job.sbatch"
    job.write_text(r.stdout)
    run = subprocess.run(["bash", str(job)], capture_output=True, text=True, env=slurm_env(103, 2, ray_tmpdir),
                         cwd=tmp_path, timeout=400)
    out = run.stdout + run.stderr
    # `sweeper run` refuses (no ImageNet under --data-root: status 2) after Ray came up; the job
    # ends with that status, and the Ray it started is gone.
    assert run.returncode == 2, out
    assert "no ImageNet under" in out and "job exits with status 2" in out
    assert_cleaned_up(ray_tmpdir, out)


def test_the_script_refuses_to_run_outside_an_allocation_or_without_srun(study, tmp_path, ray_tmpdir):
    job = write_job(study, tmp_path, tmp_path / "store")
    env = slurm_env(104, 2, ray_tmpdir)
    del env["SLURM_JOB_ID"]
    r = subprocess.run(["bash", str(job)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "SLURM_JOB_ID is not set" in r.stderr
    env = {**slurm_env(105, 2, ray_tmpdir), "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_JOB_NODELIST": "node[001-002]"}
    r = subprocess.run(["bash", str(job)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "a 2-node job needs scontrol on PATH" in r.stderr
    assert not ray_processes(ray_tmpdir)


def test_node_helpers():
    from sweeper.slurm.nodes import free_ports, node_ip, wait_for_cluster

    ports = free_ports(4)
    assert len(set(ports)) == 4 and all(1024 < p < 65536 for p in ports)
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", node_ip())
    # nobody listens on a port just found free: the wait gives up (status 1) instead of hanging
    start = time.monotonic()
    assert wait_for_cluster(f"127.0.0.1:{free_ports(1)[0]}", 1, timeout=2) == 1
    assert time.monotonic() - start < 10
