"""Dead ReLUs per activation call site: torchvision's ImageNet blocks call one ReLU module two
(BasicBlock) or three (Bottleneck) times per forward pass, each time on other units."""
from __future__ import annotations

import pytest
import torch

from sweeper.experiments.train.measures import DEAD_FRACTION, Context, measure_dead
from sweeper.experiments.train.model import build_model
from sweeper.experiments.train.spec import TrainSpec


def reference(model, x) -> list[tuple[str, torch.Tensor]]:
    """Every activation output of one forward pass, in call order, recorded by plain hooks."""
    from sweeper.experiments.train.measures import activation_layers

    outs = []
    handles = [m.register_forward_hook(lambda mod, i, out, name=name: outs.append((name, out.clone())))
               for name, m in activation_layers(model)]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return outs


@pytest.mark.parametrize("depth,calls_per_block,blocks", [(18, 2, 8), (50, 3, 16)])
def test_imagenet_resnets_count_each_relu_call_on_its_own_units(depth, calls_per_block, blocks):
    torch.manual_seed(0)
    spec = TrainSpec.from_values({"model": f"imagenet-resnet-{depth}", "dataset": "imagenet", "measure": ["dead_relu"]})
    model = build_model(spec)
    x = torch.randn(6, 3, 48, 48)  # tiny inputs: layer4 sees 2x2
    outs = reference(model, x)
    # two test batches: the call count starts over with each forward pass
    ctx = Context(model=model, spec=spec, evaluate=lambda: {}, initial={},
                  test_batches=lambda: [(x[:4], None), (x[4:], None)])
    table = measure_dead(ctx)["dead_relu"]

    assert len(table) == len(outs) == 1 + blocks * calls_per_block  # the stem's ReLU, then every call
    assert table["layer"].iloc[0] == "relu"
    first_block = [f"layer1.0.relu#{k}" for k in range(1, calls_per_block + 1)]
    assert table["layer"].iloc[1:1 + calls_per_block].tolist() == first_block
    assert table["layer"].is_unique and table["layer_index"].tolist() == list(range(len(table)))
    for (_, row), (name, out) in zip(table.iterrows(), outs):
        assert row["layer"].split("#")[0] == name
        zero = (out == 0).float()
        unit = zero.flatten(1).mean(0)
        chan = zero.flatten(2).amin(-1).mean(0)  # the whole map zero
        assert row["units"] == unit.numel() and row["channels"] == out.shape[1]
        assert row["mean_zero_fraction"] == pytest.approx(unit.mean().item())
        assert row["dead_unit_fraction"] == pytest.approx((unit > DEAD_FRACTION).float().mean().item())
        assert row["dead_channel_fraction"] == pytest.approx((chan > DEAD_FRACTION).float().mean().item())
    assert table["mean_zero_fraction"].between(0.05, 0.95).all()  # a share of inputs, never a doubled count


def test_a_module_called_once_keeps_its_name():
    torch.manual_seed(0)
    spec = TrainSpec.from_values({"model": "resnet-8-4", "dataset": "cifar10", "measure": ["dead_relu"]})
    model = build_model(spec)
    x = torch.randn(4, 3, 32, 32)
    ctx = Context(model=model, spec=spec, evaluate=lambda: {}, initial={}, test_batches=lambda: [(x, None)])
    table = measure_dead(ctx)["dead_relu"]
    assert not table["layer"].str.contains("#").any() and len(table) == len(reference(model, x))
