"""The command line: exit codes, one-line errors, machine-readable output."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def sweeper(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "sweeper.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_plan_json_lists_trials():
    r = sweeper("plan", "studies/quickstart.py", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["count"] == len(plan["trials"]) == 12
    assert {"trial_id", "depth", "width", "trainable", "seed", "model"} <= set(plan["trials"][0])


def test_params_json_keyed_by_model():
    r = sweeper("params", "resnet-110", "wrn-14-8", "--json", "--trainable", "random")
    out = json.loads(r.stdout)
    assert set(out) == {"resnet-110", "wrn-14-8"}
    assert out["resnet-110"]["batchnorm"] == 8288 and out["resnet-110"]["trainable"] == 8288


@pytest.mark.parametrize("args,needle", [
    (["plan", "studies/nope.py"], "studies/nope.py: no such study file"),
    (["run", "studies/quickstart.py", "--bogus"], "unrecognized arguments: --bogus"),
    (["params", "resnet-15"], "resnet-15: depth: CIFAR ResNet depth must be 6n+2"),
    (["params", "vgg-16"], "unknown model family 'vgg'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_errors_are_one_line_exit_2(args, needle):
    r = sweeper(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_study_writes_nothing(tmp_path):
    study = tmp_path / "bad.py"
    study.write_text("from sweeper import Study\nstudy = Study(name='b', dataset='digits', axes={'trainable': ['bn', 'bnn']})\n")
    store = tmp_path / "store"
    r = sweeper("run", study, "--store", store)
    assert r.returncode == 2 and "axes.trainable: unknown trainable subset 'bnn'; valid choices:" in r.stderr
    assert not store.exists()


def test_missing_data_root_is_refused_before_work(tmp_path):
    study = tmp_path / "c.py"
    study.write_text("from sweeper import Study\nstudy = Study(name='c', dataset='cifar10', axes={'seed': [0]})\n")
    r = sweeper("run", study, "--store", tmp_path / "store", "--data-root", tmp_path / "empty")
    assert r.returncode == 2
    assert "data_root: no cifar-10-batches-py under" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_dead_address_is_refused_within_seconds(tmp_path):
    r = sweeper("run", "studies/quickstart.py", "--store", tmp_path / "s", "--address", "127.0.0.1:9")
    assert r.returncode == 2 and "--address: no Ray cluster answers at 127.0.0.1:9" in r.stderr


def test_debug_shows_the_traceback():
    r = sweeper("--debug", "plan", "studies/nope.py")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_plan_estimates_cost_from_flops():
    from sweeper.cost import forward_flops, trial_flops
    from sweeper.experiments.train.spec import TrainSpec

    # ResNet-8 width 4 on 1x8x8 digits, counted by hand: conv FLOPs are 2*k*k*c_in*c_out*h*w
    convs = 2 * 9 * (1 * 4 * 64 + 4 * 4 * 64 * 2 + 4 * 8 * 16 + 8 * 8 * 16 + 8 * 16 * 4 + 16 * 16 * 4)
    shortcuts = 2 * (4 * 8 * 16 + 8 * 16 * 4)
    linear = 2 * 16 * 10
    assert forward_flops("resnet", 8, 4, "digits", "relu", "batch") == convs + shortcuts + linear
    spec = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-4", "epochs": 3, "trainable": "all"})
    f = convs + shortcuts + linear
    assert trial_flops(spec) == f * (3 * (1442 * 3 + 355) + 355)
    r = sweeper("plan", "studies/quickstart.py", "--json")
    est = json.loads(r.stdout)["estimate"]
    assert est["total_flops"] > 0 and est["total_trial_seconds"] > 0 and est["unknown_trials"] == 0
