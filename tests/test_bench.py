"""`sweeper bench` at tiny sizes: every measurement runs and returns sane, well-formed numbers.

No timed assertions: speed goals are shown by BENCHMARKS.md, not enforced by tests (a shared
2-core machine makes any wall-clock threshold flaky).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sweeper.bench import cli, data_share, figures, flops, run, step, sweeps


def _positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


# -- FLOP counting against an analytic count --------------------------------------------------------
N, C_IN, C, H, CLASSES = 4, 3, 5, 6, 3


def _tiny_net(trainable: str) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(C_IN, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU(),
        nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(C, CLASSES),
    )
    for name, p in net.named_parameters():
        is_bn = name.split(".")[0] in ("1", "4")
        p.requires_grad_(trainable == "all" or is_bn)
    return net


def _step(net):
    x = torch.randn(N, C_IN, H, H)
    y = torch.arange(N) % CLASSES

    def fn():
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()

    return fn


def _conv(c_in: int, c_out: int) -> int:
    return 2 * N * c_out * H * H * c_in * 9  # multiply-adds x 2, stride 1, 'same' padding


FC = 2 * N * C * CLASSES


def test_flop_count_equals_analytic_count_bn_only():
    # Frozen convs and linear: conv1 runs forward only (nothing before it needs a gradient);
    # conv2 and the linear layer run forward and their input-gradient kernel, no weight gradient.
    expected = _conv(C_IN, C) + 2 * _conv(C, C) + 2 * FC
    assert flops.count_flops(_step(_tiny_net("bn"))) == expected


def test_flop_count_equals_analytic_count_all_trainable():
    # Every weight trains: conv1 adds its weight gradient (no input gradient: the input needs
    # none); conv2 and the linear layer add both gradients.
    expected = 2 * _conv(C_IN, C) + 3 * _conv(C, C) + 3 * FC
    assert flops.count_flops(_step(_tiny_net("all"))) == expected


# -- the training step ---------------------------------------------------------------------------------
def test_measure_step_tiny():
    out = step.measure_step(depth=8, width=8, batch=8, threads=1, repeats=1, warmup=0)
    assert out["onednn"]
    assert set(out["seconds"]) == {"ours", "ours_bf16", "masked", "reference", "full"}
    assert _positive(*out["seconds"].values())
    for key in ("speedup_vs_reference", "bf16_speedup_vs_fp32", "bf16_speedup_vs_reference",
                "frozen_skip_speedup", "bn_only_speedup_vs_full", "ours_gflops_per_s"):
        assert _positive(out[key]), key
    # Frozen convs skip their weight gradients: our step counts fewer FLOPs than the reference.
    assert 0 < out["flops"]["ours"] < out["flops"]["reference"]


def test_measure_step_at_width_4_runs_on_any_cpu():
    """At width 4 the reference trains 1x1 stride-2 shortcuts of 4 input channels, which crash
    PyTorch's oneDNN on CPUs without AVX-512 (sweeper.experiments.train.onednn): there every
    variant runs without oneDNN, and the result says so. In a subprocess, so that a crash fails
    this test rather than the test run."""
    import subprocess
    import sys

    code = ("import json; from sweeper.bench.step import measure_step; "
            "print(json.dumps(measure_step(depth=8, width=4, batch=8, threads=1, repeats=1, warmup=0)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["onednn"] == torch.cpu._is_avx512_supported()
    assert _positive(*out["seconds"].values())


def test_bench_models_match_sweeper_training():
    """Ours is the sweep's own network (same init, BN-only requires_grad); the reference has
    the same weights with every requires_grad True and an optimizer over γ, β only."""
    ours, opt, masks, _ = step.bn_only_model(depth=8, width=4)
    ref, ref_opt = step.reference_model(depth=8, width=4)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
        assert p2.requires_grad
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trainable == {n for n, p in ours.named_parameters() if id(p) in in_opt}
    ref_in_opt = {id(p) for g in ref_opt.param_groups for p in g["params"]}
    assert trainable == {n for n, p in ref.named_parameters() if id(p) in ref_in_opt}
    assert trainable and all(".bn" in f".{n}" or ".shortcut.1." in n for n in trainable)
    assert not masks


def test_bench_times_the_training_loops_own_step():
    """No copy of the step: bench's is `train_step`'s closure, and its bf16 variant runs under the
    loop's own autocast."""
    from sweeper.experiments.train.loop import train_step

    model, opt, masks, spec = step.bn_only_model(depth=8, width=4)
    ours = step.our_step(model, opt, masks, spec)
    assert ours.__code__ is train_step(model, opt, masks, spec, torch.device("cpu")).__code__
    x, y = step.cifar_batch(4, channels_last=True)
    logits, _ = ours(x, y)
    assert logits.dtype == torch.float32
    model, opt, masks, spec = step.bn_only_model(depth=8, width=4, precision="bf16")
    logits, loss = step.our_step(model, opt, masks, spec)(x, y)
    assert spec.precision == "bf16" and logits.dtype == torch.bfloat16 and loss.dtype == torch.float32


