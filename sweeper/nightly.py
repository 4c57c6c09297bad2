"""`sweeper nightly`: an unattended, incremental run of several studies, then a dated report.

    sweeper nightly studies/a.py studies/b.py --store /data/store [--rerun-stale] [--tolerance 0.02]

One night, under a lock on the store (a second nightly on the same store exits at once, status 3):
1. each study in turn (Ray does not run two Tune experiments on one cluster at once) runs what the
   store lacks: missing trials, failed ones, and, under `--rerun-stale`, done trials whose
   `code_version` differs from the running code (the default keeps them: a result is a function
   of its spec, and code changes that alter results should change the spec);
2. its figures are redrawn (into `<store>/<study>/figures/`) and copied into the report's folder;
3. a snapshot of per-configuration means (seeds averaged) is compared with the previous report's,
   and the report (Markdown, HTML with the figures embedded, summary.json) is written under
   `<store>/reports/<date>/` (layout in `sweeper.report`); reports beyond `--keep-reports` go.

Exit status: 0 all well (a night with nothing to do included); 1 a trial failed or went missing, a
study could not run or a figure could not be drawn; 2 bad input (a study file, the store);
3 another nightly holds the lock; 4 a configuration regressed beyond the tolerance (and nothing
failed).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from sweeper import report as rp
from sweeper.errors import SweeperError
from sweeper.store import Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_REGRESSION = 0, 1, 2, 3, 4
LOCK = "nightly.lock"
_GUARD_STALE_SECONDS = 60.0  # a take-over guard this old was left by a process that died mid-way
# On an object store the lock is written, then read back now and again this much later: of two
# nightlies that both found no lock, the later write wins and the earlier writer sees it in time.
REMOTE_SETTLE_SECONDS = 2.0


# -- the lock ----------------------------------------------------------------------------------
class LockHeld(SweeperError):
    """Another nightly holds the store's lock (exit status 3)."""


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclasses.dataclass
class Holder:
    pid: int
    host: str
    started_at: str
    token: str
    proc_start: str | None = None
    command: str = ""

    @classmethod
    def me(cls) -> "Holder":
        return cls(os.getpid(), socket.gethostname(), rp.now_utc().isoformat(timespec="seconds"),
                   uuid.uuid4().hex, _proc_start(os.getpid()), " ".join(sys.argv))

    @classmethod
    def parse(cls, data: bytes | None) -> "Holder | None":
        try:
            d = json.loads((data or b"").decode())
            return cls(int(d["pid"]), str(d["host"]), str(d["started_at"]), str(d["token"]),
                       d.get("proc_start"), str(d.get("command", "")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def dumps(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), indent=1) + "\n").encode()

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_at}"

    def stale(self) -> bool:
        """Gone for sure: it ran on this host and that process no longer exists (or the pid now
        belongs to a process started later). A holder on another host is never judged stale."""
        if self.host != socket.gethostname():
            return False
        if not _pid_alive(self.pid):
            return True
        return bool(self.proc_start) and _proc_start(self.pid) not in (None, self.proc_start)


