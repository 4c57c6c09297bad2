"""`sweeper report`: one study's page from a real store (digits trials, one diverged, one not run),
as HTML with embedded figures and as Markdown with its figures beside it; by study file and by name;
from an s3:// store; and bad input refused in one line with nothing written."""
from __future__ import annotations

import base64
import re
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from sweeper.cli import main
from sweeper.store import Store
from sweeper.study import load_study
from sweeper.trial import TrialContext, execute

STUDY = textwrap.dedent("""
    from sweeper import Study
    study = Study(
        name="rep",
        dataset="digits",
        axes={"weight_init": ["kaiming_normal", "normal(std=1e200)"], "trainable": ["bn", "output"], "seed": [0, 1]},
        recipe={"model": "resnet-8-4", "epochs": 1, "batch_size": 64, "augment": "none", "train_size": 200,
                "test_size": 100},
        measure=["bn"],
    )
""")


def fill(store: Store, study_file: Path) -> dict:
    """Run every trial of the study but the last one into `store` (no Ray: the trials themselves)."""
    study = load_study(study_file)
    specs = study.specs()
    ctx = TrialContext(study=study.name, store=store)
    rows = [execute(spec, ctx, threads=1) for spec in specs[:-1]]
    return {"specs": specs, "rows": pd.DataFrame(rows), "pending": specs[-1].trial_id}


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    study_file = root / "rep.py"
    study_file.write_text(STUDY)
    store = Store(root / "store")
    store.ensure_writable()
    return {"file": study_file, "store": store, **fill(store, study_file)}


