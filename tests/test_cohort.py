"""Analysis never mixes experiments: after a recipe edit, figures and `sweeper status` use the
study's current plan and say in one line what they left out (sweeper.analysis.cohort)."""
from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from sweeper.analysis.cohort import PLAN_FILE, Plan, record_plan, recorded_plan, select
from sweeper.analysis.draw import draw_study
from sweeper.cli import main
from sweeper.store import Store
from sweeper.study import load_study
from sweeper.trial import TrialContext, execute

STUDY_FILE = """
from sweeper import Study
study = Study(name="edited", experiment="train", dataset="digits",
              axes={{"depth": [8], "width": [4], "trainable": ["bn", "all"], "seed": [0]}},
              recipe={{"epochs": 1, "batch_size": 64, "train_size": 200, "augment": "none", "lr": {lr}}},
              measure=["bn"], resources={{"cpu": 1, "gpu": 0}})
"""


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """One study folder holding two experiments: 2 real trials at lr 0.05 (the old study file),
    then 2 at lr 0.1 (the file as the user edited it)."""
    root = tmp_path_factory.mktemp("edited")
    files = {}
    for lr in ("0.05", "0.1"):
        files[lr] = root / f"study_lr{lr}.py"
        files[lr].write_text(textwrap.dedent(STUDY_FILE.format(lr=lr)))
    store = Store(root / "store")
    store.ensure_writable()
    ctx = TrialContext(study="edited", store=store)
    ids = {}
    for lr, path in files.items():
        specs = load_study(path).specs()
        ids[lr] = {s.trial_id for s in specs}
        for s in specs:
            assert execute(s, ctx, threads=1)["status"] == "done"
    return store, files, ids


