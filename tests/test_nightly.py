"""`sweeper nightly` and `sweeper schedule`: incremental nights on a real local Ray cluster, the
report and its regression flags, the stale policy, the lock, and the crontab line.

The study is tiny (digits, resnet-8 of width 4, 2 epochs, 4 trials of about a second each)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.cli import main
from sweeper.nightly.lock import Holder, LockHeld, NightlyLock
from sweeper.nightly.run import EXIT_LOCKED, EXIT_OK, EXIT_REGRESSION
from sweeper.report.layout import REPORTS, list_reports
from sweeper.store import Store

STUDY = """\
from sweeper import Study

study = Study(
    name="tiny",
    dataset="digits",
    axes={{"trainable": ["all", "bn"], "seed": [0, 1]}},
    recipe={{"model": "resnet-8", "width": 4, "epochs": 2, "lr": {lr!r}, "batch_size": 64, "augment": "none"}},
    measure=[],
    figures=["accuracy_vs_bn_params"],
)
"""


def write_study(path: Path, lr: float = 0.1) -> Path:
    path.write_text(STUDY.format(lr=lr))
    return path


def summary_of(store: Path, name: str) -> dict:
    return json.loads((store / REPORTS / name / "summary.json").read_text())


def latest(store: Path) -> str:
    return list_reports(Store(store))[-1]


def nightly(study: Path, store: Path, *flags: str) -> tuple[int, str, dict]:
    """Run one nightly: its exit status, its report's folder name and the study's summary."""
    code = main(["nightly", str(study), "--store", str(store), *flags])
    name = latest(store)
    return code, name, summary_of(store, name)["studies"][0]


def report_md(store: Path, name: str) -> str:
    return (store / REPORTS / name / "report.md").read_text()


def test_nights_in_a_row_report_changes_regressions_and_stale_reruns(ray_local, tmp_path, capsys):
    study, store = write_study(tmp_path / "tiny.py"), tmp_path / "store"

    # Night 1: everything is new.
    code, first, s1 = nightly(study, store)
    assert code == EXIT_OK, report_md(store, first)
    assert (s1["ran"], s1["done"], s1["failed"], s1["missing"]) == (4, 4, {}, 0)
    assert s1["comparison"]["previous"] is None and len(s1["comparison"]["new_trials"]) == 4
    folder = store / REPORTS / first
    assert (folder / "report.md").is_file() and (folder / "snapshot.parquet").is_file()
    assert (folder / "figures" / "tiny" / "accuracy_vs_bn_params.png").is_file()
    assert "data:image/png;base64," in (folder / "report.html").read_text()
    assert "### Per axis (test_acc, mean ± std over done trials)" in report_md(store, first)  # as `sweeper report`
    assert not (store / REPORTS / "nightly.lock").exists()  # released

    # Night 2: nothing to do, nothing changed.
    code, second, s2 = nightly(study, store)
    md = report_md(store, second)
    assert code == EXIT_OK, md
    assert s2["ran"] == 0 and s2["skipped"] == 4
    c2 = s2["comparison"]
    assert c2["previous"] == first and not c2["changed"]
    assert (c2["new_trials"], c2["regressions"], c2["improvements"]) == ([], [], [])
    assert f"Changes since {first}" in md and "No change" in md and "nothing to do" in md
    # Figures side by side: the previous night's copy is linked, both are embedded.
    assert f"../{first}/figures/tiny/accuracy_vs_bn_params.png" in md
    assert (store / REPORTS / second / "report.html").read_text().count("data:image/png;base64,") == 2

    # Night 3: a planted recipe change (lr 0.1 -> 1e-5: nothing trains) is new trials and a
    # regression of both configurations, paired with their old selves by grid point.
    write_study(study, lr=1e-5)
    code, third, s3 = nightly(study, store)
    md = report_md(store, third)
    assert code == EXIT_REGRESSION, md
    assert s3["ran"] == 4 and len(s3["comparison"]["new_trials"]) == 4
    regressions = s3["comparison"]["regressions"]
    assert sorted(r["label"] for r in regressions) == ["resnet-8-4 trainable=all", "resnet-8-4 trainable=bn"], md
    for r in regressions:
        assert r["delta"] < -0.02 and r["changed"] == {"lr": [0.1, 1e-05]}, md
    assert "**Regressions**" in md and "REGRESSION" in md

    # Night 4: two trials recorded under an older code version are kept by default ...
    store_ = Store(store)
    rows = store_.read("tiny", "trials").set_index("trial_id")
    from sweeper.study import load_study

    specs = {s.trial_id: s for s in load_study(study).specs()}
    old = sorted(specs)[:2]
    for tid in old:
        row = {k: (None if v != v else v) for k, v in rows.loc[tid].to_dict().items()}  # NaN -> None
        store_.commit_trial("tiny", specs[tid], {**row, "trial_id": tid, "code_version": "0.0.1+gold"}, {})
    code, fourth, s4 = nightly(study, store)
    md = report_md(store, fourth)
    assert code == EXIT_OK, md
    assert s4["ran"] == 0 and sorted(s4["stale"]) == old and not s4["comparison"]["changed"], md
    assert "older code version" in md

    # Night 5: ... and rerun with --rerun-stale; retention prunes to the newest 3 reports.
    code, fifth, s5 = nightly(study, store, "--rerun-stale", "--keep-reports", "3")
    md = report_md(store, fifth)
    assert code == EXIT_OK, md
    assert s5["ran"] == 2 and s5["done"] == 2 and s5["stale_rerun"], md
    versions = Store(store).read("tiny", "trials").set_index("trial_id")["code_version"]
    assert "0.0.1+gold" not in set(versions)
    assert list_reports(Store(store)) == [third, fourth, fifth]
    assert len(Store(store).files("tiny", "trials")) == 8  # results are never pruned


def test_second_nightly_on_a_store_is_refused(tmp_path, capsys):
    study, store = write_study(tmp_path / "tiny.py"), tmp_path / "store"
    with NightlyLock(Store(store)) as held:
        assert main(["nightly", str(study), "--store", str(store)]) == EXIT_LOCKED
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert str(store / REPORTS / "nightly.lock") in err
        assert f"pid {os.getpid()} on {socket.gethostname()}" in err and held.me.started_at in err
    assert not (store / REPORTS / "nightly.lock").exists()


def test_stale_lock_is_taken_over_and_foreign_one_is_not(tmp_path):
    store = Store(tmp_path / "store")
    lock = Path(store.path(REPORTS, "nightly.lock"))
    lock.parent.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_bytes(Holder(gone.pid, socket.gethostname(), "2000-01-01T00:00:00+00:00", "dead").dumps())
    said: list[str] = []
    with NightlyLock(store, say=said.append) as taken:
        assert Holder.parse(lock.read_bytes()).token == taken.me.token
    assert said and "took over the stale lock" in said[0] and f"pid {gone.pid}" in said[0]
    assert not lock.exists()

    lock.write_bytes(Holder(gone.pid, "some-other-host", "2000-01-01T00:00:00+00:00", "x").dumps())
    with pytest.raises(LockHeld, match="some-other-host"):
        NightlyLock(store).acquire()
    assert Holder.parse(lock.read_bytes()).token == "x"  # left alone

    # A live holder on this host that took no flock (an older sweeper's nightly) holds it too.
    me = Holder.me()
    lock.write_bytes(me.dumps())
    with pytest.raises(LockHeld, match=f"pid {os.getpid()} on"):
        NightlyLock(store).acquire()
    assert Holder.parse(lock.read_bytes()).token == me.token


HOLD = """\
import sys, time
from sweeper.nightly.lock import NightlyLock
from sweeper.store import Store

