"""Where a search's Optuna study is kept: `<store>/<study>/optuna.journal`, an Optuna journal file
(JournalStorage with a JournalFileBackend), so that `optuna-dashboard <that file>` opens it and a
second `sweeper run` of the same search continues it.

Why a journal and not SQLite: the journal is an append-only text file guarded by Optuna's own lock
(a symlink, which works on NFS, where a shared store for a SLURM or Ray cluster often lives; SQLite
on NFS is known to corrupt), it needs no database driver on the driver, and optuna-dashboard opens
it by its path (`optuna-dashboard FILE` reads a journal; SQLite would need `sqlite:///FILE`).

An object store cannot hold a file that is appended to and locked. For an s3:// or gs:// store the
journal is kept locally, in `./optuna/<bucket>/<prefix>/<study>/optuna.journal` (beside the
`./figures/...` of the same store), and copied to `<store>/<study>/optuna.journal` after each run;
a run starts from the store's copy unless the local file already extends it (append-only: the
longer file that begins with the other is the newer). Two runs of the same search on one object
store at the same time would each upload their own journal: the last one wins (the trials
themselves are in the store either way). Through Ray Client (`--address ray://...`) Tune's driver
runs on the cluster's head, away from this machine's copy: there the study is not persisted.

Only the searcher in the driver writes the journal; workers never touch it.
"""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

JOURNAL = "optuna.journal"


@dataclasses.dataclass
class SearchStorage:
    path: Path  # the local journal file Optuna writes (and optuna-dashboard opens)
    copy: str | None  # an object store's copy, on the store's filesystem (None: `path` is in the store)
    url: str  # where the store keeps it, as a person reads it

    def storage(self):
        """The Optuna storage (opened anew: the object holds a file path, nothing open)."""
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(self.path)))

    @property
    def dashboard(self) -> str:
        return f"optuna-dashboard {shlex.quote(str(self.path))}"

    def describe(self) -> str:
        where = str(self.path) if self.copy is None else f"{self.path} (copied to {self.url})"
        return f"Optuna study in {where}; open it with: {self.dashboard}"


def local_copy(store, study: str) -> Path:
    """An object store's local journal: ./optuna/<bucket>/<prefix>/<study>/optuna.journal."""
    parts = [p for p in store.root.split("/") if p not in ("", ".", "..")]
    return Path("optuna", *parts, study, JOURNAL).resolve()


def search_storage(store, study: str) -> SearchStorage:
    """The study's journal, without touching anything."""
    if store.local:
        return SearchStorage(Path(store.path(study, JOURNAL)), None, store.url(study, JOURNAL))
    return SearchStorage(local_copy(store, study), store.path(study, JOURNAL), store.url(study, JOURNAL))


def open_storage(store, study: str) -> SearchStorage:
    """The study's journal, ready for Optuna: an object store's copy fetched to the local file
    unless that already holds it and more."""
    found = search_storage(store, study)
    if found.copy is None or not store.exists(found.copy):
        return found
    with store.fs.open_input_stream(found.copy) as f:
        remote = f.read()
    local = found.path.read_bytes() if found.path.is_file() else b""
    if not local.startswith(remote):
        found.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = found.path.with_name(f".{found.path.name}.tmp")
        tmp.write_bytes(remote)
        tmp.replace(found.path)
    return found


def save(store, found: SearchStorage) -> None:
    """Copy an object store's journal up after a run (a local store's is already in place)."""
    if found.copy is not None and found.path.is_file():
        store.write_bytes(found.copy, found.path.read_bytes())


def existing(store, study: str) -> SearchStorage | None:
    """The study's journal if the store has one (for `sweeper status`)."""
    found = search_storage(store, study)
    return found if store.exists(found.copy or str(found.path)) else None
