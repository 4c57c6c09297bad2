"""Parameter counts by group (Frankle et al.'s Table 1), from the model's declared layer roles."""
from __future__ import annotations

from torch import nn

from sweeper.models.roles import norm_params, output_params, shortcut_params

GROUPS = ("total", "batchnorm", "output", "shortcut")


def count_groups(model: nn.Module) -> dict[str, int]:
    params = dict(model.named_parameters())
    size = lambda names: sum(params[n].numel() for n in names)  # noqa: E731
    return {
        "total": size(params),
        "batchnorm": size(norm_params(model)),
        "output": size(output_params(model)),
        "shortcut": size(shortcut_params(model)),
    }