class NightlyLock:
    """`<store>/reports/nightly.lock`, created with O_CREAT|O_EXCL on a local store (atomic: of
    two nightlies exactly one creates it). On an object store, where pyarrow offers no atomic
    create, it is checked, written, and read back twice, REMOTE_SETTLE_SECONDS apart: two nightlies
    that both found no lock both write it, the later write wins, and the earlier writer sees the
    later one's lock on its second read and exits. Only a nightly that stalled for longer than the
    settle time between its look and its write could slip through: enough for a daily cron job.

    The file holds the holder's pid, host and start time. A lock whose holder ran on this host and
    is gone (killed -9, a reboot) is stale: the next nightly takes it over, saying so."""

    def __init__(self, store: Store, say: Callable[[str], None] = print):
        self.store, self.say = store, say
        self.path = store.path(rp.REPORTS, LOCK)
        self.shown = store.url(rp.REPORTS, LOCK)  # the path as the user names it (s3://...)
        self.me: Holder | None = None

    def __enter__(self) -> "NightlyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _held(self, holder: Holder | None) -> LockHeld:
        who = holder.describe() if holder else "holder unknown (the file is empty or unreadable)"
        return LockHeld(f"another nightly holds the lock {self.shown} ({who}); exiting. "
                        f"If no nightly runs, delete that file.", "nightly")

    def acquire(self) -> None:
        me = Holder.me()
        if not self.store.local:
            return self._acquire_remote(me)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is None:
                    if not self._old(self.path):  # being written right now: look again
                        time.sleep(0.05)
                        continue
                    raise self._held(None)
                if not holder.stale():
                    raise self._held(holder)
                self._take_over(holder)
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(me.dumps())
                f.flush()
                os.fsync(f.fileno())
            self.me = me
            return
        raise self._held(self._read_holder())

    def _read_holder(self) -> Holder | None:
        return Holder.parse(rp.read_bytes(self.store, self.path))

    @staticmethod
    def _old(path: str, seconds: float = 2.0) -> bool:
        try:
            return time.time() - os.stat(path).st_mtime > seconds
        except FileNotFoundError:
            return False

    def _take_over(self, stale: Holder) -> None:
        """Remove a stale lock, under a guard file so that of two nightlies seeing the same stale
        lock only one removes it (the other would otherwise remove the winner's new lock)."""
        guard = self.path + ".takeover"
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if self._old(guard, _GUARD_STALE_SECONDS):
                os.unlink(guard)
                return
            raise self._held(stale) from None
        os.close(fd)
        try:
            current = self._read_holder()
            if current is not None and current.token == stale.token:
                os.unlink(self.path)
                self.say(f"sweeper nightly: took over the stale lock {self.path} "
                         f"({stale.describe()}: no such process on this host)")
        finally:
            os.unlink(guard)

    def _acquire_remote(self, me: Holder) -> None:
        if self.store.exists(self.path):
            holder = self._read_holder()
            if holder is None or not holder.stale():
                raise self._held(holder)
            try:
                self.store.fs.delete_file(self.path)
            except FileNotFoundError:  # another nightly took it over first: the read-backs decide
                pass
            self.say(f"sweeper nightly: took over the stale lock {self.shown} "
                     f"({holder.describe()}: no such process on this host)")
        self.store.write_bytes(self.path, me.dumps())
        for pause in (0.0, REMOTE_SETTLE_SECONDS):
            time.sleep(pause)
            holder = self._read_holder()
            if holder is None or holder.token != me.token:  # another nightly wrote after us: it holds
                raise self._held(holder)
        self.me = me

    def release(self) -> None:
        if self.me is None:
            return
        holder = self._read_holder()
        if holder is not None and holder.token == self.me.token:  # never remove another's lock
            try:
                self.store.fs.delete_file(self.path)
            except (FileNotFoundError, OSError):
                pass
        self.me = None


# -- one study -----------------------------------------------------------------------------------
def _code_versions(store: Store, study: str) -> dict[str, Any]:
    if not store.files(study, "trials"):
        return {}
    rows = store.read(study, "trials", columns=["trial_id", "code_version"])
    return dict(zip(rows["trial_id"], rows["code_version"]))


def _run_study(study, path: str, store: Store, current: str, *, address, data_root, rerun_stale: bool,
               say, wait_for_resources: float | None = None) -> rp.StudyNight:
    from sweeper.runner import run_study

    night = rp.StudyNight(study=study.name, file=path, experiment=study.experiment, stale_rerun=rerun_stale)
    started = time.perf_counter()
    try:
        specs = study.specs()
        plan = {s.trial_id for s in specs}
        before = store.trial_status(study.name)
        versions = _code_versions(store, study.name)
        night.planned = len(plan)
        night.new = len(plan - before.done - set(before.failed))
        night.retried = len(plan & set(before.failed))
        night.stale = sorted(t for t in plan & before.done if versions.get(t) != current)
        rerun = set(night.stale) if rerun_stale else set()
        if night.stale:
            verb = "rerunning" if rerun_stale else "keeping"
            say(f"{study.name}: {len(night.stale)} trials done under another code version; {verb} them "
                f"(current {current})")
        summary = run_study(study, store, address=address, data_root=data_root, rerun=rerun, say=say,
                            wait_for_resources=wait_for_resources)
        night.skipped, night.ran, night.done = summary.skipped, summary.ran, summary.done
        night.failed, night.missing = dict(summary.failed), summary.missing
    except KeyboardInterrupt:
        raise
    except SweeperError as e:
        night.error = str(e)
    except Exception as e:  # noqa: BLE001 - one broken study must not cost the others their night
        night.error = f"{type(e).__name__}: {e}"
        say("".join(traceback.format_exception(e)).rstrip())
    if night.error:
        say(f"{study.name}: could not run: {night.error}")
    night.seconds = time.perf_counter() - started
    return night


