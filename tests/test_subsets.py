"""Trainable subsets: frozen means frozen, with momentum and weight decay switched on."""
import pytest
import torch

from sweeper.experiments.train import subsets
from sweeper.models.roles import feature_weights
from sweeper.nn.init import initialise
from sweeper.experiments.train.model import build_model, count
from sweeper.experiments.train.loop import run_trial
from sweeper.experiments.train.spec import TrainSpec

BASE = {"dataset": "digits", "model": "resnet-8-4", "epochs": 2, "batch_size": 128, "augment": "none",
        "momentum": 0.9, "weight_decay": 5e-3, "lr": 0.1, "measure": []}


def initial_and_final(values):
    """The model's parameters at initialisation and after training (from the last epoch's state)."""
    spec = TrainSpec.from_values({**BASE, **values})
    model = build_model(spec)
    initialise(model, spec.weight_init, spec.bn_init, spec.seed)
    if subsets.SUBSETS[spec.trainable].fixes_norm_affine:
        pass  # bn_init is resolved to "fixed" already
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states = []
    result = run_trial(spec, channels_last=False, callbacks=[lambda p: p.end or states.append(p.state())])
    final = states[-1]["model"]
    return spec, model, initial, final, result


def changed(initial, final, name):
    return not torch.equal(initial[name], final[name])


def test_bn_moves_only_gamma_beta():
    spec, model, initial, final, _ = initial_and_final({"trainable": "bn"})
    norms = set(subsets.norm_params(model))
    for name, _ in model.named_parameters():
        assert changed(initial, final, name) == (name in norms), name


@pytest.mark.parametrize("subset", ["output", "bn+output", "all-but-bn", "shortcut", "all"])
def test_frozen_tensors_are_bitwise_unchanged(subset):
    spec, model, initial, final, _ = initial_and_final({"trainable": subset})
    selection = subsets.SUBSETS[subset].select(model, spec.random_k, spec.seed)
    for name, _ in model.named_parameters():
        if name not in selection:
            assert torch.equal(initial[name], final[name]), f"{subset}: frozen {name} moved"
        else:
            assert changed(initial, final, name), f"{subset}: trainable {name} did not move"


def test_all_but_bn_keeps_gamma_one_beta_zero():
    spec, model, initial, final, _ = initial_and_final({"trainable": "all-but-bn", "bn_init": "uniform"})
    for name in subsets.norm_params(model):
        expected = 1.0 if name.endswith("weight") else 0.0
        assert torch.all(final[name] == expected)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_random_trains_exactly_k_per_channel(k):
    spec, model, initial, final, result = initial_and_final({"trainable": "random", "random_k": k})
    selection = subsets.SUBSETS["random"].select(model, k, spec.seed)
    total = 0
    for name, p in model.named_parameters():
        moved = initial[name] != final[name]
        if name in selection:
            mask = selection[name].bool()
            assert not moved[~mask].any(), f"{name}: an entry outside the mask moved"
            per_channel = mask.reshape(mask.shape[0], -1).sum(1)
            assert torch.all(per_channel == k)
            assert moved[mask].float().mean() > 0.9  # (a zero gradient can leave a rare entry)
            total += int(mask.sum())
        else:
            assert not moved.any(), name
    assert result.row["trainable_params"] == total == count(spec)["trainable"]


def test_random_k_equals_bn_count_at_k_2():
    spec = TrainSpec.from_values({"model": "resnet-20", "trainable": "random"})
    c = count(spec)
    # 2 per conv output channel; every conv (shortcuts included) feeds one BN: equal counts
    assert c["trainable"] == c["batchnorm"]
    model = build_model(spec, device="meta")
    channels = sum(w.shape[0] for _, w in feature_weights(model))
    assert c["trainable"] == 2 * channels


def test_frozen_convs_compute_no_weight_gradient():
    spec = TrainSpec.from_values({**BASE, "trainable": "bn"})
    model = build_model(spec)
    subsets.apply(model, "bn", 2, 0)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.grad is None for c in convs)
    assert all(p.grad is not None for n, p in model.named_parameters() if n in subsets.norm_params(model))