def test_figures_use_only_the_current_plan_and_say_what_they_left_out(edited, tmp_path, capsys):
    store, files, ids = edited
    assert main(["figures", str(store.root), str(files["0.1"]), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "figures of edited: left out 2 trials with lr=0.05 (the study file now says 0.1)" in out
    # one experiment: no per-lr files, and the per-trial CSV holds exactly the new trials
    folder = tmp_path / "edited"
    assert not list(folder.glob("*__lr=*"))
    sparsity = pd.read_csv(folder / "gamma_sparsity.csv")
    assert set(sparsity["trial_id"]) == ids["0.1"]
    acc = pd.read_csv(folder / "table1_params.csv")
    assert acc["model"].tolist() == ["resnet-8-4"]


def test_without_a_plan_every_trial_is_drawn_split_by_the_varying_field(edited, tmp_path):
    store, _, ids = edited
    drawn = draw_study(store, "edited", out=tmp_path, names=["gamma_sparsity"])
    assert not drawn.left_out
    csvs = sorted(p.name for p in tmp_path.glob("gamma_sparsity*.csv"))
    assert csvs == ["gamma_sparsity__lr=0.05.csv", "gamma_sparsity__lr=0.1.csv"]
    assert set(pd.read_csv(tmp_path / "gamma_sparsity__lr=0.05.csv")["trial_id"]) == ids["0.05"]


def test_the_old_plan_draws_the_old_trials(edited, tmp_path):
    store, files, ids = edited
    drawn = draw_study(store, "edited", out=tmp_path, names=["gamma_sparsity"], plan=Plan.of(load_study(files["0.05"])))
    assert drawn.left_out == {"edited": ["left out 2 trials with lr=0.1 (the study file now says 0.05)"]}
    assert set(pd.read_csv(tmp_path / "gamma_sparsity.csv")["trial_id"]) == ids["0.05"]


def test_status_counts_the_current_plan(edited, capsys):
    store, files, ids = edited
    assert main(["status", str(store.root), str(files["0.1"]), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["studies"]
    assert (row["done"], row["failed"], row["missing"], row["other"]) == (2, 0, 0, 2)
    assert row["left_out"] == ["left out 2 trials with lr=0.05 (the study file now says 0.1)"]
    assert row["plan"] == "study file"
    assert main(["status", str(store.root), str(files["0.1"])]) == 0
    text = capsys.readouterr().out
    assert "edited: left out 2 trials with lr=0.05 (the study file now says 0.1)" in text
    assert text.splitlines()[0].split()[:6] == ["study", "done", "failed", "missing", "other", "corrupt"]


def test_a_recorded_plan_serves_figures_and_status_without_the_study_file(edited, tmp_path, capsys):
    store, files, ids = edited
    root = tmp_path / "copy"
    import shutil

    shutil.copytree(store.root, root)  # the module's store stays without a plan for the other tests
    copy = Store(root)
    record_plan(copy, Plan.of(load_study(files["0.1"])))  # as `sweeper run` does after its trials
    assert (root / "edited" / PLAN_FILE).exists()
    assert "edited" in copy.studies() and PLAN_FILE not in copy.tables("edited")
    assert recorded_plan(copy, "edited").ids == frozenset(ids["0.1"])
    assert main(["status", str(root), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["studies"]
    assert (row["done"], row["other"], row["plan"]) == (2, 2, "last run")
    assert row["left_out"] == ["left out 2 trials with lr=0.05 (the last run's plan has 0.1)"]
    assert main(["figures", str(root), "--out", str(tmp_path / "figs")]) == 0
    assert "figures of edited: left out 2 trials with lr=0.05 (the last run's plan has 0.1)" in capsys.readouterr().out
    assert set(pd.read_csv(tmp_path / "figs" / "edited" / "gamma_sparsity.csv")["trial_id"]) == ids["0.1"]
    # an unreadable plan file is no plan: every trial, as before
    (root / "edited" / PLAN_FILE).write_text("{not json")
    assert recorded_plan(copy, "edited") is None


def test_a_search_keeps_its_sampled_trials_and_says_which_recipe_changed():
    plan = Plan("s", frozenset({"base"}), {"lr": ["0.1"], "epochs": ["5"], "seed": ["0"]}, free=("lr",))
    trials = pd.DataFrame({"trial_id": ["base", "sampled", "old", "old2", "odd"],
                           "status": ["done"] * 5,
                           "lr": [0.1, 0.031, 0.2, 0.3, 0.1], "epochs": [5, 5, 3, 3, 5], "seed": [0, 0, 0, 0, 1]})
    cohort = select(trials, plan)
    assert cohort.ids == frozenset({"base", "sampled"})
    assert cohort.left_out == ["left out 2 trials with epochs=3 (the study file now says 5)",
                               "left out 1 trial with seed=1 (the study file now says 0)"]


def test_a_combination_no_longer_planned_is_named_as_such():
    plan = Plan("s", frozenset({"a", "b"}), {"depth": ["8", "14"], "width": ["4", "8"]})
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": "done", "depth": [8, 14, 14], "width": [4, 8, 4]})
    cohort = select(trials, plan)
    assert cohort.ids == frozenset({"a", "b"})
    assert cohort.left_out == ["left out 1 trial not in the current plan (each of its values is in the study "
                               "file, but not this combination)"]


def test_study_files_take_the_scale_and_overrides_the_run_was_given(edited, tmp_path, capsys):
    store, files, ids = edited
    # --set: the lr 0.1 file, overridden as `sweeper run --set recipe.lr=0.05` ran it, is the old plan
    assert main(["figures", str(store.root), str(files["0.1"]), "--set", "recipe.lr=0.05",
                 "--out", str(tmp_path / "set")]) == 0
    assert "figures of edited: left out 2 trials with lr=0.1 (the study file now says 0.05)" in capsys.readouterr().out
    assert set(pd.read_csv(tmp_path / "set" / "edited" / "gamma_sparsity.csv")["trial_id"]) == ids["0.05"]
    # --scale cpu: the study file's cpu variant, stored as `<name>-cpu`, is the plan counted
    scaled = tmp_path / "scaled.py"
    scaled.write_text(files["0.1"].read_text().replace("resources=", 'cpu={"recipe": {"epochs": 2}}, resources='))
    assert main(["status", str(store.root), str(scaled), "--scale", "cpu", "--json"]) == 0
    rows = {r["study"]: r for r in json.loads(capsys.readouterr().out)["studies"]}
    assert (rows["edited-cpu"]["done"], rows["edited-cpu"]["missing"], rows["edited-cpu"]["plan"]) == (0, 2, "study file")
    assert rows["edited"]["plan"] is None  # the full-scale study's trials: no file given for it, none recorded
    # the flags without a study file: one line, exit 2
    assert main(["figures", str(store.root), "--scale", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--quick, --scale, --set and --name apply to study files" in err and len(err.strip().splitlines()) == 1