NightlyLock(Store(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_local_lock_is_held_across_processes_and_freed_by_kill_9(tmp_path):
    """The local lock is an flock: another process is refused while its holder lives, and a holder
    killed with -9 (no release, no cleanup) leaves a lock the next nightly takes over at once."""
    store = Store(tmp_path / "store")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, store.root], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"pid {holder.pid} on {socket.gethostname()}"):
            NightlyLock(store).acquire()
    finally:
        holder.kill()  # SIGKILL
        holder.wait()
    said: list[str] = []
    with NightlyLock(store, say=said.append) as taken:
        assert Holder.parse(Path(taken.path).read_bytes()).token == taken.me.token
    assert len(said) == 1 and "took over the stale lock" in said[0] and f"pid {holder.pid} on" in said[0]
    assert sorted(p.name for p in Path(store.path(REPORTS)).iterdir()) == ["nightly.flock"]


@pytest.fixture
def fake_crontab(tmp_path, monkeypatch) -> Path:
    """A stand-in for the system's `crontab` command that keeps the table in a file."""
    table = tmp_path / "crontab.txt"
    script = tmp_path / "crontab"
    script.write_text(
        "#!/bin/sh\n"
        f'F="{table}"\n'
        'case "$1" in\n'
        '  -l) if [ -f "$F" ]; then cat "$F"; else echo "no crontab for $(id -un)" >&2; exit 1; fi ;;\n'
        '  -) cat > "$F" ;;\n'
        '  *) exit 2 ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("SWEEPER_CRONTAB", str(script))
    return table


def test_cron_line_install_and_remove(tmp_path, capsys, fake_crontab, monkeypatch):
    study, store = write_study(tmp_path / "tiny.py"), tmp_path / "store"
    monkeypatch.setenv("SWEEPER_DATA_ROOT", str(tmp_path / "data"))
    assert main(["schedule", str(study), "--store", str(store), "--at", "02:30", "--rerun-stale"]) == 0
    line = capsys.readouterr().out.strip()
    minute, hour, dom, month, dow, command = line.split(maxsplit=5)
    assert (minute, hour, dom, month, dow) == ("30", "2", "*", "*", "*")  # daily at 02:30
    assert int(minute) in range(60) and int(hour) in range(24)
    bindir = Path(os.path.abspath(sys.executable)).parent
    assert command.startswith(f"cd {tmp_path} && ")
    assert f"PATH={bindir}:" in command and f"SWEEPER_DATA_ROOT={tmp_path / 'data'}" in command
    assert " SWEEPER_LOCAL_CPUS=1 " in command  # the suite's (conftest.py): the nightly's cluster gets it too
    assert f" nightly {study} --store {store} --rerun-stale " in command
    assert f">> {store / 'reports' / 'logs' / 'nightly.log'} 2>&1" in command
    assert command.endswith(f"# sweeper-nightly store={store}")

    fake_crontab.write_text("0 1 * * * someone-elses-job\n")
    assert main(["schedule", str(study), "--store", str(store), "--at", "02:30", "--install"]) == 0
    assert main(["schedule", str(study), "--store", str(store), "--at", "04:05", "--install"]) == 0
    table = fake_crontab.read_text().splitlines()
    assert table[0] == "0 1 * * * someone-elses-job" and len(table) == 2  # replaced, not doubled
    assert table[1].split()[:5] == ["5", "4", "*", "*", "*"]
    assert (store / "reports" / "logs").is_dir()
    assert main(["schedule", "--store", str(store), "--remove"]) == 0
    assert fake_crontab.read_text().splitlines() == ["0 1 * * * someone-elses-job"]

    assert main(["schedule", str(study), "--store", str(store), "--at", "24:00"]) == 2
    monkeypatch.delenv("SWEEPER_CRONTAB")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    capsys.readouterr()
    assert main(["schedule", str(study), "--store", str(store), "--at", "02:30", "--install"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no `crontab` command" in err


def test_compare_flags_only_moves_beyond_tolerance():
    from sweeper.report.compare import compare
    from sweeper.report.snapshot import config_key, snapshot_rows
    import pandas as pd

    def snap(accs: dict[str, list[float]], lr: float = 0.1):
        configs = {config_key({"trainable": t, "lr": lr}): {"trainable": t, "lr": lr} for t in accs}
        members, rows = {}, []
        for key, config in configs.items():
            ids = [f"{config['trainable']}{lr}-{i}" for i in range(len(accs[config["trainable"]]))]
            members[key] = ids
            rows += [{"trial_id": i, "status": "done", "test_acc": a, "code_version": "v"}
                     for i, a in zip(ids, accs[config["trainable"]])]
        labels = {k: c["trainable"] for k, c in configs.items()}
        return snapshot_rows("s", "test_acc", configs, labels, members, pd.DataFrame(rows))

    before = snap({"all": [0.80, 0.90], "bn": [0.50, 0.50], "output": [0.30, 0.30], "none": [0.1, 0.1]})
    after = snap({"all": [0.80, 0.86], "bn": [0.47, 0.47], "output": [0.40, 0.40], "none": [0.1, 0.1]})
    c = compare(("prev", before), after, tolerance=0.02)
    assert [m.label for m in c.regressions] == ["bn"]  # -0.03; "all" moved -0.02: within
    assert [m.label for m in c.improvements] == ["output"] and not c.new_trials
    assert sorted(m.label for m in c.within) == ["all", "none"]
    # Lower is better (construction's relative error): the same moves read the other way round.
    c = compare(("prev", before), after, tolerance=0.02, direction="min")
    assert [m.label for m in c.regressions] == ["output"] and [m.label for m in c.improvements] == ["bn"]
    # A recipe change pairs configurations by grid point and names the changed field.
    c = compare(("prev", before), snap({"all": [0.1], "bn": [0.5]}, lr=1e-5), tolerance=0.02)
    assert [(m.label, m.changed) for m in c.regressions] == [("all", {"lr": (0.1, 1e-05)})]
    assert sorted(c.retired_configs) == ["none", "output"] and len(c.new_trials) == 2


def test_a_studys_results_render_on_their_own_to_markdown_and_html():
    """The rendering knows no nights: a study's snapshot becomes a results table in both formats
    (what a report on one study reuses), the same facts in each."""
    import pandas as pd

    from sweeper.report.render import results_blocks, to_html, to_markdown
    from sweeper.report.snapshot import config_key, snapshot_rows

    configs = {config_key({"trainable": t}): {"trainable": t} for t in ("all", "bn", "b<n|x")}
    members = {k: [f"{c['trainable']}-0", f"{c['trainable']}-1"] for k, c in configs.items()}
    trials = pd.DataFrame([{"trial_id": f"{t}-{i}", "status": "done", "test_acc": 0.5 + i / 10, "code_version": "v1"}
                           for t in ("all", "bn") for i in (0, 1)])
    snap = snapshot_rows("s", "test_acc", configs, {k: c["trainable"] for k, c in configs.items()}, members, trials)
    blocks = results_blocks(snap, limit=2, rest_in="snapshot.parquet")
    md, page = to_markdown(blocks), to_html(blocks, "s")
    assert "### Results (test_acc, mean over seeds)" in md
    assert "| all | 0.5500 | 0.0500 | 2 | v1 |" in md and "| bn | 0.5500 | 0.0500 | 2 | v1 |" in md
    assert "... and 1 more configurations (see snapshot.parquet)." in md
    assert "<td>all</td><td>0.5500</td><td>0.0500</td><td>2</td><td>v1</td>" in page
    assert "b&lt;n" in to_html(results_blocks(snap), "s") and "b<n\\|x | — | — | 0 |" in to_markdown(results_blocks(snap))
    assert results_blocks(snap.iloc[:0]) == []
