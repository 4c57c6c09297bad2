"""The laptop scale (`--scale cpu`): the cpu variants' grids are pinned (the issue's recipe, matched
BN counts, enough seeds), and `--scale` reaches every command that runs a study, `--quick` kept."""
from __future__ import annotations

from pathlib import Path

import pytest

from sweeper import cli
from sweeper.errors import SweeperError
from sweeper.study import load_study

STUDIES = Path(__file__).resolve().parents[1] / "studies"

# study -> (trials, first id, last id)
CPU_GRIDS = {  # count, first and last trial id, testing after every fifth epoch (eval_every 5)
    "depth_vs_width.py": (63, "ad0d39d151e044ce", "9689aeca0f1e1c95"),
    "sparsity.py": (21, "2ff12090d263f8ef", "d2bbd097806590bd"),
    "norm_types.py": (72, "d80dbed56d521fdd", "9fe3fb93152a104c"),
}
# ... and as the recorded runs (docs/results.md) had them, testing every epoch (eval_every 1)
RECORDED_IDS = {
    "depth_vs_width.py": ("12e3d5dbaa960072", "2f0dfb741c9a2576"),
    "sparsity.py": ("8578705be968b556", "5a092e86c6e71069"),
    "norm_types.py": ("cd42cc70d5b6314f", "1eb49de621d6f0c2"),
}


def bn_count(model: str) -> int:
    from sweeper.experiments.train.model import meta_model
    from sweeper.experiments.train.spec import TrainSpec
    from sweeper.models.params import count_groups

    return count_groups(meta_model(TrainSpec.from_values({"model": model})))["batchnorm"]


@pytest.mark.parametrize("path", sorted(CPU_GRIDS))
def test_cpu_variants_run_the_laptop_recipe_with_three_seeds(path):
    study = load_study(STUDIES / path, scale="cpu")
    full = load_study(STUDIES / path)
    specs = study.specs()
    count, first, last = CPU_GRIDS[path]
    assert study.name == f"{full.name}-cpu" and study.resources == {"cpu": 1, "gpu": 0}
    assert len(specs) == count
    assert (specs[0].trial_id, specs[-1].trial_id) == (first, last)
    for s in specs:  # the independent check, in bf16, at base width 8
        assert (s.dataset, s.train_size, s.test_size, s.epochs, s.batch_size, s.lr, s.milestones, s.augment,
                s.precision, s.eval_every) == ("cifar10", 10_000, 0, 20, 128, 0.1, (0.5, 0.75), "crop_flip", "bf16", 5)
        assert s.width >= 8
    assert sorted({s.seed for s in specs}) == [0, 1, 2]
    # a grid: every configuration has all three seeds
    configs = {}
    for s in specs:
        configs.setdefault(s.replace(seed=0).trial_id, set()).add(s.seed)
    assert all(seeds == {0, 1, 2} for seeds in configs.values())


@pytest.mark.parametrize("path", sorted(RECORDED_IDS))
def test_eval_every_1_gives_back_the_recorded_runs_ids(path):
    # docs/laptop_scale.md: a store of the earlier runs carries on with --set cpu.recipe.eval_every=1
    specs = load_study(STUDIES / path, scale="cpu", overrides=["cpu.recipe.eval_every=1"]).specs()
    assert (specs[0].trial_id, specs[-1].trial_id) == RECORDED_IDS[path]


def test_depth_vs_width_cpu_has_three_deeper_wider_pairs_at_matched_bn_counts():
    specs = load_study(STUDIES / "depth_vs_width.py", scale="cpu").specs()
    assert {s.trainable for s in specs} == {"bn", "output", "random"}
    assert {s.random_k for s in specs} == {2}  # `random` trains as many weights as BN has parameters
    models = sorted({(s.depth, s.width, s.model) for s in specs})
    deeper = {m: bn_count(m) for d, w, m in models if w == 8 and d > 14}
    wider = {m: bn_count(m) for d, w, m in models if d == 14 and w > 8}
    assert bn_count("resnet-14-8") == 560 and ("resnet-14-8" in {m for _, _, m in models})
    # the table in studies/depth_vs_width.py
    assert deeper == {"resnet-20-8": 784, "resnet-26-8": 1008, "resnet-32-8": 1232}
    assert wider == {"resnet-14-11": 770, "resnet-14-14": 980, "resnet-14-18": 1260}
    pairs = list(zip(sorted(deeper, key=deeper.get), sorted(wider, key=wider.get)))
    assert len(pairs) >= 3
    for deep, wide in pairs:
        assert abs(deeper[deep] / wider[wide] - 1) <= 0.10, (deep, wide)
    # the formula the table states: 8 (14 + 28 n) for ResNet-(6n+2)-8, 70 W for ResNet-14-W
    assert all(bn_count(f"resnet-{6 * n + 2}-8") == 8 * (14 + 28 * n) for n in (1, 2, 3, 4, 5))
    assert all(bn_count(f"resnet-14-{w}") == 70 * w for w in (8, 11, 14, 18))


def test_sparsity_cpu_reads_bn_only_against_depth_and_width():
    specs = load_study(STUDIES / "sparsity.py", scale="cpu").specs()
    dvw = load_study(STUDIES / "depth_vs_width.py", scale="cpu").specs()
    assert {s.trainable for s in specs} == {"bn"}
    assert {s.model for s in specs} == {s.model for s in dvw}  # the same networks
    assert all(set(s.measure) == {"bn", "clamp", "dead_relu"} for s in specs)


