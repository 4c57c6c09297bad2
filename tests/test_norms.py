"""The normalisation layer as an axis: every norm builds and trains in every family, the `bn`
subset trains exactly the norm's γ and β, parameter counts, the study file and its figures."""
from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sweeper.experiments.train import subsets
from sweeper.analysis import figures, norms as norm_figures
from sweeper.errors import SweeperError
from sweeper.nn.init import initialise
from sweeper.nn.norms import Affine, GroupNorm, is_norm
from sweeper.experiments.train.model import build_model, count, count_groups
from sweeper.store import Store
from sweeper.study import load_study
from sweeper.experiments.train.loop import run_trial
from sweeper.experiments.train.spec import TrainSpec
from sweeper.trial import TrialContext, execute

from conftest import REPO

NORMS = ["batch", "layer", "group(groups=2)", "instance", "affine", "none"]
MODELS = {"resnet": "resnet-8-4", "convnet": "convnet-3-8", "mlp": "mlp-2-16"}


def spec(model, norm, trainable="all", **extra):
    return TrainSpec.from_values(dict(model=model, norm=norm, trainable=trainable, dataset="digits", **extra))


def cases():
    for family, norm in itertools.product(MODELS, NORMS):
        if family == "mlp" and norm == "instance":
            continue  # refused: see test_instance_norm_on_an_mlp_is_refused
        yield family, norm


def built(s):
    model = build_model(s)
    initialise(model, s.weight_init, s.bn_init, s.seed)
    return model


@pytest.mark.parametrize("family,norm", list(cases()))
def test_each_norm_builds_and_trains_a_step(family, norm):
    s = spec(MODELS[family], norm)
    model = built(s)
    subsets.apply(model, s.trainable, s.random_k, s.seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = F.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert moved  # something trained
    layers = [m for m in model.modules() if is_norm(m)]
    assert (len(layers) == 0) == (norm == "none")
    kinds = {type(m).__name__ for m in layers}
    expected = {"batch": {"BatchNorm2d", "BatchNorm1d"}, "layer": {"GroupNorm"}, "group(groups=2)": {"GroupNorm"},
                "instance": {"GroupNorm"}, "affine": {"Affine"}, "none": set()}[norm]
    assert kinds <= expected and (kinds or norm == "none")


@pytest.mark.parametrize("family,norm", list(cases()))
def test_bn_subset_selects_exactly_the_norms_gamma_and_beta(family, norm):
    s = spec(MODELS[family], norm, "bn")
    model = built(s)
    selection = subsets.apply(model, "bn", s.random_k, s.seed)
    expected = {f"{name}.{p}" for name, m in model.named_modules() if is_norm(m) for p in ("weight", "bias")}
    assert set(selection) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    channels = sum(m.weight.numel() for m in model.modules() if is_norm(m))
    assert count(s)["trainable"] == count(s)["batchnorm"] == 2 * channels
    if norm == "none":
        assert count(s)["trainable"] == 0


@pytest.mark.parametrize("family", list(MODELS))
def test_random_k_trains_as_many_weights_as_bn_in_every_family(family):
    """`random` trains k=2 weights per conv channel or hidden unit: the BN count (MLPs included)."""
    for norm in ("batch", "affine", "none"):
        c = count(spec(MODELS[family], norm, "random"))
        with_norm = count(spec(MODELS[family], "batch", "bn"))["batchnorm"]
        assert c["trainable"] == with_norm


def test_parameter_counts_by_norm():
    counts = {n: count(spec("resnet-8-4", n)) for n in NORMS}
    # every layer with γ, β has the same count as BatchNorm; `none` has no norm parameters at all
    for norm in ("layer", "group(groups=2)", "instance", "affine"):
        assert counts[norm] == counts["batch"]
    assert counts["none"]["batchnorm"] == 0
    assert counts["none"]["total"] == counts["batch"]["total"] - counts["batch"]["batchnorm"]
    assert counts["batch"]["batchnorm"] == 168  # 84 channels: 4 + 2*4 + (2*8 + 8) + (2*16 + 16)


def test_residual_scale_trains_under_all_but_not_under_bn():
    s_all = spec("resnet-14-4", "affine", "all", residual_init=0.1)
    s_bn = spec("resnet-14-4", "affine", "bn", residual_init=0.1)
    model = built(s_bn)
    scales = [n for n, _ in model.named_parameters() if n.endswith("residual_scale")]
    assert len(scales) == 6  # one per block
    assert all(p.item() == pytest.approx(0.1) for n, p in model.named_parameters() if n in scales)
    assert not set(scales) & set(subsets.apply(model, "bn", 2, 0))
    assert set(scales) <= set(subsets.apply(built(s_all), "all", 2, 0))
    assert count_groups(model)["total"] == count(spec("resnet-14-4", "affine"))["total"] + 6
    assert count(s_bn)["trainable"] == count(s_bn)["batchnorm"]


def test_residual_init_is_refused_where_it_would_be_ignored():
    for model in ("mlp-2-16", "convnet-3-8"):
        with pytest.raises(SweeperError) as e:
            spec(model, "affine", residual_init=0.1)
        assert e.value.where.startswith("residual_init")
    assert spec("resnet-8-4", "affine", residual_init=0.0).residual_init == 0.0


def test_instance_norm_on_an_mlp_is_refused():
    # on (N, C) features each instance-norm group is one value: the output would be the constant β
    for norm in ("instance", "group(groups=16)"):
        with pytest.raises(SweeperError) as e:
            spec("mlp-2-16", norm)
        assert e.value.where.startswith("norm") and "constant β" in e.value.message
    assert spec("mlp-2-16", "group(groups=4)").norm == "group(groups=4)"
    assert spec("convnet-3-8", "instance").norm == "instance"


@pytest.mark.parametrize("norm", NORMS)
def test_run_trial_records_the_norm_in_the_bn_table(norm):
    s = spec("resnet-8-4", norm, "bn", epochs=1, train_size=200, test_size=100, augment="none",
             measure=["bn", "clamp", "dead_relu"], residual_init=0.1 if norm in ("affine", "none") else 1.0)
    result = run_trial(s, threads=1)
    assert 0.0 <= result.row["test_acc"] <= 1.0
    assert "dead_relu" in result.tables
    if norm == "none":
        assert "bn" not in result.tables and "clamp" not in result.tables and result.row["trainable_params"] == 0
        return
    bn = result.tables["bn"]
    assert set(bn["norm"]) == {s.norm} and len(bn) == 84
    assert (bn["gamma"] != bn["gamma_init"]).any()  # γ trained


def test_affine_is_a_per_channel_map():
    layer = Affine(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, 0.5]))
    x = torch.randn(2, 3, 4, 4)
    expected = x * torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1, 1) + torch.tensor([0.0, 1.0, 0.5]).view(1, 3, 1, 1)
    assert torch.allclose(layer(x), expected)
    assert torch.allclose(layer(x[:, :, 0, 0]), expected[:, :, 0, 0])


