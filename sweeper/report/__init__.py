"""Reports on a store's results: per-configuration snapshots, the comparison with an earlier one,
and Markdown and self-contained HTML, the nightly's kept under `<store>/reports/`.

    layout.py    where reports live in the store, and reading and writing their files
    snapshot.py  a study's per-configuration means (seeds averaged), and earlier nights' snapshots
    compare.py   tonight's snapshot against the previous one: regressions, improvements, new trials
    render.py    a report as blocks, rendered to Markdown (figures linked) and HTML (embedded); a
                 study's results table and figures as blocks, for any report on one study
    night.py     the nightly's report: what ran, failed and changed, study by study
    study.py     a study's trials with status, axis values and metric; its status, per-axis and
                 failed-trial tables (shown by `sweeper report` and in the nightly's study sections)
    page.py      `sweeper report`'s page on one study, and its writing (aside, then renamed)
    cli.py       the `sweeper report` command

Layout (one folder per night, named by its UTC start time so that names sort by date):

    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/report.md        links the figures (previous night's too)
    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/report.html      the same, figures embedded (base64 <img>)
    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/summary.json     what ran, failed, changed: for machines
    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/figures/<study>/<figure>.png   tonight's figures, kept
    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/snapshot.parquet per-configuration means, written last
    <store>/reports/logs/nightly.log                      the cron job's log (appended)
    <store>/reports/nightly.lock                          held while a nightly runs: who holds it
    <store>/reports/nightly.flock                         a local store's lock file (flock; kept, empty)

A configuration is a trial spec without its seed: the snapshot holds, per configuration of each
study's current plan, the mean (over seeds) of the study's metric and the trial ids behind it. The
next night compares against the newest earlier snapshot that has the study. Every file is written
once, atomically (aside, then renamed); nothing here is read, modified and written back. Only
report folders are ever deleted (retention), never results.

This package reads Parquet and writes text; like `sweeper.analysis` it never imports torch.
"""
