"""Trials another study of the store has done with the same training are copied, not trained again
(sweeper.reuse): through a real local Ray cluster, real Parquet stores, local and on S3 (moto)."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import sweeper_in_process

from sweeper import load
from sweeper.experiments.train.spec import TrainSpec
from sweeper.orchestration.sweep import run_study
from sweeper.store import Store
from sweeper.study import Study

REPO = Path(__file__).resolve().parents[1]
RECIPE = {"model": "resnet-8-4", "epochs": 1, "batch_size": 128, "augment": "none"}
SPARSITY = ["bn", "clamp", "dead_relu"]


def spec(**values) -> TrainSpec:
    return TrainSpec.from_values({"dataset": "digits", **RECIPE, "trainable": "bn", **values})


def sparsity_like(name: str = "sparse") -> Study:
    """sparsity.py's kind of study: BN-only, measuring γ clamping and dead ReLUs as well."""
    return Study(name=name, dataset="digits", axes={"seed": [0, 1]}, recipe={**RECIPE, "trainable": "bn"},
                 measure=SPARSITY)


def depth_vs_width_like(name: str = "dvw") -> Study:
    """depth_vs_width.py's kind: BN-only among other subsets, measuring γ and β only."""
    return Study(name=name, dataset="digits", axes={"trainable": ["bn", "output"], "seed": [0, 1]}, recipe=RECIPE)


@pytest.fixture(scope="module")
def sparse_store(ray_local, tmp_path_factory) -> Path:
    """A store holding sparsity_like()'s two trials, run once for the tests that start from it."""
    root = tmp_path_factory.mktemp("sparse-store")
    first = run_study(sparsity_like(), Store(root), say=lambda _: None)
    assert first.ok and first.done == 2
    return root


def copy_of(store: Path, to: Path) -> Path:
    """A test's own copy of a shared store, to write to."""
    shutil.copytree(store, to, dirs_exist_ok=True)
    return to


def test_measurements_do_not_change_the_training_they_record():
    bn, more = spec(), spec(measure=SPARSITY, clamp_thresholds=[0.0, 0.1])
    assert bn.trial_id != more.trial_id and bn.training_id == more.training_id
    assert bn.records_within(more) and not more.records_within(bn)  # more was recorded than bn asks
    assert not spec(measure=["clamp"]).records_within(more.replace(clamp_thresholds=[0.5]))
    assert spec(lr=0.05).training_id != bn.training_id
    assert spec(seed=1).training_id != bn.training_id
    assert [t for t in ("curves", "bn", "clamp", "dead_relu") if bn.keeps_table(t)] == ["curves", "bn"]
    odd = spec(milestones=[0.3, 0.6, 0.9], measure=SPARSITY, clamp_thresholds=[0.0, 0.125], eval_every=3)
    assert TrainSpec.from_row(odd.to_row()) == odd  # the stored row gives back the spec it was written from
    assert TrainSpec.from_row({k: v for k, v in odd.to_row().items() if k != "eval_every"}) == odd.replace(eval_every=1)


def test_a_trial_done_in_another_study_is_copied_and_equals_training_it_here(sparse_store, tmp_path, capsys):
    store = Store(copy_of(sparse_store, tmp_path))
    lines: list[str] = []

    summary = run_study(depth_vs_width_like(), store, say=lines.append)
    assert summary.ok and summary.reused == 2 and summary.ran == 2 and summary.done == 2  # output-only trained
    assert any("2 trials taken from sparse" in line for line in lines)
    sparse, dvw = load(tmp_path, "sparse"), load(tmp_path, "dvw")
    taken = dvw[dvw["trainable"] == "bn"].set_index("seed")
    origin = sparse.set_index("seed")
    assert list(taken["reused_from"]) == [f"sparse/{origin.loc[s, 'trial_id']}" for s in taken.index]
    assert dvw.loc[dvw["trainable"] == "output", "reused_from"].isna().all()
    assert taken["test_acc"].sort_index().equals(origin["test_acc"].sort_index())
    assert set(taken["measure"]) == {"bn"} and set(taken["tables"]) == {"bn,curves"}
    assert not (tmp_path / "dvw" / "clamp").exists()  # what dvw does not record is not copied

    # the same trials trained here: the copies are what training them gives, bit for bit
    control = run_study(depth_vs_width_like("control"), store, say=lines.append, reuse=False)
    assert control.reused == 0 and control.done == 4
    trained = load(tmp_path, "control")
    trained = trained[trained["trainable"] == "bn"].set_index("seed")
    assert set(trained["trial_id"]) == set(taken["trial_id"])
    for column in ("test_acc", "test_loss"):
        assert trained[column].sort_index().equals(taken[column].sort_index())
    for table in ("bn", "curves"):
        here = load(tmp_path, "control", table)
        copied = load(tmp_path, "dvw", table)
        ids = set(taken["trial_id"])
        columns = [c for c in here.columns if not c.endswith("seconds")]  # wall-clock times differ, of course
        a = here[here["trial_id"].isin(ids)][columns].sort_values(columns).reset_index(drop=True)
        b = copied[copied["trial_id"].isin(ids)][columns].sort_values(columns).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_exact=True)

    again = run_study(depth_vs_width_like(), store, say=lines.append)
    assert again.skipped == 4 and again.reused == 0 and again.ran == 0
    assert len(load(tmp_path, "dvw")) == 4

    from sweeper.cli import main  # `sweeper status` counts, of the done, the copied

    capsys.readouterr()
    assert main(["status", str(tmp_path), "--json"]) == 0
    studies = {s["study"]: s for s in json.loads(capsys.readouterr().out)["studies"]}
    assert (studies["dvw"]["done"], studies["dvw"]["copied"]) == (4, 2)
    assert studies["sparse"]["copied"] == studies["control"]["copied"] == 0


