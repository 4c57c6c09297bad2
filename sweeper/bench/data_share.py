"""The data pipeline's share of an epoch: the training loop's own batches (`prepare_data`, the
loop's `epoch_generator`) and its own step (`train_step`), with the time in the batch iterator
split from the time in the step."""
from __future__ import annotations

import time
from typing import Any

from sweeper.bench.common import resolve_cifar_root, torch_threads
from sweeper.bench.step import bn_only_model, our_step


def measure_data_fraction(data_root: str | None = None, train_size: int = 2560, depth: int = 14, threads: int = 1,
                          batch: int = 128) -> dict[str, Any]:
    """Share of a training epoch spent outside model steps: the training loop's own batches,
    augmentation, epoch order and step, with the time spent in the batch iterator (indexing the
    uint8 tensors, normalising, crop+flip, channels_last copy) split from the step time. The
    one-off load of the dataset (cached per process) is reported apart."""
    import torch

    from sweeper.data import load_arrays
    from sweeper.experiments.train.loop import epoch_generator, prepare_data
    from sweeper.experiments.train.spec import TrainSpec

    root = resolve_cifar_root(data_root)
    dataset = "cifar10" if root else "digits"
    spec = TrainSpec.from_values({"model": f"resnet-{depth}", "trainable": "bn", "dataset": dataset,
                                  "train_size": train_size if root else 0, "test_size": 512 if root else 0,
                                  "batch_size": batch, "augment": "crop_flip" if root else "none"})
    with torch_threads(threads):
        t0 = time.perf_counter()
        load_arrays(dataset, str(root) if root else None)
        load_s = time.perf_counter() - t0
        train, _ = prepare_data(spec, str(root) if root else None, torch.device("cpu"), channels_last=True)
        model, opt, masks, spec_ = bn_only_model(depth, spec.width, dataset=dataset)
        step = our_step(model, opt, masks, spec_)
        data_s = step_s = 0.0
        steps = 0
        for epoch in range(2):  # epoch 0 warms up; epoch 1 is measured
            g = epoch_generator(spec.seed, epoch)
            data_s = step_s = 0.0
            steps = 0
            batches = train.epoch(g)
            while True:
                t0 = time.perf_counter()
                try:
                    x, y = next(batches)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                step(x, y)
                t2 = time.perf_counter()
                data_s += t1 - t0
                step_s += t2 - t1
                steps += 1
    return {"dataset": dataset, "images": steps * batch, "steps": steps, "threads": threads,
            "data_s": round(data_s, 4), "step_s": round(step_s, 4),
            "data_fraction": round(data_s / (data_s + step_s), 4), "dataset_load_s": round(load_s, 3)}

