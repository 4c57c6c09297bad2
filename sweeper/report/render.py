"""A report as a list of blocks, rendered twice: to Markdown (figures linked) and to
self-contained HTML (figures embedded), so the two always say the same thing. Nothing here knows
of nights or of the store: the nightly's report (`sweeper.report.night`) and any report on one
study build blocks and hand them to `to_markdown` and `to_html`."""
from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass
class Figure:
    """One figure of a study, tonight's beside the previous night's."""

    title: str
    now_rel: str | None  # path relative to the report folder
    now_png: bytes | None
    before_rel: str | None  # relative to the report folder (../<previous>/figures/...)
    before_png: bytes | None
    before_name: str | None
    same: bool = False  # byte-identical to the previous night's


Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("ul", [text]) | ("table", header, rows) | ("figures", [Figure])
#               | ("images", [Figure]): figures on their own (a report on one study), `now_*` each


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "figures":
            out.append("| previous night | tonight |")
            out.append("|---|---|")
            for fig in block[1]:
                before = (f"![{fig.title}, {fig.before_name}]({fig.before_rel})" if fig.before_rel
                          else "(none)")
                now = f"![{fig.title}, tonight]({fig.now_rel})" if fig.now_rel else "(not drawn)"
                note = " (unchanged)" if fig.same else ""
                out.append(f"| **{fig.title}**<br>{before} | **{fig.title}**{note}<br>{now} |")
            out.append("")
        elif kind == "images":
            for fig in block[1]:
                out += [f"**{fig.title}**", "", f"![{fig.title}]({fig.now_rel})" if fig.now_rel else "(not drawn)", ""]
    return "\n".join(out).rstrip() + "\n"


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f"<em>{html.escape(alt)}: none</em>"
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%}.figs td{width:50%}code{background:#f3f3f3;padding:0 .2em}"""


def to_html(blocks: list[Block], title: str) -> str:
    out = ["<!doctype html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif kind == "figures":
            out.append('<table class="figs"><tr><th>previous night</th><th>tonight</th></tr>')
            for fig in block[1]:
                note = " (unchanged)" if fig.same else ""
                before = _img(fig.before_png, f"{fig.title}, {fig.before_name or 'previous night'}")
                out.append(
                    f"<tr><td><b>{html.escape(fig.title)}</b> ({html.escape(fig.before_name or 'none')})<br>{before}</td>"
                    f"<td><b>{html.escape(fig.title)}</b>{note}<br>{_img(fig.now_png, fig.title + ', tonight')}</td></tr>"
                )
            out.append("</table>")
        elif kind == "images":
            for fig in block[1]:
                out.append(f"<figure><figcaption><b>{html.escape(fig.title)}</b></figcaption>"
                           f"{_img(fig.now_png, fig.title)}</figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then turn `code` and **bold** spans into HTML (the only inline markup reports use)."""
    parts = html.escape(text).split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)


def fmt_metric(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def png_digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def results_blocks(snapshot: pd.DataFrame, limit: int = 60, rest_in: str | None = None) -> list[Block]:
    """A study's results: its snapshot (`sweeper.report.snapshot`) as a table of per-configuration
    means over seeds, the first `limit` configurations; `rest_in` names where the rest are."""
    if snapshot is None or not len(snapshot):
        return []
    shown = snapshot.head(limit)
    metric = str(shown["metric"].iloc[0])
    blocks: list[Block] = [
        ("h3", f"Results ({metric}, mean over seeds)"),
        ("table", ["configuration", "mean", "std", "seeds", "code versions"],
         [[r.label, fmt_metric(r.mean), fmt_metric(r.std), r.n, r.code_versions] for r in shown.itertuples()]),
    ]
    if len(snapshot) > len(shown):
        where = f" (see {rest_in})" if rest_in else ""
        blocks.append(("p", f"... and {len(snapshot) - len(shown)} more configurations{where}."))
    return blocks