@pytest.mark.parametrize("groups", [1, 4, 8])  # layer, group, instance at 8 channels
def test_group_norm_on_channels_last_matches_torchs_and_keeps_the_layout(groups):
    """sweeper's GroupNorm runs on NCHW memory on the CPU (torch's channels_last CPU kernel is several
    times slower); it must compute torch's function, gradients included, and hand back channels_last."""
    torch.manual_seed(0)
    ours = GroupNorm(groups, 8)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.normal_()
    theirs = torch.nn.GroupNorm(groups, 8)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert ya.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(ya, yb, atol=1e-5)
    (ya * torch.arange(ya.numel()).view_as(ya)).sum().backward()
    (yb * torch.arange(yb.numel()).view_as(yb)).sum().backward()
    for a, b in [(xa.grad, xb.grad), (ours.weight.grad, theirs.weight.grad), (ours.bias.grad, theirs.bias.grad)]:
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)
    assert type(ours).__name__ == "GroupNorm" and isinstance(ours, torch.nn.GroupNorm)  # stored names unchanged


# -- the study file ------------------------------------------------------------------------------
def test_norm_types_study():
    for quick in (False, True):
        study = load_study(REPO / "studies/norm_types.py", quick=quick)
        specs = study.specs()
        assert {s.norm.split("(")[0] for s in specs} == {"batch", "layer", "group", "instance", "affine", "none"}
        assert {s.trainable for s in specs} == {"all", "bn", "random"}
        assert len({s.depth for s in specs}) >= 2 and len({s.seed for s in specs}) >= 2
        for s in specs:  # SkipInit scale only where nothing standardises; never 0 (bn could not move it)
            assert s.residual_init == (0.1 if s.norm in ("affine", "none") else 1.0)
        assert all(name in figures() for name in study.figures)
    assert study.resources == {"cpu": 1, "gpu": 0} and all(s.train_size > 0 for s in specs)
    assert len(specs) == 6 * 3 * 2 * 2


# -- the figures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def norm_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("norm-store"))
    store.ensure_writable()
    ctx = TrialContext(study="norms-test", store=store)
    for norm, subset, depth in itertools.product(["batch", "layer", "affine", "none"], ["all", "bn"], [8, 14]):
        s = spec(f"resnet-{depth}-4", norm, subset, epochs=1, train_size=200, test_size=100, augment="none",
                 measure=["bn"], residual_init=0.1 if norm in ("affine", "none") else 1.0)
        assert execute(s, ctx, threads=1)["status"] == "done"
    return store


def test_norm_figures_draw_from_a_store(norm_store, tmp_path):
    from sweeper.analysis.draw import draw_study

    drawn = draw_study(norm_store, "norms-test", out=tmp_path, names=list(norm_figures.FIGURES))
    assert not drawn.skipped, drawn.skipped
    for files in drawn.written.values():
        assert any(f.suffix == ".png" for f in files) and all(f.stat().st_size > 0 for f in files)
    summary = pd.read_csv(tmp_path / "norm_accuracy.csv")
    assert set(summary["norm_label"]) == {"batch", "layer", "affine, α=0.1", "none, α=0.1"}
    assert set(summary["trainable"]) == {"all", "bn"}


def test_norm_figures_skip_without_a_norm_axis(norm_store, tmp_path):
    trials = norm_store.read("norms-test")
    one_norm = {"trials": trials[trials["norm"] == "batch"], "bn": norm_store.read("norms-test", "bn")}
    for draw in norm_figures.FIGURES.values():
        assert draw({}, tmp_path) == []
        assert draw(one_norm, tmp_path) == []
    assert not list(tmp_path.iterdir())
