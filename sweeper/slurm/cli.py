"""`sweeper slurm STUDY ...`: its flags, the checks that refuse bad input before anything is written,
the token file, and printing or submitting the script (the package's docstring tells the whole
story)."""
from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from sweeper.checks import user_path
from sweeper.errors import SweeperError
from sweeper.slurm.script import absolute_path, render

TIME_RE = re.compile(r"(?:(?P<days>\d+)-)?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2})")
NAME_RE = re.compile(r"[A-Za-z0-9_.,:+-]+")  # a partition, account, job or GPU type name
DEFAULT_TOKEN = Path("~/.ray/auth_token")  # Ray's own default (ray get-auth-token --generate)


def add_parser(sub) -> None:
    p = sub.add_parser("slurm", help="a SLURM batch script that starts Ray on its allocation and runs one sweep",
                       description="Print (or submit with sbatch) a batch script that starts a Ray cluster on a "
                                   "SLURM allocation and runs `sweeper run STUDY` on it. Resubmit it to resume.")
    p.add_argument("study")
    p.add_argument("--nodes", type=int, required=True, help="nodes in the allocation (the first is Ray's head)")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node (0 for CPU-only nodes)")
    p.add_argument("--cpus-per-node", type=int, required=True, help="CPUs per node, given to Ray for trials")
    p.add_argument("--time", required=True, help="time limit HH:MM:SS (or D-HH:MM:SS)")
    p.add_argument("--store", required=True, help="results store every node reaches: a shared path, s3://, gs://")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--job-name", default=None, help="default: sweeper-<study name>")
    p.add_argument("--gpu-type", default=None, help="a GPU model your site names, e.g. a100 (gpu:a100:G)")
    p.add_argument("--gres", action="store_true", help="request GPUs as --gres=gpu:G instead of --gpus-per-node=G")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="another #SBATCH line, e.g. --sbatch=--mem=64G (repeatable)")
    p.add_argument("--setup", action="append", default=[], metavar="COMMAND",
                   help="a shell line run first on the head, e.g. 'module load cuda' (repeatable); the "
                        "environment it sets reaches the workers through srun")
    p.add_argument("--log-dir", default="slurm-logs", help="job output and per-node Ray logs (default: %(default)s)")
    p.add_argument("--auth", choices=["token", "disabled"], default="token",
                   help="Ray token authentication (default: %(default)s)")
    p.add_argument("--token-file", default=str(DEFAULT_TOKEN),
                   help="the token, on a path every node reads (default: %(default)s, created when missing)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print", dest="submit", action="store_false", help="print the script (the default)")
    mode.add_argument("--submit", dest="submit", action="store_true",
                      help="write the script into --log-dir and submit it with sbatch")
    run = p.add_argument_group("passed to `sweeper run`")
    run.add_argument("--quick", action="store_true")
    from sweeper.cli import add_scale_option

    add_scale_option(run)
    run.add_argument("--data-root", default=None)
    run.add_argument("--cpus-per-trial", type=float, default=None)
    run.add_argument("--gpus-per-trial", type=float, default=None)
    run.add_argument("--max-failures", type=int, default=None)
    run.add_argument("--checkpoint-seconds", type=float, default=None)
    run.add_argument("--no-figures", action="store_true")
    from sweeper.cli import add_reuse_option

    add_reuse_option(run)
    from sweeper.overrides import add_options

    add_options(run)
    p.set_defaults(fn=cmd_slurm, submit=False)


# -- checks ---------------------------------------------------------------------------------------
def parse_time(value: str) -> str:
    """SLURM's time limit in the forms this command accepts, HH:MM:SS or D-HH:MM:SS."""
    m = TIME_RE.fullmatch(value or "")
    if not m or int(m["m"]) > 59 or int(m["s"]) > 59:
        raise SweeperError(f"expected HH:MM:SS or D-HH:MM:SS, got {value!r}", "--time")
    if int(m["days"] or 0) + int(m["h"]) + int(m["m"]) + int(m["s"]) == 0:
        raise SweeperError("must be longer than 00:00:00", "--time")
    return value