def test_bench_network_is_the_one_run_trial_trains():
    """bn_only_model builds, initialises and freezes the network as run_trial does: the same
    tensors trainable, the same frozen weights (training never moves them) and the same initial
    γ, β (the `bn` table's gamma_init, beta_init)."""
    from sweeper.experiments.train.loop import run_trial
    from sweeper.experiments.train.spec import TrainSpec

    seen = {}

    def keep(progress):
        if progress.end:
            seen.update({n: p.detach().clone() for n, p in progress.context.model.named_parameters()
                         if not p.requires_grad})
            seen["trainable"] = {n for n, p in progress.context.model.named_parameters() if p.requires_grad}

    spec = TrainSpec.from_values({"model": "resnet-8", "width": 4, "trainable": "bn", "dataset": "digits",
                                  "epochs": 1, "train_size": 100, "test_size": 50, "batch_size": 50, "augment": "none",
                                  "measure": ["bn"]})
    bn = run_trial(spec, threads=1, callbacks=[keep]).tables["bn"]
    ours = step.bn_only_model(depth=8, width=4, dataset="digits")[0]
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == seen["trainable"]
    frozen = {n: p for n, p in ours.named_parameters() if n not in trainable}
    assert frozen and frozen.keys() == seen.keys() - {"trainable"}
    for name, p in frozen.items():
        assert torch.equal(p, seen[name]), name
    params = dict(ours.named_parameters())
    for layer, rows in bn.groupby("layer", sort=False):
        rows = rows.sort_values("channel")
        assert rows["gamma_init"].tolist() == params[f"{layer}.weight"].tolist(), layer
        assert rows["beta_init"].tolist() == params[f"{layer}.bias"].tolist(), layer
    assert bn["layer"].nunique() == sum(1 for n in trainable if n.endswith(".weight"))


def test_measure_sgemm_tiny():
    out = flops.measure_sgemm(n=64, threads=1, repeats=1)
    assert out["n"] == 64 and _positive(out["seconds"], out["gflops_per_s"])


def test_data_fraction_tiny():
    out = data_share.measure_data_fraction(train_size=256, depth=8, batch=64)
    assert out["steps"] >= 1
    assert 0 < out["data_fraction"] < 1
    assert _positive(out["data_s"], out["step_s"])


# -- figures from a generated store --------------------------------------------------------------------
def test_generate_store_and_figures(tmp_path):
    from sweeper.store import Store

    gen = figures.generate_store(tmp_path / "store", trials=5, model="resnet-8")
    store = Store(tmp_path / "store")
    trials = store.read(gen["study"])
    bn = store.read(gen["study"], "bn")
    assert len(trials) == 5 and set(trials["status"]) == {"done"}
    assert len(bn) == gen["bn_rows"] == 5 * (16 + 2 * (16 + 32 + 64) + 32 + 64)  # resnet-8's BN channels
    assert set(bn["trial_id"]) == set(trials["trial_id"])
    out = figures.measure_figures(tmp_path / "store", gen["study"], repeats=2)
    assert out["bn_rows"] == gen["bn_rows"]
    assert out["figures_drawn"] >= 1 and len(out["figures_runs_s"]) == 2
    assert _positive(out["figures_s"], out["figures_peak_rss_mb"], out["bn_read_s"], out["bn_read_peak_rss_mb"])


# -- Ray: overhead and sweep efficiency through the real runner ----------------------------------------
def test_trial_overhead_and_sweep_efficiency(ray_local):
    overhead = sweeps.measure_trial_overhead(trials=3)
    assert overhead["trials"] == 3 and overhead["reuse_actors"] is True
    assert _positive(overhead["wall_s"], overhead["work_s"])
    assert math.isfinite(overhead["per_trial_s"])
    n = overhead["trials"]
    parts = overhead["start_s"] + overhead["end_s"] + (n - 1) * overhead["marginal_per_trial_s"]
    assert parts / n == pytest.approx(overhead["per_trial_s"], abs=2e-3)  # the split adds up

    sweep = sweeps.measure_sweep_efficiency(trials=2, epochs=1, dataset="digits")
    assert sweep["dataset"] == "digits" and sweep["trials"] == 2
    assert 0 < sweep["efficiency"] <= 1.0 + 1e-9
    assert sweep["efficiency_with_ray_start"] <= sweep["efficiency"]