def test_a_study_that_records_more_trains_its_own_and_rerun_is_never_copied(ray_local, tmp_path):
    store = Store(tmp_path)
    run_study(depth_vs_width_like(), store, say=lambda _: None)
    summary = run_study(sparsity_like(), store, say=lambda _: None)  # dvw has no clamp or dead ReLUs
    assert summary.reused == 0 and summary.done == 2
    assert load(tmp_path, "sparse")["reused_from"].isna().all()

    ids = {s.trial_id for s in depth_vs_width_like().specs() if s.trainable == "bn"}
    summary = run_study(depth_vs_width_like("again"), store, rerun=ids, say=lambda _: None)
    again = load(tmp_path, "again")
    assert summary.reused == 2 and summary.ran == 2  # `rerun` names trials to train again: never copied
    assert set(again.loc[again["reused_from"].isna(), "trial_id"]) == ids
    summary = run_study(depth_vs_width_like("third"), store, say=lambda _: None)
    assert summary.reused == 4 and summary.ran == 0
    assert load(tmp_path, "third")["reused_from"].str.startswith("dvw/").sum() == 2  # the first study by name
    assert load(tmp_path, "third")["reused_from"].str.startswith("again/").sum() == 2


def test_a_copy_killed_before_its_row_is_made_again_and_never_doubled(sparse_store, tmp_path):
    import pyarrow.parquet as pq

    store = Store(copy_of(sparse_store, tmp_path))
    older = next((tmp_path / "sparse" / "trials").glob("*.parquet"))  # a row of a version before bn_params:
    pq.write_table(pq.read_table(older).drop_columns(["bn_params"]), older)  # pandas reads the column as floats
    run_study(depth_vs_width_like(), store, say=lambda _: None)
    assert load(tmp_path, "dvw")["bn_params"].notna().sum() == 3  # the older row's copy has none either
    copied = load(tmp_path, "dvw").dropna(subset=["reused_from"])
    victim = copied["trial_id"].iloc[0]
    (tmp_path / "dvw" / "trials" / f"{victim}.parquet").unlink()  # as if killed between tables and row
    summary = run_study(depth_vs_width_like(), store, say=lambda _: None)
    assert summary.reused == 1 and summary.ran == 0
    dvw = load(tmp_path, "dvw")
    assert len(dvw) == 4 and dvw["trial_id"].is_unique
    bn = load(tmp_path, "dvw", "bn")
    assert (bn.groupby("trial_id").size() == bn.groupby("trial_id").size().iloc[0]).all()


