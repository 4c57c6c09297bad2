"""The live view of a sweep on a terminal (`sweeper run --progress live`, the default on a TTY):
a bar of finished trials, the counts, elapsed time and an ETA, and a table of the running trials
with their epoch and last accuracy, redrawn by rich a few times a second from the `SweepState`
the progress callback keeps. Finished trials' lines print above it, as the line mode says them.

Off a terminal (CI, cron, `ray job` logs) a redrawn view is noise: the line mode says one line per
finished trial instead (progress.py)."""
from __future__ import annotations

import sys

from sweeper.orchestration.progress import SweepState


def clock(seconds: float | None) -> str:
    """1:02:03, 2:03 or '?' (no estimate yet)."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def choose(mode: str, stream=None) -> str:
    """`--progress auto|live|lines` to `live` or `lines`: auto is live on a terminal."""
    if mode != "auto":
        return mode
    stream = sys.stdout if stream is None else stream
    return "live" if getattr(stream, "isatty", lambda: False)() else "lines"


class LiveView:
    """Draws a `SweepState` live on a rich Console while a sweep runs (`with view:`)."""

    def __init__(self, title: str = "sweep", console=None, refresh_per_second: float = 4):
        from rich.console import Console

        self.title = title
        self.console = console or Console()
        self.refresh_per_second = refresh_per_second
        self.state: SweepState | None = None
        self._live = None

    def watch(self, state: SweepState) -> None:
        """The state to draw (the progress callback's)."""
        self.state = state

    def say(self, line: str) -> None:
        """A line above the live view (a finished trial, a note)."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def __enter__(self):
        from rich.live import Live

        self._live = Live(get_renderable=self.render, console=self.console,
                          refresh_per_second=self.refresh_per_second, transient=False)
        self._live.start()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.stop()  # draws the last state once more and leaves it on the screen
            self._live = None

    def render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        state = self.state
        if state is None:
            return Text(f"{self.title}: starting")
        total = state.total + state.skipped
        header = Table.grid(padding=(0, 1))
        header.add_row(
            Text(self.title, style="bold"),
            ProgressBar(total=max(total, 1), completed=state.finished + state.skipped, width=30),
            Text(f"{state.finished + state.skipped}/{total}"),
        )
        counts = (f"{state.done} done · {len(state.running)} running · {state.pending} pending · "
                  f"{state.failed} failed" + (f" · {state.skipped} skipped" if state.skipped else ""))
        timing = f"elapsed {clock(state.elapsed())} · ETA {clock(state.eta())}"
        best = f" · best {state.metric} {state.best[0]:.4f} ({state.best[1]})" if state.best else ""
        parts = [header, Text(counts), Text(timing + best)]
        if state.running:
            table = Table(box=None, padding=(0, 2), show_edge=False)
            for column in ("running trial", "epoch", state.metric, "for"):
                table.add_column(column, justify="left" if column == "running trial" else "right")
            for trial in sorted(state.running.values(), key=lambda r: r.started):
                epoch = f"{trial.epoch}/{trial.epochs}" if trial.epochs else (str(trial.epoch) if trial.epoch else "")
                value = "" if trial.value is None else f"{trial.value:.4f}"
                table.add_row(trial.label, epoch, value, clock(state.elapsed() - (trial.started - state.started)))
            parts.append(table)
        return Group(*parts)
