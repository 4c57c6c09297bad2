"""Trial specs: canonical resolution, hashing, and ids pinned against accidental change."""
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.errors import SweeperError
from sweeper.experiments.train.spec import TrainSpec

# Changing any of these breaks every stored result's id: only with a migration and a HASH_VERSION bump.
PINNED = [
    ({}, "abcf7d235f04d2d1"),
    ({"model": "resnet-110"}, "70dc879ed9cce139"),
    ({"model": "wrn-14-8", "trainable": "bn", "seed": 3}, "6cab5dac58f48518"),
    ({"dataset": "digits", "depth": 8, "width": 8, "trainable": "random", "epochs": 2}, "06f3290fa3ae7511"),
]


@pytest.mark.parametrize("values,trial_id", PINNED)
def test_pinned_ids(values, trial_id):
    assert TrainSpec.from_values(values).trial_id == trial_id


def test_same_spec_same_id_and_defaults_are_not_hashed():
    a = TrainSpec.from_values({"model": "resnet-20", "lr": 0.1, "seed": 0})
    b = TrainSpec.from_values({"depth": 20})
    assert a.trial_id == b.trial_id == TrainSpec.from_values({}).trial_id


def test_shorthands_resolve_to_family_depth_width():
    s = TrainSpec.from_values({"model": "wrn-14-8"})
    assert (s.family, s.depth, s.width, s.model) == ("resnet", 14, 128, "wrn-14-8")
    assert TrainSpec.from_values({"model": "wrn-14-1"}).trial_id == TrainSpec.from_values({"model": "resnet-14"}).trial_id
    assert TrainSpec.from_values({"model": "imagenet-resnet-50"}).width == 64
    assert TrainSpec.from_values({"model": "resnet-20-32"}).width == 32


def test_aliases_resolve_to_one_id():
    a = TrainSpec.from_values({"activation": "swish", "norm": "bn", "trainable": "random-k"})
    b = TrainSpec.from_values({"activation": "silu", "norm": "batch", "trainable": "random"})
    assert a == b and a.trial_id == b.trial_id


def test_parameterised_names_are_canonical():
    a = TrainSpec.from_values({"weight_init": "normal(std=0.05)"})
    b = TrainSpec.from_values({"weight_init": "normal( std = 5e-2 )"})
    assert a.weight_init == "normal(std=0.05)" and a.trial_id == b.trial_id


def test_all_but_bn_pins_gamma_beta_and_none_runs_no_epochs():
    assert TrainSpec.from_values({"trainable": "all-but-bn", "bn_init": "uniform"}).bn_init == "fixed"
    assert TrainSpec.from_values({"trainable": "none"}).epochs == 0


FIELD_CHANGES = {
    "dataset": "digits", "train_size": 200, "test_size": 50, "augment": "none", "family": "convnet",
    "depth": 32, "width": 32, "activation": "tanh", "norm": "layer", "residual_init": 0.5,
    "weight_init": "xavier_normal", "bn_init": "fixed", "trainable": "bn", "random_k": 3, "epochs": 2,
    "batch_size": 64, "lr": 0.05, "momentum": 0.8, "weight_decay": 0.0, "milestones": (0.3,),
    "lr_drop": 0.2, "precision": "bf16", "compile": "inductor", "eval_every": 5, "measure": ("bn", "clamp"), "clamp_thresholds": (0.1,), "seed": 1,
}


def test_every_field_changes_the_id():
    assert set(FIELD_CHANGES) == {f.name for f in dataclasses.fields(TrainSpec)}
    base = TrainSpec.from_values({}).trial_id
    # k is the `random` subset's: under any other subset it changes nothing, and so not the id
    context = {"random_k": {"trainable": "random"}}
    ids = {field: TrainSpec.from_values({**context.get(field, {}), field: value}).trial_id
           for field, value in FIELD_CHANGES.items()}
    assert base not in ids.values()
    assert len(set(ids.values())) == len(ids)
    assert ids["random_k"] != TrainSpec.from_values({"trainable": "random"}).trial_id
    assert TrainSpec.from_values({"random_k": 3}).trial_id == base


@pytest.mark.parametrize(
    "values,field",
    [
        ({"depth": 15}, "depth"),
        ({"width": 0}, "width"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"activation": "relux"}, "activation"),
        ({"trainable": "bn-only"}, "trainable"),
        ({"weight_init": "normal(sigma=1)"}, "weight_init"),
        ({"milestones": [0.8, 0.2]}, "milestones"),
        ({"clamp_thresholds": [-0.1]}, "clamp_thresholds"),
        ({"trainable": "random", "random_k": 10_000}, "random_k"),
        ({"lr": "fast"}, "lr"),
        ({"colour": "red"}, "colour"),
        ({"model": "resnet-15"}, "depth"),
        ({"model": "vgg-16"}, "model"),
        ({"compile": "tvm"}, "compile"),
        ({"eval_every": 0}, "eval_every"),
        ({"precision": "fp16"}, "precision"),
    ],
)
def test_bad_values_name_their_field(values, field):
    with pytest.raises(SweeperError) as e:
        TrainSpec.from_values(values)
    assert (e.value.where or "").startswith(field)


def test_unknown_names_list_valid_choices():
    with pytest.raises(SweeperError, match="valid choices: .*gelu.*relu"):
        TrainSpec.from_values({"activation": "relux"})


@settings(max_examples=60, deadline=None)
@given(
    depth=st.sampled_from([8, 14, 20, 32]),
    width=st.integers(1, 64),
    lr=st.floats(1e-5, 10, allow_nan=False),
    seed=st.integers(0, 10**6),
    trainable=st.sampled_from(["all", "bn", "output", "bn+output", "all-but-bn", "shortcut"]),
)
def test_hash_is_a_function_of_the_resolved_spec(depth, width, lr, seed, trainable):
    values = {"depth": depth, "width": width, "lr": lr, "seed": seed, "trainable": trainable}
    a = TrainSpec.from_values(values)
    b = TrainSpec.from_values(dict(reversed(list(values.items()))))
    assert a.trial_id == b.trial_id
    # a round trip through the stored dict gives the same trial
    assert TrainSpec.from_values(a.to_dict()).trial_id == a.trial_id
    assert TrainSpec.from_values({**values, "seed": seed + 1}).trial_id != a.trial_id


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.none(), st.booleans()))
def test_spec_parsing_rejects_non_numbers_cleanly(value):
    with pytest.raises(SweeperError) as e:
        TrainSpec.from_values({"lr": value})
    assert e.value.where == "lr"