def test_plan_says_what_run_would_copy_and_leaves_it_out_of_the_cost(sparse_store, tmp_path):
    copy_of(sparse_store, tmp_path / "store")

    def plan(subsets, *more):
        path = tmp_path / f"{'_'.join(subsets)}.py"
        path.write_text("from sweeper import Study\n"
                        f"study = Study(name='dvw', dataset='digits', axes={{'trainable': {subsets!r}, 'seed': [0, 1]}}, "
                        f"recipe={RECIPE!r})\n")
        return sweeper_in_process("plan", path, *more, cwd=REPO)

    r = plan(["bn", "output"], "--store", tmp_path / "store", "--json")
    assert r.returncode == 0, r.stderr
    taking = json.loads(r.stdout)
    assert taking["count"] == 4 and taking["done"] == 0 and taking["reused"] == 2
    assert sorted(bool(t["reuse"]) for t in taking["trials"]) == [False, False, True, True]
    output_only = json.loads(plan(["output"], "--json").stdout)["estimate"]["total_flops"]
    assert taking["estimate"]["total_flops"] == output_only  # the copies cost nothing
    text = plan(["bn", "output"], "--store", tmp_path / "store").stdout
    assert "4 trials (0 already done, 2 to take from other studies of the store)" in text

    from sweeper.cli import main  # the command, with --no-reuse: every trial trained here

    assert main(["run", str(tmp_path / "bn_output.py"), "--store", str(tmp_path / "store"), "--no-reuse",
                 "--no-figures"]) == 0
    assert load(tmp_path / "store", "dvw")["reused_from"].isna().all()


def test_no_reuse_is_passed_on_by_submit(tmp_path):
    """(`sweeper slurm` passes it on too: tests/test_slurm.py.)"""
    from sweeper.cli import build_parser
    from sweeper.orchestration.submit import entrypoint

    parse = build_parser().parse_args
    submit = parse(["submit", "s.py", "--address", "http://127.0.0.1:8265", "--store", "s3://b/p", "--no-reuse"])
    assert "--no-reuse" in entrypoint(submit, "s.py").split()
    assert "--no-reuse" not in entrypoint(parse(["submit", "s.py", "--address", "http://127.0.0.1:8265",
                                                 "--store", "s3://b/p"]), "s.py").split()


def test_copies_on_an_object_store(ray_local, s3_store):
    store = Store(s3_store)
    run_study(sparsity_like(), store, say=lambda _: None)
    summary = run_study(depth_vs_width_like(), store, say=lambda _: None)
    assert summary.reused == 2 and summary.ok
    dvw = load(s3_store, "dvw")
    assert dvw["reused_from"].str.startswith("sparse/").sum() == 2
    assert set(load(s3_store, "dvw", "bn")["trial_id"]) == set(dvw["trial_id"])


@pytest.mark.parametrize("name", ["bn", "clamp", "dead_relu"])
def test_each_measurement_writes_the_table_of_its_name(name):
    """`TrainSpec.keeps_table` drops a copied table by the name of the measurement that wrote it."""
    import torch

    from sweeper.experiments.train.measures import MEASUREMENTS, Context, snapshot_norms
    from sweeper.experiments.train.model import build_model

    s = spec(measure=[name])
    model = build_model(s).eval()
    x = torch.randn(4, 1, 8, 8)
    ctx = Context(model=model, spec=s, evaluate=lambda: {"test_acc": 0.5, "test_top5": 1.0},
                  test_batches=lambda: [(x, torch.zeros(4, dtype=torch.long))], initial=snapshot_norms(model))
    assert set(MEASUREMENTS[name](ctx)) == {name}


def test_a_nightly_of_two_studies_copies_what_the_first_trained_and_says_so(ray_local, tmp_path):
    from sweeper.cli import main
    from sweeper.report.layout import REPORTS, list_reports

    files = []
    for name, axes, measure in (("sparse", {"seed": [0, 1]}, SPARSITY),
                                ("dvw", {"trainable": ["bn", "output"], "seed": [0, 1]}, ["bn"])):
        recipe = RECIPE if name == "dvw" else {**RECIPE, "trainable": "bn"}
        path = tmp_path / f"{name}.py"
        path.write_text("from sweeper import Study\n"
                        f"study = Study(name={name!r}, dataset='digits', axes={axes!r}, recipe={recipe!r}, "
                        f"measure={measure!r}, figures=['accuracy_vs_bn_params'])\n")
        files.append(str(path))
    store = tmp_path / "store"
    assert main(["nightly", *files, "--store", str(store)]) == 0
    report = list_reports(Store(store))[-1]
    summary = json.loads((store / REPORTS / report / "summary.json").read_text())
    dvw = next(s for s in summary["studies"] if s["study"] == "dvw")
    assert dvw["reused"] == 2 and dvw["ran"] == 2 and dvw["done"] == 2
    assert "2 trials copied from other studies of the store" in (store / REPORTS / report / "report.md").read_text()

