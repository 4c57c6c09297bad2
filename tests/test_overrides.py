"""Command-line overrides (`--set`, `--name`): read as each field's type, validated as the study
file is, run as ordinary trials, shown by `plan`, and passed on intact by the commands that start
another command (submit's job, schedule's crontab line, slurm's batch script)."""
import argparse
import json
import shlex
import subprocess
import typing
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from sweeper import overrides
from sweeper.cli import main
from sweeper.errors import SweeperError
from sweeper.study import Study, load_study

QUICKSTART = REPO / "studies" / "quickstart.py"
# the quickstart's quick variant cut to one short trial: a real run in seconds
ONE_TRIAL = ["--set", "axes.trainable=bn", "--set", "recipe.epochs=1"]


def study() -> Study:
    return Study(name="tiny", dataset="digits", axes={"trainable": ["bn", "output"], "seed": [0]},
                 recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none", "lr": 0.1},
                 quick={"recipe": {"epochs": 1}, "axes": {"trainable": ["bn"]}},
                 cpu={"recipe": {"epochs": 2}, "axes": {"trainable": ["output"]}})


def applied(*sets: str, quick: bool = False, name: str | None = None, scale: str = "full") -> Study:
    s = overrides.apply(study(), list(sets), "quick" if quick else scale, name)
    try:
        s.specs()
    except SweeperError as e:
        raise overrides.blame(e, list(sets)) from None
    return s


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -- values read as their field's type -----------------------------------------------------------
@pytest.mark.parametrize("text,field,expected", [
    ("recipe.lr=0.05", "lr", 0.05),  # float
    ("recipe.lr=1e-3", "lr", 0.001),
    ("recipe.epochs=3", "epochs", 3),  # int
    ("recipe.epochs=2e0", "epochs", 2),  # an integer written as a float
    ("recipe.augment=crop_flip", "augment", "crop_flip"),  # str (a registry name)
    ("recipe.milestones=0.25,0.5", "milestones", (0.25, 0.5)),  # tuple[float, ...]
    ("recipe.milestones=[0.3]", "milestones", (0.3,)),
    ("recipe.measure=bn,clamp", "measure", ("bn", "clamp")),  # tuple[str, ...]
    ("recipe.weight_init=normal(std=0.05)", "weight_init", "normal(std=0.05)"),  # a parameterised name
])
def test_recipe_values_take_the_fields_type(text, field, expected):
    (spec,) = [s for s in applied(text).specs() if s.trainable == "bn"]
    assert getattr(spec, field) == expected and type(getattr(spec, field)) is type(expected)


def test_bools_and_optionals_are_read_from_text():
    o = overrides.Override(None, "recipe", "flag", "")
    assert [overrides._typed(t, bool, o) for t in ("true", "False", "yes", "off", "1", "0")] == \
        [True, False, True, False, True, False]
    with pytest.raises(SweeperError, match="expected true or false, got 'maybe'"):
        overrides._typed("maybe", bool, o)
    assert overrides._typed("none", typing.Optional[int], o) is None
    assert overrides._typed("7", int | None, o) == 7
    assert overrides._typed("a,b", tuple[str, ...], o) == ("a", "b")


def test_axes_sweep_recipe_fix_and_ids_follow_the_specs():
    base = {s.trial_id for s in study().specs()}
    swept = applied("axes.seed=0,1,2")
    assert sorted((s.trainable, s.seed) for s in swept.specs()) == [(t, k) for t in ("bn", "output") for k in (0, 1, 2)]
    assert base < {s.trial_id for s in swept.specs()}  # the seed-0 trials are the same trials
    # an axis set as a recipe value is fixed; a recipe value set as an axis is swept
    fixed = applied("recipe.trainable=output")
    assert [s.trainable for s in fixed.specs()] == ["output"] and "trainable" not in fixed.axes
    lrs = applied("axes.lr=0.1,0.01")
    assert sorted({s.lr for s in lrs.specs()}) == [0.01, 0.1] and "lr" not in lrs.recipe
    changed = applied("recipe.lr=0.05").specs()
    assert not base & {s.trial_id for s in changed}  # a changed recipe is new trials
    # list-valued fields and joint axes take a literal list
    assert {s.milestones for s in applied("axes.milestones=[[0.5, 0.75], [0.25]]").specs()} == {(0.5, 0.75), (0.25,)}
    joint = applied('axes.size=[{"model": "resnet-8-4"}, {"model": "resnet-14-4"}]')
    assert sorted({s.depth for s in joint.specs()}) == [8, 14]
    # a shorthand (model) replaces the fields it stands for, wherever the file set them
    assert {s.model for s in applied("recipe.model=resnet-14-8").specs()} == {"resnet-14-8"}


