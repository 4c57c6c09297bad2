"""`--log tensorboard|mlflow|wandb`: the quickstart study (--quick) through the CLI with all three
trackers at once, and every trial's parameters and per-epoch test_acc read back from what each
tracker wrote (TensorBoard's event files, MLflow's runs, W&B's offline run files)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
from conftest import sweeper_in_process

from sweeper.store import Store
from sweeper.trackers import Tracker, check_installed, parse_tracker

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "studies" / "quickstart.py"


def sweeper(*args, cwd, env=None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", **(env or {})}
    environment = {k: v for k, v in environment.items() if v is not None}  # None: unset
    return subprocess.run([sys.executable, "-m", "sweeper.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=900)


# -- readers of the trackers' files (the formats themselves, no tracker UI) ----------------------
def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file in a folder (TFRecord: length, its CRC, an Event
    protobuf, its CRC)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def tensorboard_hparams(folder: Path) -> dict[str, object]:
    """The hyperparameters TensorBoard's HParams tab shows for a run (its session_start_info)."""
    from tensorboardX.proto import event_pb2, plugin_hparams_pb2

    for path in folder.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    plugin = plugin_hparams_pb2.HParamsPluginData()
                    plugin.ParseFromString(value.metadata.plugin_data.content)
                    return {k: v.string_value or v.number_value for k, v in plugin.session_start_info.hparams.items()}
    return {}


def wandb_records(path: Path):
    """The records of a W&B run file (`run-ID.wandb`: a ':W&B' header, then LevelDB's log format:
    32 KiB blocks of CRC, length, type and a piece of one protobuf Record)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pieces = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def wandb_run(path: Path) -> dict:
    """A W&B offline run's name, config and history rows."""
    run = {"name": None, "config": {}, "history": []}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["name"] = record.run.display_name
            run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
    return run


# -- the sweep -----------------------------------------------------------------------------------
def test_quickstart_with_all_three_trackers(tmp_path):
    env = {"WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": str(tmp_path / "no-netrc")}  # not logged in
    store = tmp_path / "store"
    run = sweeper("run", str(QUICKSTART), "--quick", "--store", str(store), "--no-figures", "--progress", "lines",
                  "--log", "tensorboard", "--log", "mlflow", "--log", "wandb", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    study = "quickstart-quick"
    trials = pd.read_parquet(store / study / "trials").set_index("trial_id")
    assert len(trials) == 3 and trials["status"].eq("done").all()
    epochs = int(trials["epochs"].iloc[0])
    curves = pd.read_parquet(store / study / "curves")
    out = run.stdout + run.stderr
    assert "offline" in out and "tensorboard" in out  # the run says where each tracker writes
    assert "performance bottleneck" not in out  # no tracker holds up the driver
    # the tracker folders are no tables
    assert not {"tensorboard", "mlruns", "wandb"} & set(Store(str(store)).tables(study))

    # TensorBoard: <store>/<study>/tensorboard/<trial_id>/, test_acc at every epoch, the spec as hparams
    for tid, row in trials.iterrows():
        folder = store / study / "tensorboard" / tid
        acc = dict(tensorboard_scalars(folder)["ray/tune/test_acc"])
        assert sorted(acc) == list(range(1, epochs + 1))
        assert acc[epochs] == pytest.approx(row["test_acc"], abs=1e-6)  # float32 in the event file
        per_epoch = curves[curves["trial_id"] == tid].set_index("epoch")["test_acc"]
        assert [acc[e] for e in range(1, epochs)] == pytest.approx([per_epoch[e] for e in range(1, epochs)], abs=1e-6)
        hparams = tensorboard_hparams(folder)
        assert hparams["trial_id"] == tid and hparams["trainable"] == row["trainable"]
        assert hparams["depth"] == row["depth"] and hparams["lr"] == pytest.approx(row["lr"])

    # MLflow: an SQLite store in <store>/<study>/mlruns, one finished run per trial
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / study / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(trials.index)
    for tid, row in trials.iterrows():
        r = runs[tid]
        assert r.info.status == "FINISHED"
        assert r.data.params["trainable"] == row["trainable"] and r.data.params["trial_id"] == tid
        assert float(r.data.params["weight_decay"]) == row["weight_decay"]
        history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "test_acc")}
        assert sorted(history) == list(range(1, epochs + 1))
        assert history[epochs] == pytest.approx(row["test_acc"])
        assert r.data.metrics["test_acc"] == pytest.approx(row["test_acc"])

    # W&B: offline (not logged in), one run per trial under <store>/<study>/wandb/
    files = sorted((store / study / "wandb").glob("offline-run-*/run-*.wandb"))
    runs = {r["name"]: r for r in map(wandb_run, files)}
    assert set(runs) == set(trials.index)
    for tid, row in trials.iterrows():
        r = runs[tid]
        assert r["config"]["trainable"] == row["trainable"] and r["config"]["study"] == study
        assert "point" not in r["config"] and "store" not in r["config"]  # the spec, not Tune's config
        acc = {h["epoch"]: h["test_acc"] for h in r["history"] if "test_acc" in h}
        assert sorted(acc) == list(range(1, epochs + 1))  # every epoch, in order
        assert acc[epochs] == pytest.approx(row["test_acc"])


