"""`sweeper report`'s page on one study: the plan, the status, the per-axis tables, the results per
configuration, every figure and the failed trials, as blocks (`sweeper.report.render`), and the
writing of the page: HTML with its figures embedded, or Markdown with its figures in a folder beside
it (`<name>_files/`), each written aside and renamed into place, so a reader never sees half a page."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from sweeper.errors import SweeperError
from sweeper.report.render import Block, Figure, results_blocks, to_html, to_markdown
from sweeper.report.study import Overview, axis_blocks, failed_blocks, status_blocks

FORMATS = {".html": "html", ".htm": "html", ".md": "markdown"}


def output_format(out: str | os.PathLike) -> str:
    """The page's format from --out's suffix; one line naming the valid ones otherwise."""
    path = Path(out)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SweeperError(f"unsupported suffix {path.suffix or '(none)'!r}; valid: {', '.join(FORMATS)}", "--out")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise SweeperError(f"no such folder {parent}", "--out")
    if path.is_dir():
        raise SweeperError(f"{path} is a folder", "--out")
    return fmt


def figures_folder(out: Path) -> Path:
    """Where a Markdown page's figures go: `<stem>_files/` beside it (as browsers save a page)."""
    return out.with_name(f"{out.stem}_files")


def plan_blocks(study, path: str | None, lines: list[str]) -> list[Block]:
    """What the study file would run: its axes, its recipe, its trial count and `plan`'s estimate."""
    if study is None:
        return [("h2", "Plan"), ("p", "No study file given: the study as the store has it. Name the study file "
                                      "instead of the study to see its plan and the trials still pending.")]
    items = [f"study file `{path}`, experiment `{study.experiment}`, {len(study.specs())} trials"]
    if study.description:
        items.append(study.description)
    for i, grid in enumerate(study.grids()):
        label = "axes" if len(study.grids()) == 1 else f"axes[{i}]"
        items += [f"{label}: `{name}` = {', '.join(map(str, values))}" for name, values in grid.items()]
    recipe = ", ".join(f"`{k}`={v}" for k, v in study.base_values().items())
    if recipe:
        items.append(f"recipe: {recipe}")
    return [("h2", "Plan"), ("ul", items + [line.strip() for line in lines])]


def page_blocks(ov: Overview, plan: list[Block], figures: dict[str, bytes], figure_notes: list[str],
                out: Path, fmt: str, store_url: str, when: str) -> list[Block]:
    blocks: list[Block] = [
        ("h1", f"Study {ov.study}"),
        ("p", f"Store `{store_url}`, experiment `{ov.experiment}`, metric `{ov.metric}` ({ov.mode} is better); "
              f"written {when}."),
        *plan, *status_blocks(ov), *axis_blocks(ov),
    ]
    if ov.snapshot is not None and len(ov.snapshot):
        blocks += [("h2", "Results per configuration"), *results_blocks(ov.snapshot, limit=200)]
    blocks.append(("h2", "Figures"))
    if figures:
        folder = figures_folder(out).name
        blocks.append(("images", [Figure(title=name, now_rel=f"{folder}/{name}.png" if fmt == "markdown" else None,
                                         now_png=png, before_rel=None, before_png=None, before_name=None)
                                  for name, png in figures.items()]))
    else:
        blocks.append(("p", "No figure could be drawn from this study's results yet."))
    if figure_notes:
        blocks.append(("ul", figure_notes))
    return blocks + failed_blocks(ov)


def write_page(blocks: list[Block], out: Path, fmt: str, title: str, figures: dict[str, bytes]) -> None:
    """Write the page (and a Markdown page's figures folder) aside, then rename into place."""
    out = Path(out)
    tag = uuid.uuid4().hex[:8]
    text = to_html(blocks, title) if fmt == "html" else to_markdown(blocks)
    if fmt == "markdown":
        folder = figures_folder(out)
        fresh = out.with_name(f".{folder.name}.{tag}.tmp")
        fresh.mkdir()
        try:
            for name, png in figures.items():
                (fresh / f"{name}.png").write_bytes(png)
            old = out.with_name(f".{folder.name}.{tag}.old")
            if folder.exists():
                folder.rename(old)  # a previous page's figures: replaced whole, never mixed
            fresh.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
    tmp = out.with_name(f".{out.name}.{tag}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
