"""The batch script `sweeper slurm` writes: template.sh (beside this file, shipped as package
data) with the job's values filled in. The template is a plain bash file a reader can open as it is."""
from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import sys
from importlib import resources
from pathlib import Path

from sweeper.checks import user_path

# Job exit status of the script itself, besides the sweep's own (0 done, 1 failed trials, 2 bad input).
EXIT_NO_CLUSTER = 3  # Ray did not come up on the allocation
EXIT_SIGNAL = 143  # cancelled or past its time limit (SIGTERM): resubmit to resume


def template() -> str:
    """template.sh, with its @PLACEHOLDERS@."""
    return resources.files(__package__).joinpath("template.sh").read_text()


def absolute_path(path: str, where: str) -> str:
    """Paths as the compute nodes see them: the job's working directory need not be this one."""
    return path if "://" in path else str(user_path(path, where).absolute())


def gpu_request(args) -> str | None:
    """How the job (and each worker's step) asks for its GPUs."""
    if not args.gpus_per_node:
        return None
    count = f"{args.gpu_type}:{args.gpus_per_node}" if args.gpu_type else str(args.gpus_per_node)
    return f"--gres=gpu:{count}" if args.gres else f"--gpus-per-node={count}"


def sbatch_lines(args, job_name: str, log_dir: str) -> list[str]:
    lines = [f"--job-name={job_name}", f"--nodes={args.nodes}",
             # one task per node: the batch step on the head, one `srun` step per worker node
             "--ntasks-per-node=1", f"--cpus-per-task={args.cpus_per_node}"]
    if gpu_request(args):
        lines.append(gpu_request(args))
    lines.append(f"--time={args.time}")
    if args.partition:
        lines.append(f"--partition={args.partition}")
    if args.account:
        lines.append(f"--account={args.account}")
    lines.append(f"--output={log_dir}/%x-%j.out")  # sbatch does not create folders: cmd_slurm does
    lines += args.sbatch
    return ["#SBATCH " + line for line in lines]


def run_arguments(args) -> list[str]:
    """The `sweeper run` options this command passes through."""
    out: list[str] = []
    from sweeper.cli import scale_arguments, scale_of

    out += scale_arguments(scale_of(args))  # --quick as before; --scale cpu
    if args.data_root:
        out += ["--data-root", absolute_path(args.data_root, "--data-root")]
    for flag in ("cpus_per_trial", "gpus_per_trial", "max_failures", "checkpoint_seconds"):
        value = getattr(args, flag)
        if value is not None:
            out += ["--" + flag.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    if args.no_figures:
        out.append("--no-figures")
    if getattr(args, "no_reuse", False):
        out.append("--no-reuse")
    from sweeper.overrides import arguments

    return out + arguments(args)  # each one array element of RUN_ARGS, quoted by `render`


def render(args, study_path: Path, job_name: str, log_dir: str) -> str:
    q = shlex.quote
    auth = ("export RAY_AUTH_MODE=token\n"
            f"export RAY_AUTH_TOKEN_PATH={q(absolute_path(args.token_file, '--token-file'))}"
            if args.auth == "token" else "export RAY_AUTH_MODE=disabled")
    gpu_step = gpu_request(args) or ""
    values = {
        "VERSION": _version(),
        "DATE": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "SBATCH": "\n".join(sbatch_lines(args, job_name, log_dir)),
        "BIN": q(str(Path(os.path.abspath(sys.executable)).parent)),
        "SETUP": "\n".join(args.setup) if args.setup else "# (none: --setup adds lines here)",
        "AUTH": auth,
        "STUDY": q(str(study_path)),
        "STORE": q(absolute_path(args.store, "--store")),
        "RUN_ARGS": " ".join(q(a) for a in run_arguments(args)),
        "CPUS": str(args.cpus_per_node),
        "GPUS": str(args.gpus_per_node),
        "GPU_STEP": q(gpu_step) if gpu_step else "''",
        "LOG_DIR": q(log_dir),
        "EXIT_NO_CLUSTER": str(EXIT_NO_CLUSTER),
        "EXIT_SIGNAL": str(EXIT_SIGNAL),
    }
    # One pass: a value (a --setup line, a path) is never searched for placeholders itself.
    return re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], template())


def _version() -> str:
    from sweeper.version import code_version

    return code_version()

