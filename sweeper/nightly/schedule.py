"""`sweeper schedule`: a crontab entry that runs `sweeper nightly` every day at a given time.

    sweeper schedule studies/a.py --store /data/store --at 02:30            # print the line
    sweeper schedule studies/a.py --store /data/store --at 02:30 --install  # put it in the crontab
    sweeper schedule --store /data/store --remove                           # take it out again

The line is self-contained, as cron's bare environment requires: absolute paths everywhere, a
PATH that starts with this virtual environment's bin/, SWEEPER_DATA_ROOT and (without --address)
SWEEPER_LOCAL_CPUS when they are set, `cd` to the study's repository, and stdout and stderr
appended to a log (default `<store>/reports/logs/nightly.log`). It ends in a marker comment naming
the store, by which `--install` replaces and `--remove` finds it: one nightly entry per store.

The crontab is read and written with `crontab -l` and `crontab -`; `SWEEPER_CRONTAB` names
another command with the same interface (tests use a script that keeps the table in a file).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from sweeper.checks import user_path
from sweeper.errors import SweeperError

MARKER = "sweeper-nightly"
DEFAULT_LOG = ("reports", "logs", "nightly.log")
CRON_PATH = "/usr/local/bin:/usr/bin:/bin"


def parse_at(at: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", at or "")
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise SweeperError(f"expected a time of day HH:MM (00:00 to 23:59), got {at!r}", "--at")
    return int(m.group(1)), int(m.group(2))


def marker(store_uri: str) -> str:
    return f"# {MARKER} store={store_uri}"


def _cron_escape(text: str) -> str:
    return text.replace("%", r"\%")  # cron turns a bare % into a newline


def _repo_root(path: Path) -> Path:
    """The repository a study file lives in (the nearest folder with .git), else its folder."""
    for folder in [path.parent, *path.parent.parents]:
        if (folder / ".git").exists():
            return folder
    return path.parent


def _executable() -> list[str]:
    """This installation's `sweeper`, by absolute path (a venv's python is not resolved: the
    symlink is what selects the venv)."""
    bindir = Path(os.path.abspath(sys.executable)).parent
    script = bindir / "sweeper"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [os.path.abspath(sys.executable), "-m", "sweeper.cli"]


def log_path(args, store) -> Path:
    if args.log:
        return user_path(args.log, "--log").resolve()
    if store.local:
        return Path(store.path(*DEFAULT_LOG))
    raise SweeperError(f"the store {store.uri} is not a local folder: name a local log file with --log", "--log")


def cron_line(args) -> str:
    """The crontab line for `args` (the `schedule` command's arguments)."""
    from sweeper.store import Store

    hour, minute = parse_at(args.at)
    if not args.studies:
        raise SweeperError("name at least one study file to schedule", "schedule")
    studies = []
    for s in args.studies:
        path = user_path(s, "study file").resolve()
        if not path.is_file():
            raise SweeperError("no such study file", s)
        studies.append(path)
    from sweeper.cli import scale_arguments, scale_of
    from sweeper.data import normalize_root

    store = Store(args.store)
    log = log_path(args, store)
    cmd = [*_executable(), "nightly", *map(str, studies), "--store", store.uri]
    if args.address:
        cmd += ["--address", args.address]
    if args.data_root:
        cmd += ["--data-root", normalize_root(args.data_root)]  # a folder made absolute; a URI as given
    cmd += scale_arguments(scale_of(args))  # --quick as before; --scale cpu
    if args.rerun_stale:
        cmd.append("--rerun-stale")
    cmd += ["--tolerance", f"{args.tolerance:g}", "--keep-reports", str(args.keep_reports)]
    if args.wait_for_resources is not None:
        cmd += ["--wait-for-resources", f"{args.wait_for_resources:g}"]
    from sweeper import overrides

    if args.overrides or args.name:
        # refused tonight at 02:30 would be refused in a log nobody reads: check them now, on
        # every study, as the nightly will
        from sweeper.nightly.run import load_studies

        load_studies([str(p) for p in studies], scale_of(args), args.overrides, args.name)
    cmd += overrides.arguments(args)

    # No value may end the line (cron runs each line as a command): refuse control characters in
    # every part, whatever its source (an option, the environment, the venv's path).
    from sweeper.checks import check_text

    env = {"PATH": f"{Path(_executable()[0]).parent}:{CRON_PATH}"}
    if raw := os.environ.get("SWEEPER_DATA_ROOT"):
        check_text(raw, "SWEEPER_DATA_ROOT", "has")  # before it is read as a path
        env["SWEEPER_DATA_ROOT"] = normalize_root(None)  # no --data-root: the environment's, named so
    if not args.address:
        from sweeper.orchestration.connect import LOCAL_CPUS, local_cpus

        if (cpus := local_cpus()) is not None:  # the nightly's embedded cluster: as many CPUs as asked now
            env[LOCAL_CPUS] = str(cpus)

    for where, value in (("study file", studies[0]), ("--log", log), ("command", " ".join(cmd)),
                         *((k, v) for k, v in env.items())):
        check_text(value, where, "has")
    q = shlex.quote
    line = (
        f"{minute} {hour} * * * cd {q(str(_repo_root(studies[0])))} && mkdir -p {q(str(log.parent))} && "
        + " ".join(f"{k}={q(v)}" for k, v in env.items()) + " "
        + " ".join(q(c) for c in cmd)
        + f" >> {q(str(log))} 2>&1 {marker(store.uri)}"
    )
    return _cron_escape(line)


# -- the crontab -------------------------------------------------------------------------------
def _crontab() -> list[str]:
    custom = os.environ.get("SWEEPER_CRONTAB")
    if custom:
        return shlex.split(custom)
    found = shutil.which("crontab")
    if not found:
        raise SweeperError("no `crontab` command on this machine: install cron, or add the line from "
                           "`sweeper schedule ... --print` to your scheduler", "schedule")
    return [found]


def read_crontab() -> list[str]:
    cmd = _crontab()
    try:
        r = subprocess.run([*cmd, "-l"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise SweeperError(f"cannot run {cmd[0]}: {e}", "schedule") from None
    if r.returncode != 0:
        if "no crontab" in r.stderr.lower():
            return []
        raise SweeperError(f"`crontab -l` failed: {(r.stderr.strip().splitlines() or ['exit %d' % r.returncode])[0]}",
                           "schedule")
    return r.stdout.splitlines()


def write_crontab(lines: list[str]) -> None:
    cmd = _crontab()
    text = "".join(line + "\n" for line in lines)
    try:
        r = subprocess.run([*cmd, "-"], input=text, capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise SweeperError(f"cannot run {cmd[0]}: {e}", "schedule") from None
    if r.returncode != 0:
        raise SweeperError(f"`crontab -` refused the table: {(r.stderr.strip().splitlines() or ['exit %d' % r.returncode])[0]}",
                           "schedule")


def _ours(line: str, store_uri: str) -> bool:
    return line.rstrip().endswith(_cron_escape(marker(store_uri)))


def install(line: str, store_uri: str) -> tuple[int, list[str]]:
    """Put `line` in the crontab, replacing this store's earlier entry. Returns (replaced, table)."""
    current = read_crontab()
    kept = [l for l in current if not _ours(l, store_uri)]
    table = kept + [line]
    write_crontab(table)
    return len(current) - len(kept), table


def remove(store_uri: str) -> int:
    """Take this store's entry out of the crontab; returns how many lines went."""
    current = read_crontab()
    kept = [l for l in current if not _ours(l, store_uri)]
    if len(kept) != len(current):
        write_crontab(kept)
    return len(current) - len(kept)


# -- command line --------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    from sweeper.nightly.cli import add_nightly_options

    p = subparsers.add_parser(
        "schedule", help="print, install or remove a daily crontab entry that runs `sweeper nightly`",
        description="A crontab line running `sweeper nightly` daily at --at, with absolute paths, this venv's "
                    "PATH and a log; --install puts it in your crontab (replacing this store's entry), "
                    "--remove takes it out.",
    )
    add_nightly_options(p, studies_required=False)
    p.add_argument("--at", default=None, help="time of day, HH:MM in the machine's local time (cron's clock)")
    p.add_argument("--log", default=None, help="log file, appended to (default: <store>/reports/logs/nightly.log)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--print", dest="action", action="store_const", const="print", help="print the line (default)")
    action.add_argument("--install", dest="action", action="store_const", const="install", help="add it to the crontab")
    action.add_argument("--remove", dest="action", action="store_const", const="remove",
                        help="remove this store's entry from the crontab")
    p.set_defaults(fn=cmd_schedule, action="print")


def cmd_schedule(args) -> int:
    from sweeper.store import Store

    store_uri = Store(args.store).uri
    if args.action == "remove":
        n = remove(store_uri)
        print(f"removed the nightly entry for {store_uri} from the crontab" if n
              else f"no nightly entry for {store_uri} in the crontab; nothing removed")
        return 0
    if args.at is None:
        raise SweeperError("the time of day to run at is required, e.g. --at 02:30", "--at")
    line = cron_line(args)
    if args.action == "print":
        print(line)
        return 0
    log = log_path(args, Store(args.store))
    log.parent.mkdir(parents=True, exist_ok=True)
    replaced, _ = install(line, store_uri)
    print(f"{'replaced' if replaced else 'installed'} the nightly entry for {store_uri}: daily at {args.at}, "
          f"log {log}")
    print(line)
    return 0
