"""A local copy of the `bn` columns that the figures read again, written while the first pass over
an object store reads them.

Why: the γ figures pass over `bn` three times (sweeper.analysis.reduce). On local disk a pass is a
few seconds of decoding; on an object store every pass fetches the column chunks again over the
network: at 10,000 trials that was 4.1 GB for the figures, bound by bytes, not requests (issue 19).
The first pass that fetches `bn` reads every column the later ones do (`COLUMNS`: the first pass
proper, or on a compacted store, whose first pass comes from digests (sweeper.analysis.digest), the
percentiles' pass, widened to them), so it also writes them to an Arrow stream file in a temporary
folder, and the later passes read that. The figures then also all come
from one snapshot of the store, even when trials are committed between passes.

The file is uncompressed Arrow (28 bytes a row: 2.3 GB at 10,000 ResNet-218 trials) in the system's
temporary folder, deleted when the tables are closed. A spool that cannot be written (a full disk)
is dropped and the passes read the store as before.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

#: what the passes after the first read (the percentiles and histograms of γ, initial γ and β)
COLUMNS = ("trial_id", "gamma", "gamma_init", "beta")


class Spools:
    """The spools of one tables object: one per (table, trials) read, in a folder of their own."""

    def __init__(self, owner):
        self.folder: Path | None = None
        self.done: dict[tuple, Spool] = {}
        self._owner = weakref.ref(owner)
        self._cleanup, self._files = None, 0

    def _new_path(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="sweeper-spool-"))
            # deleted with the tables object at the latest (close() sooner)
            self._cleanup = weakref.finalize(self._owner(), shutil.rmtree, self.folder, True)
        self._files += 1
        return self.folder / f"{self._files}.arrows"

    def find(self, key: tuple, cols: Iterable[str]) -> Spool | None:
        """The finished spool of `key` that holds `cols`, if any."""
        spool = self.done.get(key)
        return spool if spool is not None and set(cols) <= set(spool.columns) else None

    def tee(self, key: tuple, cols: Iterable[str], batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """`batches` unchanged, their `COLUMNS` written to a spool of `key` on the way: kept only
        when every batch went through (a pass begun again writes a new one)."""
        keep = [c for c in COLUMNS if c in set(cols)]
        if key in self.done or len(keep) < len(COLUMNS):
            yield from batches
            return
        spool, whole = Spool(self._new_path(), keep), False
        try:
            for batch in batches:
                spool.write(batch)
                yield batch
            whole = True
        finally:  # a pass stopped part way (a file vanished: it starts again) leaves no spool
            if whole and spool.close():
                self.done[key] = spool
            elif not whole:
                spool.drop()

    def discard(self, key: tuple) -> None:
        """Forget (and delete) the spool of `key`: it turned out to hold only some of the trials."""
        spool = self.done.pop(key, None)
        if spool is not None:
            spool.drop()

    def close(self) -> None:
        self.done.clear()
        if self._cleanup is not None:
            self._cleanup()


class Spool:
    """One spooled read: an Arrow stream file of `columns` (each batch's dictionaries kept)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        self._writer, self._sink, self.failed = None, None, False

    def write(self, batch: pa.RecordBatch) -> None:
        if self.failed:
            return
        try:
            part = batch.select(self.columns)
            if self._writer is None:
                self._sink = pa.OSFile(str(self.path), "wb")
                self._writer = ipc.new_stream(self._sink, part.schema)
            self._writer.write_batch(part)
        except (OSError, pa.ArrowException) as e:
            warnings.warn(f"could not spool the bn columns to {self.path} ({e}); the store is read again instead")
            self.failed = True
            self.drop()

    def close(self) -> bool:
        """Whether the spool is whole and can be read."""
        if self.failed:
            return False
        try:
            if self._writer is not None:
                self._writer.close()
                self._sink.close()
        except (OSError, pa.ArrowException):
            self.drop()
            return False
        return True

    def drop(self) -> None:
        try:
            if self._sink is not None:
                self._sink.close()
            self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def batches(self, cols: list[str]) -> Iterator[pa.RecordBatch]:
        """The spooled batches, `cols` only. Read by plain file reads, not a memory map: mapped
        pages would count in the process's memory, gigabytes at 10,000 trials."""
        if not self.path.exists():  # nothing was read: no batch, no file
            return
        with pa.OSFile(str(self.path), "rb") as source:
            for batch in ipc.open_stream(source):
                yield batch.select(cols)