def test_quick_overrides_and_the_command_line_has_the_last_word():
    assert [s.epochs for s in applied("quick.recipe.epochs=2", quick=True).specs()] == [2]
    assert [s.trainable for s in applied("quick.axes.trainable=output", quick=True).specs()] == ["output"]
    # recipe.* applies after the quick variant: it wins over what the file's `quick` sets
    assert [s.epochs for s in applied("recipe.epochs=3", quick=True).specs()] == [3]
    assert applied(name="tiny-lr").name == "tiny-lr"
    assert applied(name="tiny-lr", quick=True).name == "tiny-lr-quick"


def test_cpu_overrides_edit_the_laptop_variant_before_it_is_taken():
    # `cpu.` edits what --scale cpu runs, as `quick.` does for --quick; the others ignore it
    assert [s.epochs for s in applied("cpu.recipe.epochs=5", scale="cpu").specs()] == [5]
    assert [s.trainable for s in applied("cpu.axes.trainable=bn", scale="cpu").specs()] == ["bn"]
    assert [s.epochs for s in applied("cpu.recipe.epochs=5", quick=True).specs()] == [1]
    assert [s.epochs for s in applied("recipe.epochs=3", scale="cpu").specs()] == [3]  # the command line wins
    assert applied(name="tiny-lr", scale="cpu").name == "tiny-lr-cpu"


# -- bad input: one line naming the --set, exit 2 ------------------------------------------------
@pytest.mark.parametrize("sets,needle", [
    (["recipe.colour=red"], "--set recipe.colour: unknown field for experiment 'train'; valid fields: activation,"),
    (["recipe.lr=fast"], "--set recipe.lr: expected a number, got 'fast'"),
    (["recipe.lr=-1"], "--set recipe.lr: must be greater than 0, got -1.0"),
    (["recipe.epochs=1.5"], "--set recipe.epochs: expected an integer, got '1.5'"),
    (["recipe.momentum=1"], "--set recipe.momentum: must be in [0, 1), got 1.0"),
    (["recipe.activation=relux"], "--set recipe.activation: unknown activation 'relux'; valid choices:"),
    (["axes.trainable=bn,everything"], "--set axes.trainable: unknown trainable subset 'everything'; valid choices: all,"),
    (["axes.seed=0,one"], "--set axes.seed: expected an integer, got 'one'"),
    (["axes.seed="], "--set axes.seed: is empty"),
    (["axes.milestones=0.5,0.75"], "--set axes.milestones: holds lists"),
    (["recipe.lr"], "--set: cannot read 'recipe.lr'; expected recipe.KEY=VALUE, axes.KEY=V1,V2,..."),
    (["lr=0.1"], "--set: cannot read 'lr=0.1'"),
    (["recipes.lr=0.1"], "--set: cannot read 'recipes.lr=0.1'"),
    (["recipe.lr=0.1", "recipe.lr=0.2"], "--set recipe.lr: is given twice"),
    (["quick.recipe.lr=0"], "--set quick.recipe.lr: must be greater than 0, got 0.0"),
])
def test_bad_overrides_are_one_line_exit_2(capsys, tmp_path, sets, needle):
    store = tmp_path / "store"
    argv = ["run", str(QUICKSTART), "--quick", "--store", str(store), *(a for s in sets for a in ("--set", s))]
    err = one_line_error(capsys, argv)
    assert err.startswith(f"sweeper: error: {QUICKSTART}: ") and needle in err, err
    assert not store.exists()  # nothing written


@pytest.mark.parametrize("name,needle", [("two words", "--name: must be letters, digits"),
                                         ("../up", "--name: must be letters"), ("reports", "--name: the study name 'reports' is reserved")])
def test_bad_names_are_refused(capsys, name, needle):
    assert needle in one_line_error(capsys, ["plan", str(QUICKSTART), "--quick", "--name", name])


