"""Experiment trackers a sweep reports to (`--log tensorboard[=DIR]`, `--log mlflow[=URI]`,
`--log wandb[=PROJECT]`): what the user asked for, checked before anything runs, and where each
tracker writes when no place is named. Ray Tune's own logger callbacks do the writing
(sweeper.orchestration.trackers); this module imports neither Ray nor the trackers.

Where they write by default:
    tensorboard  <store>/<study>/tensorboard/<trial_id>/events.out.tfevents.*
    mlflow       sqlite:///<store>/<study>/mlruns/mlflow.db (MLflow 3 refuses its plain-file store),
                 experiment named after the study, one run per trial
    wandb        project = the study's name; files under <store>/<study>/wandb/; offline (nothing
                 leaves the machine; `wandb sync` uploads later) unless the user is logged in
                 (WANDB_API_KEY or `wandb login`) or sets WANDB_MODE
An object store (s3://, gs://) cannot hold a live SQLite file or an appended event file, so for one
these folders are local, `./trackers/<bucket>/<prefix>/<study>/...`, as figures are; the run says so.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from sweeper.checks import user_path
from sweeper.errors import SweeperError

# tracker -> (the module Tune's callback imports, the extra that installs it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboardX", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # what wandb accepts
# The folders they write inside a study of a local store are not tables: sweeper.store.NOT_TABLES.


@dataclass(frozen=True)
class Tracker:
    """One `--log` value: the tracker and where it writes (None: its default)."""

    kind: str
    target: str | None = None

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}={self.target}"


def parse_tracker(text: str) -> Tracker:
    """`KIND` or `KIND=TARGET`, as `--log` takes it; a bad value raises ValueError with the reason."""
    kind, _, target = text.partition("=")
    kind = kind.strip().lower()
    if kind not in TRACKERS:
        raise ValueError(f"unknown tracker {kind!r}; choose from {', '.join(TRACKERS)} (as KIND or KIND=TARGET)")
    target = target.strip() or None
    if kind == "tensorboard" and target and "://" in target:
        raise ValueError("tensorboard=DIR takes a local folder (TensorBoard's files of an object store "
                         "are written under ./trackers/ by default)")
    if target and (kind == "tensorboard" or (kind == "mlflow" and not _tracking_uri(target))):
        try:  # a folder: refused now, not once the sweep has begun
            user_path(target, "--log")
        except SweeperError as e:
            raise ValueError(e.message) from None
    return Tracker(kind, target)


def _tracking_uri(target: str) -> bool:
    """An MLflow target that is a tracking URI (a server, `sqlite:///...`, `databricks`), not a folder."""
    return "://" in target or target.startswith(("sqlite:", "databricks"))


def check_installed(trackers: list[Tracker]) -> None:
    """Every tracker's library is importable, or one line naming the extra that installs it."""
    for t in trackers:
        module, extra = TRACKERS[t.kind]
        if importlib.util.find_spec(module) is None:
            raise SweeperError(f"{t.kind} needs the {module} package: pip install 'sweeper[{extra}]'",
                               f"--log {t.kind}")
        mode = os.environ.get("WANDB_MODE")
        if t.kind == "wandb" and mode and mode not in WANDB_MODES:
            raise SweeperError(f"WANDB_MODE={mode!r} is no W&B mode; choose from {', '.join(WANDB_MODES)}",
                               "--log wandb")


def tracker_root(store, study: str) -> Path:
    """The local folder a study's trackers write under by default: the study's folder of a local
    store; for an object store ./trackers/<bucket>/<prefix>/<study> (absolute)."""
    if store.local:
        return Path(store.path(study))
    parts = [p for p in store.root.split("/") if p not in ("", ".", "..")]
    return Path("trackers", *parts, study).resolve()


def tensorboard_dir(tracker: Tracker, store, study: str) -> Path:
    return user_path(tracker.target, "--log").resolve() if tracker.target else tracker_root(store, study) / "tensorboard"


def mlflow_uri(tracker: Tracker, store, study: str) -> str:
    """A tracking URI: one given with a scheme is used as it is (a server, `sqlite:///...`,
    `databricks`); a plain path is a folder that gets an SQLite file `mlflow.db`."""
    if tracker.target and _tracking_uri(tracker.target):
        return tracker.target
    folder = user_path(tracker.target, "--log").resolve() if tracker.target else tracker_root(store, study) / "mlruns"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def mlflow_artifacts(tracker: Tracker, store, study: str) -> str | None:
    """Where a local MLflow store keeps artifacts: beside its database, not in the working folder."""
    uri = mlflow_uri(tracker, store, study)
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()


def wandb_dir(store, study: str) -> Path:
    folder = tracker_root(store, study)  # W&B adds its own `wandb/` folder inside
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wandb_mode() -> str | None:
    """W&B's mode for this sweep: the user's WANDB_MODE if set; else online when they are logged in
    (an API key in the environment or in ~/.netrc from `wandb login`), else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def where(trackers: list[Tracker], store, study: str) -> list[str]:
    """One line per tracker for the sweep's start: where to look."""
    lines = []
    for t in trackers:
        if t.kind == "tensorboard":
            lines.append(f"tensorboard: {tensorboard_dir(t, store, study)} (tensorboard --logdir ...)")
        elif t.kind == "mlflow":
            lines.append(f"mlflow: {mlflow_uri(t, store, study)} experiment {study!r} "
                         f"(mlflow ui --backend-store-uri ...)")
        else:
            mode = wandb_mode()
            lines.append(f"wandb: project {t.target or study!r}, {mode}, files under {wandb_dir(store, study) / 'wandb'}"
                         + (" (wandb sync to upload)" if mode == "offline" else ""))
    return lines