def _name(value: str | None, flag: str) -> str | None:
    # These land on #SBATCH lines: a space or newline would end the option or start a command.
    if value is not None and not NAME_RE.fullmatch(value):
        raise SweeperError(f"expected letters, digits and _ . , : + - only, got {value!r}", flag)
    return value


def _check(args) -> None:
    for flag, value, least in (("--nodes", args.nodes, 1), ("--cpus-per-node", args.cpus_per_node, 1),
                               ("--gpus-per-node", args.gpus_per_node, 0)):
        if value < least:
            raise SweeperError(f"must be at least {least}, got {value}", flag)
    parse_time(args.time)
    for flag in ("partition", "account", "job_name", "gpu_type"):
        _name(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.gpu_type and not args.gpus_per_node:
        raise SweeperError("names a GPU type but --gpus-per-node is 0", "--gpu-type")
    for option in args.sbatch:
        if not option.startswith("--") or any(c in option for c in "\n\r"):
            raise SweeperError(f"expected one sbatch option such as --mem=64G, got {option!r}", "--sbatch")
    for line in args.setup:
        if any(c in line for c in "\n\r"):
            raise SweeperError("one shell line per --setup (repeat the flag for more)", "--setup")
    if re.search(r"\s", log_dir := absolute_path(args.log_dir, "--log-dir")):  # on the #SBATCH --output line, which a space ends
        raise SweeperError(f"must not contain spaces, got {log_dir!r}", "--log-dir")
    if args.max_failures is not None and args.max_failures < 0:
        raise SweeperError(f"must be at least 0, got {args.max_failures}", "--max-failures")


def _check_trial_fits(study, args) -> None:
    """A trial that asks for more than one node has would wait in the queue and then forever."""
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else float(study.resources.get("cpu", 1))
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else float(study.resources.get("gpu", 0))
    if cpus > args.cpus_per_node:
        raise SweeperError(f"a trial asks for {cpus:g} CPUs but a node has {args.cpus_per_node}",
                           "--cpus-per-trial" if args.cpus_per_trial is not None else "--cpus-per-node")
    if gpus > args.gpus_per_node:
        raise SweeperError(f"a trial asks for {gpus:g} GPUs but a node has {args.gpus_per_node}",
                           "--gpus-per-trial" if args.gpus_per_trial is not None else "--gpus-per-node")


def ensure_token(path: Path) -> bool:
    """Create Ray's token file (Ray's own format: 32 random bytes in hex) when it is missing, readable
    only by its owner. Returns True when it was created."""
    if path.exists():
        if not path.is_file() or not path.read_text().strip():
            raise SweeperError("exists but holds no token", "--token-file")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return True


# -- the command ----------------------------------------------------------------------------------
def cmd_slurm(args) -> int:
    from sweeper.cli import scale_of
    from sweeper.study import load_study

    _check(args)
    study_path = user_path(args.study, "study file").absolute()
    # refuse a bad study (or override) here, not after the queue
    study = load_study(study_path, scale=scale_of(args), overrides=args.overrides, name=args.name)
    _check_trial_fits(study, args)
    sbatch = None
    if args.submit:
        sbatch = shutil.which("sbatch")
        if not sbatch:
            raise SweeperError("no `sbatch` on PATH: run this on a SLURM login node, or --print the script",
                               "--submit")
    job_name = _name(args.job_name or f"sweeper-{study.name}", "--job-name")
    log_dir = absolute_path(args.log_dir, "--log-dir")
    script = render(args, study_path, job_name, log_dir)

    # Nothing is written before every check has passed.
    token_file = user_path(args.token_file, "--token-file")
    if args.auth == "token" and ensure_token(token_file):
        print(f"sweeper: created a Ray token in {token_file} "
              "(every node must read this path)", file=sys.stderr)
    Path(log_dir).mkdir(parents=True, exist_ok=True)  # sbatch needs --output's folder to exist
    if not args.submit:
        sys.stdout.write(script)
        return 0
    path = Path(log_dir) / f"{job_name}-{dt.datetime.now():%Y%m%d-%H%M%S}.sbatch"
    path.write_text(script)
    r = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SweeperError(f"sbatch refused the job: {(r.stderr or r.stdout).strip().splitlines()[-1:]}", str(path))
    print(f"{r.stdout.strip()} ({path}; output in {log_dir})")
    return 0
