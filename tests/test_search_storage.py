"""Persistent Optuna searches: the search's Optuna study lives in `<store>/<study>/optuna.journal`,
optuna-dashboard opens that file, and a second run continues the study instead of starting over."""
import json
from wsgiref.util import setup_testing_defaults

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweeper.cli import main
from sweeper.orchestration.optuna_study import search_key, told_trials
from sweeper.orchestration.sweep import run_study
from sweeper.searchstorage import open_storage, save, search_storage
from sweeper.store import Store
from sweeper.study import Search, Study

TINY = dict(dataset="digits", recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none", "trainable": "bn",
                                      "train_size": 200, "test_size": 100, "batch_size": 50})


def lr_study(num_samples: int) -> Study:
    return Study(name="lr", search=Search(space={"lr": ("loguniform", 1e-3, 1.0)}, num_samples=num_samples), **TINY)


def journal_study(path, study: Study) -> optuna.Study:
    name = f"{study.name}-{search_key(study.search, study.specs()[0])}"
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def dashboard(path, url: str) -> dict:
    """What optuna-dashboard serves for the file at `url` (its WSGI app, as `optuna-dashboard FILE`
    builds it)."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(str(path))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": url}
    setup_testing_defaults(environ)
    status = []
    body = app(environ, lambda s, h, exc_info=None: status.append(s))
    assert status[0].startswith("200"), status
    return json.loads(b"".join(body))


def test_a_second_run_continues_the_stored_optuna_study(ray_local, tmp_path, capsys):
    store = Store(tmp_path)
    lines: list[str] = []
    first = run_study(lr_study(2), store, say=lines.append)
    assert first.done == 2 and first.ok
    journal = tmp_path / "lr" / "optuna.journal"
    assert any(f"Optuna study in {journal}; open it with: optuna-dashboard {journal}" in line for line in lines)
    ot = journal_study(journal, lr_study(2))
    trials = pd.read_parquet(tmp_path / "lr" / "trials")
    assert [t.state for t in ot.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["sampled/lr"] for t in ot.trials) == sorted(trials["lr"])
    by_lr = dict(zip(trials["lr"], trials["test_acc"]))
    assert all(t.value == pytest.approx(by_lr[t.params["sampled/lr"]]) for t in ot.trials)

    # the same search with a larger budget continues: 1 more trial, the first 2 kept and not re-run
    lines.clear()
    second = run_study(lr_study(3), store, say=lines.append)
    assert (second.skipped, second.ran, second.done) == (2, 1, 3) and second.ok
    assert any("2 told before, 1 to go" in line for line in lines), lines
    ot = journal_study(journal, lr_study(3))
    assert len(ot.trials) == 3 and all(t.state == TrialState.COMPLETE for t in ot.trials)
    first_lrs = {t.params["sampled/lr"] for t in ot.trials[:2]}
    assert first_lrs == set(trials["lr"])  # the first run's trials, as they were
    # started over, the seeded sampler would suggest the first run's first point again (a reused trial)
    assert ot.trials[2].params["sampled/lr"] not in first_lrs
    assert len(pd.read_parquet(tmp_path / "lr" / "trials")) == 3
    search = pd.read_parquet(tmp_path / "lr" / "search")
    assert search.set_index("trials").loc[3, "chosen_trial_id"] in set(pd.read_parquet(tmp_path / "lr" / "trials")["trial_id"])

    # once the budget is spent a re-run does nothing
    again = run_study(lr_study(3), store, say=lambda _: None)
    assert (again.skipped, again.ran) == (3, 0) and len(journal_study(journal, lr_study(3)).trials) == 3

    # optuna-dashboard opens the file and finds the study with its trials
    (summary,) = dashboard(journal, "/api/studies")["study_summaries"]
    assert summary["study_name"] == journal_study(journal, lr_study(3)).study_name
    shown = dashboard(journal, f"/api/studies/{summary['study_id']}")["trials"]
    assert sorted(t["params"][0]["param_internal_value"] for t in shown) == sorted(t.params["sampled/lr"] for t in ot.trials)
    # `sweeper status` says where it is and how to open it
    capsys.readouterr()
    assert main(["status", str(tmp_path)]) == 0
    assert f"lr: Optuna study in {journal}; open it with: optuna-dashboard {journal}" in capsys.readouterr().out


def test_trials_a_killed_driver_left_running_are_settled_from_the_store(tmp_path):
    """A driver killed between a trial's commit and its `tell` leaves the Optuna trial RUNNING: the
    next run tells it the stored result; one the store never got counts as failed."""
    study = lr_study(3)
    base = study.specs()[0]
    store = Store(tmp_path)
    done = base.replace(lr=0.05)
    store.commit_trial("lr", done, {"trial_id": done.trial_id, "study": "lr", "experiment": "train",
                                    "status": "done", "error": "", "test_acc": 0.75, **done.to_row()}, {})
    storage = search_storage(store, "lr").storage()
    name = f"lr-{search_key(study.search, base)}"
    ot = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    dist = {"sampled/lr": FloatDistribution(1e-3, 1.0, log=True)}
    for lr in (0.05, 0.2):
        ot.enqueue_trial({"sampled/lr": lr})
        ot.ask(dist)  # asked, never told: RUNNING
    told = told_trials(storage, name, study.search, base, store, "lr")
    assert [(t.params["sampled/lr"], t.value) for t in told] == [(0.05, 0.75)]
    states = [t.state for t in optuna.load_study(study_name=name, storage=storage).trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]


def test_an_object_stores_journal_is_kept_locally_and_copied_to_the_bucket(s3_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store(s3_store)
    found = open_storage(store, "lr")
    assert found.path == (tmp_path / "optuna" / store.root / "lr" / "optuna.journal").resolve()
    assert found.url.startswith("s3://") and found.url.endswith("/lr/optuna.journal")
    ot = optuna.create_study(storage=found.storage(), study_name="s")
    ot.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, value=1.0))
    save(store, found)
    with store.fs.open_input_stream(found.copy) as f:
        assert f.read() == found.path.read_bytes()
    # another machine (no local copy) starts from the bucket's
    found.path.unlink()
    again = open_storage(store, "lr")
    assert len(optuna.load_study(study_name="s", storage=again.storage()).trials) == 1
    # a local copy that already extends the bucket's is kept
    ot.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)}, value=2.0))
    open_storage(store, "lr")
    assert len(optuna.load_study(study_name="s", storage=again.storage()).trials) == 2
