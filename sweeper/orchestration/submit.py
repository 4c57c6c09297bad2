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
    from sweeper.cli import add_scale_option

    add_scale_option(p)
    p.add_argument("--cpus-per-trial", type=float, default=None)
    p.add_argument("--gpus-per-trial", type=float, default=None)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    from sweeper.cli import add_log_option, add_reuse_option, add_wait_option

    add_wait_option(p)  # passed on to the job's `sweeper run` (default there: 900 s)
    add_reuse_option(p)  # passed on
    from sweeper.overrides import add_options

    add_options(p)  # checked here, passed on to the job's `sweeper run`
    add_log_option(p)  # passed on: the job's driver, on the head, writes them
    p.set_defaults(fn=cmd_submit)


def entrypoint(args, study_name: str) -> str:
    parts = ["python", "-m", "sweeper.cli", "run", study_name, "--address", "auto", "--store", args.store]
    if args.data_root:
        parts += ["--data-root", args.data_root]
    from sweeper.cli import scale_arguments, scale_of

    parts += scale_arguments(scale_of(args))
    for flag in ("cpus_per_trial", "gpus_per_trial", "wait_for_resources"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    for tracker in getattr(args, "log", None) or []:
        parts += ["--log", str(tracker)]
    if getattr(args, "no_reuse", False):
        parts.append("--no-reuse")
    from sweeper.overrides import arguments

    return shlex.join(parts + arguments(args))


def cmd_submit(args) -> int:
    from sweeper.cli import scale_of
    from sweeper.study import load_study

    study_path = Path(args.study).resolve()
    # refuse a bad study (or override) here, not on the cluster
    load_study(study_path, scale=scale_of(args), overrides=args.overrides, name=args.name)
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
    status = follow(client, job_id, sys.stdout)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def follow(client, job_id: str, out) -> str:
    """Write the job's log to `out` as it grows, each line once, and return the job's final status.

    Ray's `tail_job_logs` streams the log over a websocket, so each chunk comes once and nothing is
    downloaded twice (the loop it replaced fetched the whole log every second, a long sweep's log
    megabytes a second). What no library does for us: should the stream break before the job ends
    (a dashboard restart, a dropped connection), wait for the end and write only the part of the
    log not yet shown."""
    import asyncio

    shown = 0

    async def tail() -> None:
        nonlocal shown
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            shown += len(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as e:  # the stream broke (Ray raises RuntimeError for a closed socket)
        print(f"(log stream interrupted: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
              "waiting for the job to end)", file=sys.stderr)
    status = _status(client, job_id)
    while status not in TERMINAL:
        time.sleep(2.0)
        status = _status(client, job_id)
    rest = client.get_job_logs(job_id)[shown:]
    if rest:  # a chunk the broken stream never delivered (empty when the stream ran to the end)
        out.write(rest)
        out.flush()
    return status


def _status(client, job_id: str) -> str:
    return str(client.get_job_status(job_id)).split(".")[-1]
