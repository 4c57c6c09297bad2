"""Training in the construction experiment: the target (Adam on labels), and the baseline that
trains only γ and β of the same random source with SGD or Adam, so the construction's solution
can be compared with what gradient descent finds on the same random weights."""
from __future__ import annotations

from typing import Iterable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sweeper.experiments.construction.networks import chunk_rows, generator, logits, relative_error
from sweeper.experiments.construction.spec import ConstructionSpec
from sweeper.nn.norms import recalibrate


def _batches(n: int, batch_size: int, g: torch.Generator) -> Iterable[torch.Tensor]:
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def _chunks(model: nn.Module, x: torch.Tensor, chunk: int = 4096) -> Iterable[torch.Tensor]:
    dtype = next(model.parameters()).dtype
    chunk = chunk_rows(model, x, torch.finfo(dtype).bits // 8, most=chunk)  # CIFAR-sized blocks
    return (x[i:i + chunk].to(dtype) for i in range(0, len(x), chunk))


def train_target(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, spec: ConstructionSpec) -> None:
    g = generator(spec.seed, 2)
    opt = torch.optim.Adam(net.parameters(), lr=spec.target_lr)
    net.train()
    for _ in range(spec.target_epochs):
        for idx in _batches(len(x), spec.batch_size, g):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()



def train_bn_only(source: nn.Sequential, x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor,
                  x_test: torch.Tensor, y_test: torch.Tensor, teacher_test: torch.Tensor,
                  spec: ConstructionSpec) -> pd.DataFrame:
    """Train only γ and β of `source` (fresh BN: γ=1, β=0; train-mode batch statistics) for
    spec.sgd_epochs; running statistics are recalibrated on the training inputs before each
    evaluation. Returns the per-epoch curve (epoch 0 = untrained)."""
    for p in source.parameters():
        p.requires_grad_(False)
    params = []
    for m in source.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
            params += [m.weight, m.bias]
    if spec.sgd_optimizer == "adam":
        opt = torch.optim.Adam(params, lr=spec.sgd_lr)
    else:
        opt = torch.optim.SGD(params, lr=spec.sgd_lr, momentum=0.9)
    g = generator(spec.seed, 3)
    rows = []

    def evaluate(epoch: int, loss: float | None) -> None:
        recalibrate(source, _chunks(source, x))  # running statistics of the training inputs
        if loss is None:  # epoch 0: the untrained network's loss on the training set
            out = logits(source, x)
            loss = float(F.mse_loss(out, teacher) if spec.sgd_objective == "distill" else F.cross_entropy(out, y))
        out = logits(source, x_test)
        rows.append({"epoch": epoch, "train_loss": loss, "test_relative_error": relative_error(out, teacher_test),
                     "test_acc": float((out.argmax(1) == y_test).double().mean())})

    evaluate(0, None)
    for epoch in range(1, spec.sgd_epochs + 1):
        source.train()
        total, count = 0.0, 0
        for idx in _batches(len(x), spec.batch_size, g):
            if len(idx) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            out = source(x[idx])
            if spec.sgd_objective == "distill":
                loss = F.mse_loss(out, teacher[idx])
            else:
                loss = F.cross_entropy(out, y[idx])
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        evaluate(epoch, total / max(count, 1))
    curve = pd.DataFrame(rows)
    return curve.astype({"epoch": "int64", "train_loss": "float64", "test_relative_error": "float64",
                         "test_acc": "float64"})