# -- bad input: one line, exit 2, before anything runs ---------------------------------------------
def test_an_unknown_tracker_is_one_line(tmp_path):
    run = sweeper_in_process("run", QUICKSTART, "--quick", "--store", tmp_path / "s", "--log", "neptune", cwd=tmp_path)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "--log" in run.stderr and "tensorboard, mlflow, wandb" in run.stderr
    assert not (tmp_path / "s").exists()


def test_a_missing_tracker_library_names_its_extra(tmp_path):
    # a folder that shadows the package with one that cannot be found: find_spec sees None
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text("import sys\nsys.modules['mlflow'] = None\n")
    env = {"PYTHONPATH": f"{shadow}{os.pathsep}{REPO}"}
    run = sweeper("run", str(QUICKSTART), "--quick", "--store", str(tmp_path / "s"), "--log", "mlflow",
                  cwd=tmp_path, env=env)
    assert run.returncode == 2, run.stderr
    assert "pip install 'sweeper[mlflow]'" in run.stderr and run.stderr.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_a_bad_wandb_mode_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "bogus")
    run = sweeper_in_process("run", QUICKSTART, "--quick", "--store", tmp_path / "s", "--log", "wandb", cwd=tmp_path)
    assert run.returncode == 2 and "WANDB_MODE='bogus'" in run.stderr and "offline" in run.stderr
    assert not (tmp_path / "s").exists()


def test_tracker_values():
    assert parse_tracker("tensorboard") == Tracker("tensorboard")
    assert parse_tracker("mlflow=http://127.0.0.1:5000") == Tracker("mlflow", "http://127.0.0.1:5000")
    assert parse_tracker("wandb=bn-only") == Tracker("wandb", "bn-only")
    with pytest.raises(ValueError, match="local folder"):
        parse_tracker("tensorboard=s3://bucket/tb")
    check_installed([Tracker("tensorboard"), Tracker("mlflow"), Tracker("wandb")])  # the test extra has them


def test_an_object_store_keeps_its_trackers_local(ray_local, s3_store, tmp_path):
    """An s3:// store cannot hold a live SQLite file or an appended event file: with one, the
    trackers write under ./trackers/<bucket>/<prefix>/<study>/ (the run says so), nothing of
    theirs goes to the bucket, and the results do."""
    (tmp_path / "tiny.py").write_text(
        "from sweeper import Study\n"
        "study = Study(name='tiny', dataset='digits', measure=[], recipe={'model': 'resnet-8-4', 'epochs': 2,"
        " 'augment': 'none', 'batch_size': 256, 'train_size': 256, 'test_size': 128})\n")
    run = sweeper_in_process("run", "tiny.py", "--store", s3_store, "--no-figures", "--log", "tensorboard",
                             "--log", "mlflow", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    import sweeper as api

    (row,) = api.load(s3_store, "tiny").to_dict("records")
    bucket = s3_store.split("/")[2]
    local = tmp_path / "trackers" / bucket / "sweeps" / "tiny"
    assert str(local / "tensorboard") in run.stdout and str(local / "mlruns") in run.stdout
    acc = dict(tensorboard_scalars(local / "tensorboard" / row["trial_id"])["ray/tune/test_acc"])
    assert acc[2] == pytest.approx(row["test_acc"], abs=1e-6)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{local / 'mlruns' / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert r.info.run_name == row["trial_id"] and r.data.metrics["test_acc"] == pytest.approx(row["test_acc"])
    store = Store(s3_store)
    assert not {"tensorboard", "mlruns", "wandb"} & {i.base_name for i in store.fs.get_file_info(
        pafs.FileSelector(store.path("tiny")))}


def test_submit_and_nightly_take_log():
    """`submit` hands --log on to the job's `sweeper run`; `nightly` takes it (not `schedule`,
    whose --log is its log file)."""
    from argparse import Namespace

    from sweeper.cli import build_parser
    from sweeper.orchestration.submit import entrypoint

    args = build_parser().parse_args(["submit", "s.py", "--address", "http://h:8265", "--store", "s3://b/p",
                                      "--log", "mlflow=http://m:5000", "--log", "wandb"])
    assert args.log == [Tracker("mlflow", "http://m:5000"), Tracker("wandb")]
    assert "--log mlflow=http://m:5000 --log wandb" in entrypoint(args, "s.py")
    assert "--log" not in entrypoint(Namespace(**{**vars(args), "log": []}), "s.py")
    nightly = build_parser().parse_args(["nightly", "s.py", "--store", "st", "--log", "tensorboard=tb"])
    assert nightly.log == [Tracker("tensorboard", "tb")]
    schedule = build_parser().parse_args(["schedule", "s.py", "--store", "st", "--log", "night.log"])
    assert schedule.log == "night.log"


@pytest.mark.parametrize("skip", [True, False])
def test_a_sweep_without_log_imports_no_tracker_library(skip):
    """Ray Tune's usage count of a run's callbacks imports mlflow and wandb when they are installed
    (3.4 s of a sweep's start); building a sweep's callbacks turns that count off. Without it (the
    control) the same call imports both: the check can fail."""
    build = "tracker_callbacks([], None, 's')" if skip else "pass"
    code = ("import sys\nfrom ray import tune\nfrom ray.air._internal import usage\n"
            f"from sweeper.orchestration.trackers import tracker_callbacks\n{build}\n"
            "usage.tag_callbacks([tune.Callback()])\n"
            "print('mlflow' in sys.modules, 'wandb' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == (["False", "False"] if skip else ["True", "True"])