def _snapshot(study, store: Store) -> Any:
    """Tonight's per-configuration means for the study's current plan."""
    specs = study.specs()
    metric, _ = rp.metric_of(study.experiment)
    fields = [f for f in study.spec_type.field_types() if f != "seed"]
    configs: dict[str, dict] = {}
    members: dict[str, list[str]] = {}
    for spec in specs:
        row = spec.to_row()
        config = {f: row[f] for f in fields}
        key = rp.config_key(config)
        configs.setdefault(key, config)
        members.setdefault(key, []).append(spec.trial_id)
    varying = [f for f in fields if len({json.dumps(c[f], default=str) for c in configs.values()}) > 1]
    labels = {}
    for key, config in configs.items():
        spec = next(s for s in specs if s.trial_id == members[key][0])
        model = getattr(spec, "model", None)
        shown = [f for f in varying if not (model and f in ("family", "depth", "width"))]
        text = " ".join(f"{f}={config[f]}" for f in shown)
        labels[key] = " ".join(p for p in (model, text) if p) or study.name
    trials = store.read(study.name, "trials") if store.files(study.name, "trials") else pd.DataFrame()
    return rp.snapshot_rows(study.name, metric, configs, labels, members, trials)


def _draw(study, store: Store, name: str, night: rp.StudyNight) -> None:
    """Redraw the study's figures into the store and keep a copy of each PNG with the report."""
    from sweeper.analysis.draw import draw_study

    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = None if store.local else Path(tmp)
            drawn = draw_study(store, study.name, out=out, names=study.figures or None)
            for key, files in sorted(drawn.written.items()):
                figure = key.split("/", 1)[1]
                for f in files:
                    if not store.local:  # object store: upload what was drawn aside
                        store.write_bytes(store.path(study.name, "figures", f.name), f.read_bytes())
                    if f.suffix == ".png":
                        data = f.read_bytes()
                        store.write_bytes(rp.figure_png_path(store, name, study.name, figure), data)
                        night.figures[figure] = data
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - reported, and the night counts as failed
        night.figure_errors["figures"] = f"{type(e).__name__}: {e}"


# -- the night -----------------------------------------------------------------------------------
@dataclasses.dataclass
class NightResult:
    exit_code: int
    report: str | None  # the report's folder in the store
    nights: list[rp.StudyNight]


def run_nightly(
    study_paths: list[str],
    store_uri: str,
    *,
    address: str | None = None,
    data_root: str | None = None,
    quick: bool = False,
    rerun_stale: bool = False,
    tolerance: float = 0.02,
    keep_reports: int = 30,
    say: Callable[[str], None] = print,
    wait_for_resources: float | None = None,
) -> NightResult:
    """One nightly: run, redraw, compare, report. Raises LockHeld when another nightly runs and
    SweeperError for bad input; trial failures and regressions are in the result's exit code."""
    from sweeper.version import code_version

    started = rp.now_utc()
    t0 = time.perf_counter()
    from sweeper.checks import OPTION_RANGES

    OPTION_RANGES["--tolerance"].check(tolerance, "--tolerance")  # NaN would flag no regression, ever
    store = Store(store_uri)
    store.ensure_writable(marker=False)
    studies = _load(study_paths, quick, data_root)  # refused before the store sees a write
    store.write_marker()
    with NightlyLock(store, say):  # first, so that a second nightly exits at once
        say(f"== sweeper nightly {started.isoformat(timespec='seconds')} on {socket.gethostname()}: "
            f"{len(study_paths)} stud{'y' if len(study_paths) == 1 else 'ies'} -> {store.uri}")
        current = code_version()
        nights = []
        for path, study in zip(study_paths, studies):
            night = _run_study(study, str(Path(path).resolve()), store, current, address=address,
                               data_root=data_root, rerun_stale=rerun_stale, say=say,
                               wait_for_resources=wait_for_resources)
            nights.append(night)
        name = rp.new_report_name(store, started)
        previous = rp.previous_snapshots(store, [s.name for s in studies], before=name)
        snapshots = []
        for study, night in zip(studies, nights):
            _draw(study, store, name, night)
            try:
                night.snapshot = _snapshot(study, store)
            except Exception as e:  # noqa: BLE001
                night.error = night.error or f"snapshot: {type(e).__name__}: {e}"
                continue
            snapshots.append(night.snapshot)
            night.comparison = rp.compare(previous.get(study.name), night.snapshot, tolerance,
                                          rp.metric_of(study.experiment)[1])
        failures = any(n.failures for n in nights)
        regressions = any(n.comparison and n.comparison.regressions for n in nights)
        code = EXIT_FAILED if failures else EXIT_REGRESSION if regressions else EXIT_OK
        status = "failed" if failures else "regression" if regressions else "ok"
        meta = {
            "report": name, "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "seconds": time.perf_counter() - t0, "status": status, "exit_code": code,
            "code_version": current, "host": socket.gethostname(), "store": store.uri,
            "tolerance": tolerance, "rerun_stale": rerun_stale, "quick": quick,
            "command": " ".join(sys.argv),
        }
        blocks = rp.build_report(meta, nights, store, name)
        title = f"sweeper nightly {meta['started']}"
        rp.write_text(store, rp.report_path(store, name, "report.md"), rp.to_markdown(blocks))
        rp.write_text(store, rp.report_path(store, name, "report.html"), rp.to_html(blocks, title))
        rp.write_text(store, rp.report_path(store, name, rp.SUMMARY),
                      rp.as_json({**meta, "studies": [n.to_json() for n in nights]}))
        if snapshots:  # written last: a report without a snapshot is never compared against
            store.write_bytes(rp.report_path(store, name, rp.SNAPSHOT),
                              rp.snapshot_bytes(pd.concat(snapshots, ignore_index=True)))
        pruned = rp.prune(store, keep_reports, protect=name)
        if pruned:
            say(f"pruned {len(pruned)} old reports (keeping {keep_reports})")
        say(f"== nightly {status.upper()} (exit {code}) in {rp.fmt_seconds(time.perf_counter() - t0)}: "
            f"{rp.report_path(store, name, 'report.md')}")
        return NightResult(code, rp.report_path(store, name), nights)