def report(capsys, *args) -> tuple[int, str, str]:
    code = main(["report", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_html_report_of_a_study_file(filled, tmp_path, capsys):
    out = tmp_path / "report.html"
    code, stdout, err = report(capsys, filled["file"], "--store", filled["store"].root, "--out", out)
    assert code == 0, err
    rows = filled["rows"]
    failed = rows[rows["status"] == "failed"]
    assert len(failed) and failed["weight_init"].str.startswith("normal(std=").all()  # diverged: a real failure
    assert f"wrote {out}" in stdout and f"{len(rows) - len(failed)} done, {len(failed)} failed, 1 pending" in stdout
    page = out.read_text()
    # the plan, the status, per-axis tables, the figures (embedded) and the failed trials with their errors
    for text in ("Plan", "8 trials", "Status", "Per axis", "weight_init", f"Failed trials ({len(failed)})", "Figures",
                 *failed["trial_id"], "TrialDiverged: training loss became nan", "pending"):
        assert text in page, text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert images and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "src=\"http" not in page and "<link" not in page  # self-contained
    # the per-axis row for trainable=output: mean ± std over its done trials, as pandas computes it
    done = rows[(rows["status"] == "done") & (rows["trainable"] == "output")]["test_acc"]
    cell = f"{done.mean():.4f} ± {done.std(ddof=0):.4f}"
    assert re.search(rf"<td>output</td>(<td>\d+</td>){{4}}<td>{re.escape(cell)}</td><td>{len(done)}</td>", page)
    bn = rows[rows["trainable"] == "bn"]  # status per axis value: done, failed, as the store has them
    assert f"<td>bn</td><td>{(bn['status'] == 'done').sum()}</td><td>{(bn['status'] == 'failed').sum()}</td>" in page
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside it


def test_markdown_report_links_figures_written_beside_it(filled, tmp_path, capsys):
    out = tmp_path / "sub" / "rep.md"
    out.parent.mkdir()
    code, _, err = report(capsys, filled["file"], "--store", filled["store"].root, "--out", out)
    assert code == 0, err
    md = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links and all(link.startswith("rep_files/") for link in links)
    assert all((out.parent / link).read_bytes().startswith(b"\x89PNG") for link in links)
    assert "### trainable" in md and "### weight_init" in md and "Failed trials (" in md
    # again: the figures folder is replaced whole, nothing else left beside the page
    assert report(capsys, filled["file"], "--store", filled["store"].root, "--out", out)[0] == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["rep.md", "rep_files"]


def test_report_by_study_name_reads_the_store_alone(filled, tmp_path, capsys):
    out = tmp_path / "byname.html"
    code, stdout, err = report(capsys, "rep", "--store", filled["store"].root, "--out", out, "--no-figures")
    assert code == 0, err
    rows = filled["rows"]
    n_failed = int((rows["status"] == "failed").sum())
    assert f"7 trials: {7 - n_failed} done, {n_failed} failed" in stdout  # the pending one is in no file
    page = out.read_text()
    assert "No study file given" in page and "weight_init" in page and f"Failed trials ({n_failed})" in page


@pytest.mark.parametrize("case", ["suffix", "study", "store", "study_file", "folder"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(filled, tmp_path, capsys, case):
    store, out = filled["store"].root, tmp_path / "out" / "r.html"
    out.parent.mkdir()
    args = {"suffix": [filled["file"], "--store", store, "--out", out.with_suffix(".pdf")],
            "study": ["nosuch", "--store", store, "--out", out],
            "store": [filled["file"], "--store", tmp_path / "absent", "--out", out],
            "study_file": [tmp_path / "absent.py", "--store", store, "--out", out],
            "folder": [filled["file"], "--store", store, "--out", tmp_path / "nofolder" / "r.html"]}[case]
    code, stdout, err = report(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    expected = {"suffix": "--out: unsupported suffix '.pdf'; valid: .html, .htm, .md",
                "study": "unknown study 'nosuch'", "store": "no such store",
                "study_file": "no such study file", "folder": "--out: no such folder"}[case]
    assert expected in err
    if case == "study":
        assert "studies there: rep" in err
    assert list(out.parent.iterdir()) == [] and not (tmp_path / "absent").exists()


def test_report_from_an_s3_store(s3_store, tmp_path, capsys):
    study_file = tmp_path / "rep.py"
    study_file.write_text(STUDY.replace('"seed": [0, 1]', '"seed": [0]'))
    store = Store(s3_store)
    store.ensure_writable()
    fill(store, study_file)
    out = tmp_path / "s3.html"
    code, stdout, err = report(capsys, study_file, "--store", s3_store, "--out", out)
    assert code == 0, err
    page = out.read_text()
    assert "data:image/png;base64," in page and "Failed trials (" in page and "s3://" in page
    assert "endpoint_override" not in page  # the store named as a person reads it
    assert not store.exists(store.path("rep", "figures"))  # a report writes nothing into the store


def test_nightly_shows_the_same_per_axis_and_failure_tables(filled, tmp_path, capsys):
    """One renderer, two callers: the nightly's section on a study holds the very per-axis tables and
    failed-trial rows that `sweeper report` prints for it."""
    from sweeper.report.night import StudyNight, build_report
    from sweeper.report.render import to_markdown
    from sweeper.report.study import of_study

    store, study = filled["store"], load_study(filled["file"])
    ov = of_study(study, store)
    failed = dict(zip(ov.trials[ov.trials["status"] == "failed"]["trial_id"],
                      ov.trials[ov.trials["status"] == "failed"]["error"]))
    night = StudyNight(study="rep", file=str(filled["file"]), planned=8, ran=7, done=7 - len(failed), failed=failed,
                       missing=1, snapshot=ov.snapshot, overview=ov)
    meta = {"tolerance": 0.02, "status": "failed", "rerun_stale": False, "started": "now", "store": store.root,
            "code_version": "v", "host": "h", "seconds": 1.0, "exit_code": 1}
    nightly_md = to_markdown(build_report(meta, [night], store, "2026-01-01T000000Z"))
    out = tmp_path / "rep.md"
    assert report(capsys, filled["file"], "--store", store.root, "--out", out, "--no-figures")[0] == 0
    page = out.read_text()
    table_rows = [line for line in page.splitlines() if line.startswith(("| kaiming_normal", "| normal(", "| bn |", "| output |",
                                                                          "| `"))]
    assert len(table_rows) == 4 + len(failed)  # two axes of two values; the failures
    for line in table_rows:
        assert line in nightly_md, line


def test_a_figure_that_cannot_be_drawn_is_named_and_the_others_still_drawn(filled, tmp_path, capsys, monkeypatch):
    from sweeper.analysis import figures

    def broken(tables, out):
        raise ValueError("this figure cannot be drawn")

    monkeypatch.setitem(figures()._entries, "broken_figure", broken)  # registered for this test only
    study_file = tmp_path / "rep.py"  # the same study (same trials), listing the broken figure first
    study_file.write_text(STUDY.replace('measure=["bn"],', 'measure=["bn"], figures=["broken_figure"],'))
    out = tmp_path / "broken.html"
    code, stdout, err = report(capsys, study_file, "--store", filled["store"].root, "--out", out)
    assert code == 0, err
    page = out.read_text()
    assert "broken_figure: could not be drawn (ValueError: this figure cannot be drawn)" in page
    assert page.count("data:image/png;base64,") >= 2 and "accuracy_vs_bn_params" in page