# -- a real run through the command line ----------------------------------------------------------
def test_run_with_overrides_stores_them_and_a_second_run_skips_them(ray_local, tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["run", str(QUICKSTART), "--quick", "--store", str(store), "--no-figures", *ONE_TRIAL,
            "--set", "recipe.lr=0.05", "--name", "qs-lr"]
    assert main(argv) == 0, capsys.readouterr()
    first = capsys.readouterr().out
    assert "qs-lr-quick: 1 ran and done" in first, first
    trials = pd.read_parquet(store / "qs-lr-quick" / "trials")
    assert len(trials) == 1 and (trials["lr"] == 0.05).all() and (trials["epochs"] == 1).all()
    assert (trials["status"] == "done").all() and not (store / "quickstart-quick").exists()
    (spec,) = load_study(QUICKSTART, quick=True, overrides=ONE_TRIAL[1::2] + ["recipe.lr=0.05"], name="qs-lr").specs()
    assert trials["trial_id"].tolist() == [spec.trial_id]  # its id follows from its spec

    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "0 ran and done" in second and "1 skipped (already done)" in second, second
    assert len(pd.read_parquet(store / "qs-lr-quick" / "trials")) == 1
    # plan sees them done and shows what the command line changed
    assert main(["plan", str(QUICKSTART), "--quick", "--store", str(store), *ONE_TRIAL,
                 "--set", "recipe.lr=0.05", "--name", "qs-lr"]) == 0
    out = capsys.readouterr().out
    assert "study qs-lr-quick: 1 trials (1 already done)" in out
    assert "overrides: axes.trainable=bn; recipe.epochs=1; recipe.lr=0.05; name=qs-lr" in out


def test_plan_shows_the_overrides(capsys):
    assert main(["plan", str(QUICKSTART), "--quick", "--set", "axes.seed=0,1", "--set", "recipe.lr=0.05"]) == 0
    out = capsys.readouterr().out
    assert "study quickstart-quick: 6 trials" in out and "overrides: axes.seed=0,1; recipe.lr=0.05" in out
    assert main(["plan", str(QUICKSTART), "--quick", "--json", "--set", "recipe.lr=0.05"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["overrides"] == ["recipe.lr=0.05"] and {t["lr"] for t in plan["trials"]} == {0.05}


# -- passed on: a job's entrypoint, a crontab line, a batch script --------------------------------
TRICKY = ["--set", "recipe.weight_init=normal(std=0.05)", "--set", "axes.seed=0,1", "--set",
          "axes.size=[{\"model\": \"resnet-8-4\"}, {'model': 'resnet-14-4'}]", "--name", "qs-x"]


def test_submit_passes_the_overrides_to_the_job():
    from sweeper.orchestration.submit import entrypoint

    args = argparse.Namespace(store="/shared/store", data_root=None, quick=True, cpus_per_trial=None,
                              gpus_per_trial=None, wait_for_resources=None, overrides=TRICKY[1::2][:3],
                              name="qs-x")
    assert shlex.split(entrypoint(args, "quickstart.py"))[-len(TRICKY):] == TRICKY


def test_submit_refuses_a_bad_override_before_contacting_the_cluster(capsys):
    err = one_line_error(capsys, ["submit", str(QUICKSTART), "--address", "http://127.0.0.1:9", "--store",
                                  "/shared/store", "--quick", "--set", "recipe.lr=0"])
    assert "--set recipe.lr: must be greater than 0" in err


def test_schedule_writes_the_overrides_into_the_crontab_line_quoted(capsys, tmp_path):
    store = tmp_path / "store"
    assert main(["schedule", str(QUICKSTART), "--store", str(store), "--at", "02:30", "--quick", *TRICKY]) == 0
    line = capsys.readouterr().out.strip()
    command = line.split(" ", 5)[5].replace(r"\%", "%")  # what cron hands the shell
    argv = shlex.split(command.split(" && ", 2)[2].split(" >> ")[0])
    assert argv[argv.index("nightly") + 1:][-len(TRICKY):] == TRICKY
    # the shell reads it back the same way (the line is run by /bin/sh)
    echoed = subprocess.run(["sh", "-c", "printf '%s\\n' " + command.split(" && ", 2)[2].split(" >> ")[0]],
                            capture_output=True, text=True).stdout.splitlines()
    assert echoed[-len(TRICKY):] == TRICKY
    # refused now, not at 02:30: a bad override, and a key one study file does not know
    construction = REPO / "studies" / "construction.py"
    err = one_line_error(capsys, ["schedule", str(QUICKSTART), str(construction), "--store", str(store),
                                  "--at", "02:30", "--set", "recipe.lr=0.05"])
    assert f"{construction}: --set recipe.lr: unknown field for experiment 'construction'" in err
    assert not store.exists()


def test_nightly_names_the_study_file_that_does_not_know_a_key(capsys, tmp_path):
    store = tmp_path / "store"
    construction = REPO / "studies" / "construction.py"
    err = one_line_error(capsys, ["nightly", str(QUICKSTART), str(construction), "--store", str(store),
                                  "--quick", "--set", "recipe.epochs=1"])
    assert f"{construction}: --set recipe.epochs: unknown field for experiment 'construction'" in err
    err = one_line_error(capsys, ["nightly", str(QUICKSTART), str(QUICKSTART), "--store", str(store), "--name", "x"])
    assert "--name: renames one study, and 2 study files are given" in err
    assert not store.exists()


def test_slurm_script_passes_the_overrides_as_array_elements(capsys, tmp_path):
    assert main(["slurm", str(QUICKSTART), "--nodes", "1", "--gpus-per-node", "0", "--cpus-per-node", "2",
                 "--time", "00:10:00", "--store", str(tmp_path / "store"), "--auth", "disabled",
                 "--log-dir", str(tmp_path / "logs"), "--quick", *TRICKY]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --job-name=sweeper-qs-x-quick" in script
    (run_args,) = [line for line in script.splitlines() if line.startswith("RUN_ARGS=(")]
    echoed = subprocess.run(["bash", "-c", run_args + '\nprintf "%s\\n" "${RUN_ARGS[@]}"'],
                            capture_output=True, text=True).stdout.splitlines()
    assert echoed == ["--quick", *TRICKY]