def test_norm_types_cpu_sets_bn_only_against_the_random_baseline_for_every_layer():
    specs = load_study(STUDIES / "norm_types.py", scale="cpu").specs()
    full = load_study(STUDIES / "norm_types.py").specs()
    assert {s.norm for s in specs} == {s.norm for s in full}
    assert {s.trainable for s in specs} == {"bn", "random"}
    assert {(s.depth, s.width) for s in specs} == {(8, 8), (20, 8)}


def test_cpu_variants_cost_about_three_hours_on_two_cores_at_this_machines_bf16_rate():
    """The sizing rule, in FLOPs (what `sweeper plan --scale cpu` divides by the measured rate; the
    rate itself moves with the machine's load): the three together 2.0-2.5e15 FLOPs when sized
    (2.38e15, testing every epoch), about 3 hours of two 1-thread bf16 trials at BENCHMARKS.md's bf16
    BN-only step rate (ResNet-14 at width 16: 13.6 GFLOP in 0.120 s, 113 GFLOP/s); 1.74e15 testing
    every fifth epoch. Width-8 networks reach less of that rate: the real trials took 3.5-7x longer."""
    from sweeper.plan import trial_cost

    def total(overrides):
        return sum(trial_cost(s).flops for p in CPU_GRIDS
                   for s in load_study(STUDIES / p, scale="cpu", overrides=overrides).specs())

    assert 2.0e15 < total(["cpu.recipe.eval_every=1"]) < 2.5e15
    assert 1.6e15 < total([]) < 1.9e15


# -- the option ----------------------------------------------------------------------------------
TINY = """
from sweeper import Study
study = Study(name="tiny", dataset="digits", axes={"trainable": ["bn", "output"]},
              recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none"},
              quick={"recipe": {"epochs": 2}}, cpu={"recipe": {"epochs": 3}})
"""


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    return path


def test_scale_picks_the_variant_and_quick_stays_an_alias(tiny):
    assert [load_study(tiny, scale=s).name for s in ("quick", "cpu", "full")] == ["tiny-quick", "tiny-cpu", "tiny"]
    assert {s.epochs for s in load_study(tiny, scale="cpu").specs()} == {3}
    assert load_study(tiny, quick=True).name == "tiny-quick"
    parser = cli.build_parser()
    for argv, scale in ((["--quick"], "quick"), (["--scale", "quick"], "quick"), (["--scale", "cpu"], "cpu"),
                        ([], "full"), (["--scale", "full"], "full"), (["--quick", "--scale", "quick"], "quick")):
        for command in ("plan", "run"):
            assert cli.scale_of(parser.parse_args([command, str(tiny), *argv])) == scale
    with pytest.raises(SweeperError, match="--quick is --scale quick; it cannot go with --scale cpu"):
        cli.scale_of(parser.parse_args(["plan", str(tiny), "--quick", "--scale", "cpu"]))


def test_plan_and_run_take_scale_and_refuse_bad_input_in_one_line(tiny, tmp_path, capsys):
    assert cli.main(["plan", str(tiny), "--scale", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "study tiny-cpu: 2 trials (0 already done)"
    assert cli.main(["plan", str(tiny), "--quick"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "study tiny-quick: 2 trials (0 already done)"
    assert cli.main(["plan", str(STUDIES / "quickstart.py"), "--scale", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"sweeper: error: {STUDIES / 'quickstart.py'}: cpu: this study declares no cpu variant"]
    assert cli.main(["run", str(tiny), "--quick", "--scale", "cpu", "--store", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sweeper: error: --scale: --quick is --scale quick; it cannot go with --scale cpu"]
    assert not (tmp_path / "s").exists()
    assert cli.main(["plan", str(tiny), "--scale", "laptop"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sweeper: error: sweeper plan: argument --scale: invalid choice: 'laptop' (choose from 'quick', 'cpu', 'full')"]


def test_scale_is_passed_on_by_schedule_submit_and_slurm(tiny, tmp_path):
    from sweeper.nightly.schedule import cron_line
    from sweeper.orchestration.submit import entrypoint
    from sweeper.slurm.script import run_arguments

    parser = cli.build_parser()
    store = str(tmp_path / "store")
    for argv, passed in ((["--quick"], ["--quick"]), (["--scale", "quick"], ["--quick"]),
                         (["--scale", "cpu"], ["--scale", "cpu"]), ([], []), (["--scale", "full"], [])):
        line = cron_line(parser.parse_args(["schedule", str(tiny), "--store", store, "--at", "02:30", *argv]))
        assert (f" --store {store} {' '.join(passed)} --tolerance" if passed else f" --store {store} --tolerance") in line
        job = entrypoint(parser.parse_args(["submit", str(tiny), "--address", "http://h:8265", "--store",
                                            "s3://b/p", *argv]), "tiny.py")
        assert job.endswith("--store s3://b/p" + "".join(" " + a for a in passed))
        args = parser.parse_args(["slurm", str(tiny), "--store", "s3://b/p", "--nodes", "1", "--gpus-per-node", "1",
                                  "--cpus-per-node", "4", "--time", "1:00:00", *argv])
        assert run_arguments(args)[:len(passed)] == passed
    # and the nightly a schedule line runs takes it
    nightly = parser.parse_args(["nightly", str(tiny), "--store", store, "--scale", "cpu"])
    assert cli.scale_of(nightly) == "cpu"


def test_plan_shows_k_when_the_trainable_axis_sets_it(tmp_path, capsys):
    path = tmp_path / "k.py"
    path.write_text(TINY.replace('["bn", "output"]', '["bn", "random", "random(k=3)"]'))
    assert cli.main(["plan", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["trial_id", "trainable", "random_k", "done"]
    assert [line.split()[1:3] for line in lines[2:5]] == [["bn", "2"], ["random", "2"], ["random", "3"]]
