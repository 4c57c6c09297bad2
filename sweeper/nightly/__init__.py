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
study could not run or a figure could not be drawn; 2 bad input or environment (a study file, the
store, the data, the cluster: `sweeper.preflight`); 3 another nightly holds the lock; 4 a
configuration regressed beyond the tolerance (and nothing failed).

    lock.py      the store's lock: one nightly at a time, a dead holder's lock taken over
    run.py       one night: run, redraw, compare, report (`run_nightly`)
    cli.py       the `nightly` command: its options (shared with `schedule`) and handler
    schedule.py  `sweeper schedule`: the crontab line that runs `sweeper nightly` daily
"""
