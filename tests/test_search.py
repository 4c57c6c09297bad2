"""Optuna search (Ray Tune's OptunaSearch, optionally ASHA) landing in the same store."""
import pandas as pd
import pytest

from sweeper.errors import SweeperError
from sweeper.orchestration.sweep import run_study
from sweeper.store import Store
from sweeper.study import Search, Study
from test_schema_doc import documented

TINY = dict(dataset="digits", recipe={"model": "resnet-8-4", "epochs": 2, "augment": "none", "trainable": "bn"})


def test_search_trials_land_in_the_store_and_the_choice_is_marked(ray_local, tmp_path):
    study = Study(name="lr", search=Search(space={"lr": ("loguniform", 1e-3, 1.0)}, num_samples=4), **TINY)
    store = Store(tmp_path)
    summary = run_study(study, store, say=lambda _: None)
    assert summary.done == 4 and summary.ok
    trials = pd.read_parquet(tmp_path / "lr" / "trials")
    assert len(trials) == 4 and trials["lr"].nunique() == 4 and trials["lr"].between(1e-3, 1.0).all()
    search = pd.read_parquet(tmp_path / "lr" / "search")
    assert len(search) == 1
    chosen = search["chosen_trial_id"].iloc[0]
    assert set(search.columns) <= documented()["search"]  # docs/schema.md names each of its columns
    assert chosen == trials.loc[trials["test_acc"].idxmax(), "trial_id"]
    # the same search again reuses the finished trials (same sampler seed, same ids)
    again = run_study(study, store, say=lambda _: None)
    assert again.skipped == 4 and len(pd.read_parquet(tmp_path / "lr" / "trials")) == 4


def test_asha_stops_weak_trials_and_records_them(ray_local, tmp_path):
    recipe = {**TINY["recipe"], "epochs": 4}
    study = Study(name="asha", dataset="digits", recipe=recipe,
                  search=Search(space={"lr": ("loguniform", 1e-5, 1.0)}, num_samples=6, asha=True, seed=1))
    summary = run_study(study, Store(tmp_path), say=lambda _: None)
    trials = pd.read_parquet(tmp_path / "asha" / "trials")
    assert len(trials) == 6 and set(trials["status"]) <= {"done", "stopped"}
    assert summary.done >= 1 and summary.missing == 0


@pytest.mark.parametrize("search,where", [
    (Search(space={"colour": ("uniform", 0, 1)}), "search.space.colour"),
    (Search(space={"lr": ("loguniform", 0, 1)}), "search.space.lr"),
    (Search(space={"lr": ("normal", 0, 1)}), "search.space.lr"),
    (Search(space={"lr": ("uniform", 0.1, 0.5)}, num_samples=0), "search.num_samples"),
])
def test_bad_searches_are_refused(search, where):
    with pytest.raises(SweeperError) as e:
        Study(name="x", search=search, **TINY).specs()
    assert e.value.where == where


def test_search_needs_one_base_trial():
    with pytest.raises(SweeperError, match="axes that give one trial"):
        Study(name="x", axes={"seed": [0, 1]}, search=Search(space={"lr": ("uniform", 0.1, 0.5)}), **TINY).specs()


def test_asha_needs_a_test_pass_every_epoch():
    # ASHA stops trials on each epoch's test_acc; eval_every > 1 leaves epochs without one
    recipe = {**TINY["recipe"], "eval_every": 2}
    space = {"lr": ("uniform", 0.1, 0.5)}
    with pytest.raises(SweeperError, match="eval_every 2") as e:
        Study(name="x", dataset="digits", recipe=recipe, search=Search(space=space, asha=True)).specs()
    assert e.value.where == "search.asha"
    assert len(Study(name="x", dataset="digits", recipe=recipe, search=Search(space=space)).specs()) == 1
