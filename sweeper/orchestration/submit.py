"""`sweeper submit`: run a sweep on a remote Ray cluster from a laptop, through Ray's job
submission API (needs `ray[default]`, installed with sweeper).

The job's driver runs on the cluster's head (`sweeper run STUDY --address auto ...`), so a closed
laptop does not stop the sweep; the study file's folder travels as the job's working directory.
The store and data root must be paths or URIs the cluster's nodes reach.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from sweeper.errors import SweeperError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def add_parser(sub) -> None:
    p = sub.add_parser("submit", help="submit `sweeper run` as a Ray job to a remote cluster")
    p.add_argument("study")
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265 "
                   "(after `ray dashboard cluster.yaml`)")
    p.add_argument("--store", required=True, help="a store every node reaches: s3://..., gs://... or a shared path")
    p.add_argument("--data-root", default=None, help="dataset root as the cluster sees it")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cpus-per-trial", type=float, default=None)
    p.add_argument("--gpus-per-trial", type=float, default=None)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    from sweeper.cli import add_log_option, add_wait_option

    add_wait_option(p)  # passed on to the job's `sweeper run` (default there: 900 s)
    add_log_option(p)  # passed on: the job's driver, on the head, writes them
    p.set_defaults(fn=cmd_submit)


def entrypoint(args, study_name: str) -> str:
    parts = ["python", "-m", "sweeper.cli", "run", study_name, "--address", "auto", "--store", args.store]
    if args.data_root:
        parts += ["--data-root", args.data_root]
    if args.quick:
        parts.append("--quick")
    for flag in ("cpus_per_trial", "gpus_per_trial", "wait_for_resources"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    for tracker in getattr(args, "log", None) or []:
        parts += ["--log", str(tracker)]
    return shlex.join(parts)


def cmd_submit(args) -> int:
    from sweeper.study import load_study

    study_path = Path(args.study).resolve()
    load_study(study_path, quick=args.quick)  # refuse a bad study here, not on the cluster
    if "://" not in args.store and not Path(args.store).is_absolute():
        raise SweeperError("must be an absolute path or a URI that every node of the cluster reaches", "--store")
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise SweeperError("needs ray[default]: pip install 'ray[default]'", "submit") from None
    from ray.exceptions import AuthenticationError

    from sweeper.orchestration.connect import token_refused, use_auth_token

    use_auth_token()  # the dashboard of a cluster with token authentication wants it too
    try:
        client = JobSubmissionClient(args.address)
    except AuthenticationError:
        raise token_refused(args.address) from None
    except Exception as e:
        raise SweeperError(f"no Ray dashboard answers at {args.address} ({type(e).__name__})", "--address") from None
    deadline = time.monotonic() + 240  # a loaded head can take minutes to start its agent
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint(args, study_path.name),
                runtime_env={"working_dir": str(study_path.parent)},
            )
            break
        except RuntimeError as e:
            # a head that has just started answers before its job agent is up: wait for it
            no_agent = "No available agent" in str(e)
            if not no_agent or time.monotonic() > deadline:
                hint = (" (the head's dashboard agent never came up: is its port, 52365 unless"
                        " --dashboard-agent-listen-port says otherwise, held by another Ray on that host?)"
                        if no_agent else "")
                raise SweeperError(f"the cluster refused the job: {str(e).splitlines()[0]}{hint}", "--address") from None
            time.sleep(2)
    print(f"submitted {job_id}: {entrypoint(args, study_path.name)}")
    if args.no_wait:
        return 0
    shown = 0
    status = None
    while status not in TERMINAL:
        time.sleep(1.0)
        status = str(client.get_job_status(job_id)).split(".")[-1]
        logs = client.get_job_logs(job_id)
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1