def _load(paths: list[str], quick: bool, data_root: str | None) -> list:
    from sweeper.data import check_data
    from sweeper.study import load_study

    if not paths:
        raise SweeperError("name at least one study file", "nightly")
    studies = [load_study(p, quick=quick) for p in paths]
    seen: dict[str, str] = {}
    for path, study in zip(paths, studies):
        if study.name == rp.REPORTS:
            raise SweeperError(f"the study name {rp.REPORTS!r} is reserved for the nightly reports", path)
        if getattr(study, "search", None) is not None:
            raise SweeperError("nightly runs grid studies; an Optuna search is not incremental "
                               "(run it with `sweeper run`)", path)
        if study.name in seen:
            raise SweeperError(f"study name {study.name!r} is also {seen[study.name]}'s", path)
        seen[study.name] = path
        for dataset in {getattr(s, "dataset", None) for s in study.specs()} - {None}:
            try:
                check_data(dataset, data_root)
            except SweeperError as e:
                raise e.at(path) from None
    return studies


# -- command line --------------------------------------------------------------------------------
def add_nightly_options(p, studies_required: bool = True) -> None:
    """The options `nightly` takes, shared with `schedule` (which passes them on)."""
    p.add_argument("studies", nargs="+" if studies_required else "*", metavar="STUDY",
                   help="study files, run one after another")
    p.add_argument("--store", required=True, help="results store: a path or s3://, gs:// URI")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local one)")
    p.add_argument("--data-root", default=None, help="dataset root (or $SWEEPER_DATA_ROOT)")
    p.add_argument("--quick", action="store_true", help="the studies' CPU-sized variants")
    p.add_argument("--rerun-stale", action="store_true",
                   help="rerun done trials whose code_version differs from the running code (default: keep them)")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="flag a configuration whose mean test_acc fell by more than this (default: %(default)s)")
    p.add_argument("--keep-reports", type=int, default=30, help="reports to keep; older ones are deleted; 0 keeps all (default: %(default)s)")
    from sweeper.cli import add_wait_option

    add_wait_option(p)  # a study that gets no node in time is reported as not run; the night goes on


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "nightly", help="run studies incrementally under a lock and write a dated report",
        description="Run what the store lacks for each study (missing, failed, and with --rerun-stale stale "
                    "trials), redraw figures, and write a report under <store>/reports/. Exit status: 0 all "
                    "well; 1 failures; 2 bad input; 3 another nightly holds the lock; 4 a regression.",
    )
    add_nightly_options(p)
    p.set_defaults(fn=cmd_nightly)


def _on_sigterm(signum, frame):  # cron or systemd stopping us: unwind, so the lock is released
    raise KeyboardInterrupt


def cmd_nightly(args) -> int:
    from sweeper.data import normalize_root

    data_root = normalize_root(args.data_root)  # a path made absolute; an s3:// or gs:// URI as given
    try:
        previous, handled = signal.signal(signal.SIGTERM, _on_sigterm), True
    except ValueError:  # not the main thread (a notebook, a test runner's worker)
        previous, handled = None, False
    try:
        result = run_nightly(
            args.studies, args.store, address=args.address, data_root=data_root, quick=args.quick,
            rerun_stale=args.rerun_stale, tolerance=args.tolerance, keep_reports=args.keep_reports,
            say=lambda line: print(line, flush=True), wait_for_resources=args.wait_for_resources,
        )
    except LockHeld as e:
        print(f"sweeper: {e}", file=sys.stderr, flush=True)
        return EXIT_LOCKED
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return result.exit_code
