"""The training recipe's schedule: lr drops where the milestones' fractions of training fall."""
from __future__ import annotations

import pandas as pd
import pytest

from sweeper.experiments.train.loop import lr_milestones, run_trial
from sweeper.experiments.train.spec import TrainSpec


def test_paper_scale_drops_land_on_epochs_80_and_120():
    steps = 390  # 50,000 images at batch 128, the last partial batch dropped
    assert lr_milestones((0.5, 0.75), 160, steps) == [80 * steps, 120 * steps]


@pytest.mark.parametrize("epochs,steps,expected", [
    (5, 10, [25, 38]),  # 50% and 75% of 50 steps: never 40% / 80% (round(2.5) == 2 epochs)
    (5, 1, [3, 4]),  # one step an epoch: at or after the fraction, so 60% and 80%
    (10, 1, [5, 8]),
    (1, 7, [4, 6]),  # a one-epoch run still drops, inside the epoch
])
def test_short_runs_drop_at_or_just_after_the_fraction(epochs, steps, expected):
    assert lr_milestones((0.5, 0.75), epochs, steps) == expected


def test_a_float_product_does_not_round_up_a_whole_step():
    fraction = 0.1 + 0.2  # 0.30000000000000004, a fraction a study might compute
    assert fraction * 10 > 3
    assert lr_milestones((fraction,), 10, 1) == [3]


def test_five_epochs_train_at_the_full_lr_for_half_of_training():
    # 200 digits at batch 20: 10 steps an epoch, 50 in all; the drops after steps 25 and 38, so the
    # lr at the start of epochs 1-5 (steps 0, 10, 20, 30, 40) is 0.1, 0.1, 0.1, 0.01, 0.001 (the
    # epoch-rounded schedule gave 0.1, 0.1, 0.01, 0.01, 0.001: a drop at 40%).
    spec = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-4", "trainable": "bn", "epochs": 5,
                                  "batch_size": 20, "train_size": 200, "test_size": 50, "augment": "none",
                                  "measure": []})
    curves = run_trial(spec, None, threads=1).tables["curves"]
    assert curves["lr"].tolist() == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.001])


def test_a_trial_resumed_between_the_drops_ends_as_the_uninterrupted_one():
    # The per-step schedule's position travels in the checkpoint: resumed after epoch 3 (step 30,
    # between the drops at steps 25 and 38), the trial drops at step 38 as if never stopped.
    import copy

    spec = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-4", "trainable": "bn", "epochs": 5,
                                  "batch_size": 20, "train_size": 200, "test_size": 50, "augment": "crop_flip",
                                  "measure": []})
    saved = {}

    def keep(progress):
        if progress.epoch == 3 and not progress.end:
            saved.update(copy.deepcopy(progress.state()))

    whole = run_trial(spec, None, threads=1, callbacks=[keep])
    resumed = run_trial(spec, None, threads=1, resume=saved)
    assert resumed.row["resumed_from_epoch"] == 3
    assert resumed.tables["curves"]["lr"].tolist() == whole.tables["curves"]["lr"].tolist()
    assert resumed.row["test_loss"] == whole.row["test_loss"]


@pytest.mark.parametrize("epochs,every,passes", [(20, 5, 4), (5, 2, 3), (5, 1, 5), (3, 5, 1), (0, 1, 1)])
def test_test_passes_are_every_eval_every_th_epoch_and_the_last(epochs, every, passes):
    spec = TrainSpec.from_values({"trainable": "none" if epochs == 0 else "bn", "epochs": epochs,
                                  "eval_every": every})
    assert spec.test_passes == passes == max(1, sum(spec.tests_after(e) for e in range(1, epochs + 1)))


def test_eval_every_tests_fewer_epochs_and_trains_exactly_the_same():
    # Test passes read the model and consume no randomness: the final accuracy, γ and β and the
    # training curve are bit for bit those of testing after every epoch.
    values = {"dataset": "digits", "model": "resnet-8-4", "trainable": "bn", "epochs": 5, "batch_size": 20,
              "train_size": 200, "test_size": 100, "augment": "crop_flip", "measure": ["bn"]}
    every = run_trial(TrainSpec.from_values(values), None, threads=1)
    sparse = run_trial(TrainSpec.from_values({**values, "eval_every": 2}), None, threads=1)
    tested = sparse.tables["curves"]["test_acc"].notna().tolist()
    assert tested == [False, True, False, True, True]  # epochs 2, 4 and the last
    for key in ("test_acc", "test_loss", "test_top5", "train_loss", "train_acc"):
        assert sparse.row[key] == every.row[key], key
    curves = every.tables["curves"]
    assert sparse.tables["curves"]["train_loss"].tolist() == curves["train_loss"].tolist()
    assert sparse.tables["curves"]["test_acc"].dropna().tolist() == curves["test_acc"].iloc[[1, 3, 4]].tolist()
    pd.testing.assert_frame_equal(sparse.tables["bn"], every.tables["bn"])
