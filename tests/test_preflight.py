"""`sweeper run` and `sweeper nightly` check their environment with one function
(`sweeper.preflight.check_environment`): the same complaints, in the same order (store, data,
cluster), one line and exit 2 before any work, nothing written (not even the store's folder). No Ray starts: every case fails
before a sweep would."""
from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.cli import main
from sweeper.preflight import datasets_of
from sweeper.study import load_study

# `inputs` names a dataset only in some of its values: the decomposed kind draws a batch from it.
DECOMPOSED = """\
from sweeper import Study

study = Study(name="dec", experiment="decomposed",
              axes={"inputs": ["gaussian", "cifar10"], "seed": [0]},
              recipe={"width": 8, "depth": 3, "batch": 4})
"""
TRAIN = """\
from sweeper import Study

study = Study(name="tiny", dataset="digits", axes={"seed": [0]},
              recipe={"model": "resnet-8", "width": 4, "epochs": 1, "augment": "none"})
"""
STORE = "--store: store {} is not writable"
DATA = "data_root: no cifar-10-batches-py under"
ADDRESS = "--address: no Ray cluster answers at 127.0.0.1:9"


@pytest.fixture
def paths(tmp_path, monkeypatch) -> dict[str, Path]:
    monkeypatch.delenv("SWEEPER_DATA_ROOT", raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder under a regular file cannot be created, even by root
    (tmp_path / "dec.py").write_text(DECOMPOSED)
    (tmp_path / "tiny.py").write_text(TRAIN)
    (tmp_path / "empty").mkdir()
    return {"dec": tmp_path / "dec.py", "tiny": tmp_path / "tiny.py", "bad_store": blocker / "store",
            "store": tmp_path / "store", "empty": tmp_path / "empty"}


def test_the_datasets_a_study_reads_include_its_inputs(paths):
    assert datasets_of(load_study(paths["dec"])) == ["cifar10"]  # not `gaussian`, which needs no data
    assert datasets_of(load_study(paths["tiny"])) == ["digits"]


# (what is wrong, the study, the line both commands print): several things wrong at once are
# reported in the order store, data, cluster.
CASES = {
    "store, data and cluster": ("dec", True, True, True, STORE),
    "data and cluster": ("dec", False, True, True, DATA),
    "cluster": ("tiny", False, False, True, ADDRESS),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["run", "nightly"])
def test_run_and_nightly_refuse_the_same_environment_in_the_same_order(case, command, paths, capsys):
    study, bad_store, no_data, dead_cluster, expect = CASES[case]
    store = paths["bad_store"] if bad_store else paths["store"]
    argv = [command, str(paths[study]), "--store", str(store)]
    argv += ["--data-root", str(paths["empty"])] if no_data else []
    argv += ["--address", "127.0.0.1:9"] if dead_cluster else []
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    expect = expect.format(store)
    assert len(lines) == 1 and expect in lines[0], err
    if command == "nightly" and expect == DATA:  # a nightly names the study file whose data is missing
        assert lines[0].startswith(f"sweeper: error: {paths[study]}: {DATA}"), err
    # refused before any work, and a refusal writes nothing: no store folder, marker, lock or report
    # (issue 20; a nightly used to take its lock first, leaving the store folder and the lock file)
    assert out == "" and not store.exists(), out


# -- bf16 on a CPU without oneDNN bf16 --------------------------------------------------------------
def test_bf16_cpu_trials_are_flagged_exactly_where_pytorch_has_no_fast_bf16(tmp_path, monkeypatch, capsys):
    """On an AVX2-only CPU PyTorch runs bf16 convolutions on a slow fallback (here `depth_vs_width
    --scale cpu` timed 4.0 days in bf16 against 9.0 hours in fp32): `plan` and `run` say so, naming
    the field and the --set that changes it; GPU and fp32 trials, or a CPU with oneDNN bf16, get nothing."""
    import torch

    from sweeper.preflight import slow_cpu_bf16

    study = load_study(Path(__file__).parents[1] / "studies" / "depth_vs_width.py", scale="cpu")
    specs = study.specs()
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    note = slow_cpu_bf16(specs, 0, "cpu")
    assert (note is None) == native, note  # this machine's own answer, whichever it is
    for supported in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda s=supported: s)
        note = slow_cpu_bf16(specs, 0, "cpu")
        assert (note is None) == supported
        assert slow_cpu_bf16(specs, 0.25, "cpu") is None  # GPU trials
        assert slow_cpu_bf16([], 0, "cpu") is None
    assert "cpu.recipe.precision is bf16" in note and "--set cpu.recipe.precision=fp32" in note
    (tmp_path / "tiny.py").write_text(TRAIN)
    fp32 = load_study(tmp_path / "tiny.py")
    assert slow_cpu_bf16(fp32.specs(), 0, "full") is None
    bf16 = load_study(tmp_path / "tiny.py", overrides=["recipe.precision=bf16"])
    assert "--set recipe.precision=fp32" in slow_cpu_bf16(bf16.specs(), 0, "full")
    # `sweeper plan` says it under its estimate (the warning is computed before any timing)
    assert main(["plan", str(tmp_path / "tiny.py"), "--set", "recipe.precision=bf16"]) == 0
    assert "  warning: recipe.precision is bf16" in capsys.readouterr().out