# -- what `sweeper bench --json` prints ---------------------------------------------------------------
HEADLINE = {  # part -> the top-level keys it adds (BENCHMARKS.md's table reads them)
    "step": {"step_speedup_vs_reference", "bf16_speedup_vs_fp32", "bf16_speedup_vs_reference",
             "frozen_conv_skip_speedup", "sgemm_fraction", "conv_sgemm_fraction", "step_time_share_conv"},
    "data": {"data_fraction"},
    "ray": {"trial_overhead_s", "trial_overhead_marginal_s", "sweep_fixed_start_s", "trial_overhead_tune_default_s",
            "trial_overhead_tune_default_marginal_s", "sweep_efficiency", "sweep_efficiency_with_ray_start"},
    "figures": {"figures_seconds_1000_trials", "figures_peak_rss_mb", "bn_read_seconds_1000_trials",
                "bn_read_peak_rss_mb"},
    # issue 19 (`--only store`, measured in test_compact.py): the table's rows; the JSON adds request counts
    "store": {f"store_{w}_{s}_{k}" for w in ("local", "s3") for s in ("uncompacted", "compacted")
              for k in ("figures_seconds", "status_seconds", "load_bn_seconds", "peak_rss_gb")}
    | {f"store_{w}_{k}" for w in ("local", "s3") for k in ("files_before", "files_after", "compact_seconds")},
}
ALWAYS = {"date", "quick", "environment", "load_average_start", "threads_per_trial", "load_average_end",
          "bench_seconds", "goals", "met", "details"}


def test_bench_json_keys_of_the_step_and_data_parts(monkeypatch):
    """The keys of `sweeper bench --quick --json --only step,data`: the quick run's code, measuring at
    a small batch, matmul and training set (the keys do not depend on the sizes; at the quick sizes
    this took about 50 s of the suite, most of it the bf16 step on a CPU without native bf16). The
    Ray and figure parts are measured above at tiny sizes."""
    step, data = run.measure_step, run.measure_data_fraction
    monkeypatch.setattr(run, "measure_step", lambda *a, **kw: step(*a, **{**kw, "batch": 16, "sgemm_n": 256}))
    monkeypatch.setattr(run, "measure_data_fraction", lambda *a, **kw: data(*a, **{**kw, "train_size": 512}))
    results = run.run_bench(quick=True, only={"step", "data"})
    assert set(results) == ALWAYS | HEADLINE["step"] | HEADLINE["data"]
    assert set(results["details"]) == {"step", "data"}
    assert set(results["environment"]) == {"python", "torch", "ray", "pyarrow", "cpu", "cores",
                                           "torch_cpu_capability", "cuda"}
    assert set(results["met"]) == {"step_speedup_vs_reference", "sgemm_fraction", "data_fraction"}
    assert set().union(*HEADLINE.values()) >= set(run.GOALS)
    assert {key for key, _ in run.ROWS} == set().union(*HEADLINE.values()) | {"sgemm_fraction_wrn_14_4"}


# -- the command line ---------------------------------------------------------------------------------
def test_cli_registers_bench():
    from sweeper.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--json", "--only", "step"])
    assert args.fn is cli.cmd_bench and args.quick and args.json and args.only == "step"


def test_format_table_marks_goals():
    results = {"quick": True, "date": "today", "environment": {"cpu": "cpu", "cores": 2, "torch": "t", "ray": "r",
                                                               "python": "p"},
               "load_average_start": [1.0], "load_average_end": [1.0], "threads_per_trial": 1, "bench_seconds": 1.0,
               "trial_overhead_s": 0.05, "sweep_efficiency": 0.5,
               "goals": {k: f"{op} {v:g}" for k, (op, v) in run.GOALS.items()}}
    results["met"] = {k: run._met(k, results[k]) for k in ("trial_overhead_s", "sweep_efficiency")}
    table = run.format_table(results)
    assert "trial_overhead_s" in table and "sweep_efficiency" in table
    lines = {line.split()[0]: line for line in table.splitlines() if line and line.split()[0] in results}
    assert " yes " in lines["trial_overhead_s"] and " NO " in lines["sweep_efficiency"]


def test_a_step_many_times_slower_runs_fewer_times_spread_over_the_rounds():
    """`time_interleaved(..., fewer=...)`: the bench's bf16 step on a CPU without native bf16 (10x
    the fp32 step) runs a few times, in rounds spread over the whole run, after one warm-up."""
    from sweeper.bench.common import time_interleaved

    calls: list[str] = []
    steps = {"fast": lambda: calls.append("fast"), "slow": lambda: calls.append("slow")}
    seconds = time_interleaved(steps, repeats=8, warmup=2, fewer={"slow": 3})
    assert set(seconds) == {"fast", "slow"}
    assert calls.count("fast") == 2 + 8 and calls.count("slow") == 1 + 3
    timed = calls[3:]  # after the warm-ups (fast, fast, slow)
    rounds = [i for i, name in enumerate(n for n in timed if n in ("fast", "slow")) if name == "slow"]
    fast_before = [timed[:i].count("fast") for i in rounds]
    assert fast_before == [1, 4, 6]  # in rounds 0, 3 and 5 of 8, each after that round's fast call
    assert time_interleaved(steps, repeats=2, fewer={"slow": 5}) and calls.count("slow") == 4 + 2 + 2