def test_compiled_steps_train_the_same_subset_as_eager():
    # aot_eager traces the steps as torch.compile does, without generating code, so it runs
    # anywhere; the subset's requires_grad flags are set before compiling and never toggled.
    values = {**BASE, "trainable": "bn", "measure": ["bn"]}
    eager = run_trial(TrainSpec.from_values(values))
    states = []
    compiled = run_trial(TrainSpec.from_values({**values, "compile": "aot_eager"}),
                         callbacks=[lambda p: p.end or states.append(p.state())])
    assert compiled.row["test_acc"] == pytest.approx(eager.row["test_acc"], abs=1e-6)
    assert compiled.tables["curves"]["train_loss"].tolist() == pytest.approx(eager.tables["curves"]["train_loss"].tolist())
    assert compiled.tables["bn"]["gamma"].tolist() == pytest.approx(eager.tables["bn"]["gamma"].tolist())
    assert not any(k.startswith("_orig_mod") for k in states[-1]["model"])  # checkpoints hold the plain module


def test_none_evaluates_at_initialisation_with_calibrated_statistics():
    spec = TrainSpec.from_values({**BASE, "trainable": "none"})
    result = run_trial(spec)
    assert spec.epochs == 0 and "curves" not in result.tables
    assert result.row["trainable_params"] == 0
    assert 0.0 <= result.row["test_acc"] <= 1.0


# -- k as an axis: how many random weights per channel match BN? ------------------------------------
def test_random_k_is_an_axis_value_and_other_subsets_ignore_it():
    from sweeper.study import Study

    by_value = Study(name="k", dataset="cifar10", recipe={"model": "resnet-14-8"},
                     axes={"trainable": ["bn", "random", "random(k=2)", "random(k=4)", "random( k = 8 )"]}).specs()
    # random(k=2) is `random` itself (k = 2 is the default): one trial, one id
    assert [(s.trainable, s.random_k) for s in by_value] == [("bn", 2), ("random", 2), ("random", 4), ("random", 8)]
    assert by_value[1].trial_id == TrainSpec.from_values({"model": "resnet-14-8", "trainable": "random"}).trial_id
    crossed = Study(name="k", dataset="cifar10", recipe={"model": "resnet-14-8"},
                    axes={"trainable": ["bn", "random"], "random_k": [2, 4, 8]}).specs()
    # a grid crossing k with `bn` makes one bn trial, not three identical ones under three ids
    assert [(s.trainable, s.random_k) for s in crossed] == [("bn", 2), ("random", 2), ("random", 4), ("random", 8)]
    assert [s.trial_id for s in crossed] == [s.trial_id for s in by_value]
    # the number of trained weights: k per output unit of every feature weight
    model = build_model(by_value[-1])
    channels = sum(w.shape[0] for _, w in feature_weights(model))
    for s in by_value[1:]:
        assert count(s)["trainable"] == s.random_k * channels
    assert count(by_value[1])["trainable"] == 2 * channels  # k = 2: as many as BN has (2 per channel)


@pytest.mark.parametrize("values,field,message", [
    ({"trainable": "random(k=0)"}, "trainable", "N a positive integer"),
    ({"trainable": "random(k=two)"}, "trainable", "N a positive integer"),
    ({"trainable": "random(k=2.5)"}, "trainable", "N a positive integer"),
    ({"trainable": "bn(k=4)"}, "trainable", "a subset name or random(k=N)"),
    ({"trainable": "random(k=4)", "random_k": 8}, "trainable", "disagrees with random_k 8"),
    ({"trainable": "random(k=9)"}, "random_k", "between 1 and the smallest conv fan-in (8)"),  # a 1x1 shortcut
    ({"trainable": "bn", "random_k": 0}, "random_k", "must be at least 1, got 0"),
])
def test_bad_k_is_refused_naming_the_field(values, field, message):
    from sweeper.errors import SweeperError

    import re

    with pytest.raises(SweeperError, match=re.escape(message)) as e:
        TrainSpec.from_values({"model": "resnet-14-8", **values})
    assert e.value.where == field
