"""Layer roles: each model family says which of its layers are the output layer, the shortcuts,
the normalisation layers, and where each norm layer sits (stage, block), as open_lth's
`Model.output_layer_names` does. Trainable subsets (`output`, `shortcut`, `bn`, `random`), the
parameter counts by group and the `bn` measurement ask the model instead of guessing from names,
so a new family is one module that builds the network and declares its roles.

A family's nn.Module inherits LayerRoles (beside nn.Module) and overrides what differs from the
defaults: every family names its output layer; a family with shortcut convs names them; one with
stages says where each norm layer sits.
"""
from __future__ import annotations

from torch import nn

from sweeper.nn.norms import is_norm


class LayerRoles:
    """Mixin for an nn.Module: its layers' roles, by module name (`named_modules`)."""

    def output_layer_names(self) -> list[str]:
        """The modules whose parameters form the output layer (the classifier)."""
        raise NotImplementedError(f"{type(self).__name__} does not name its output layer")

    def shortcut_layer_names(self) -> list[str]:
        """The 1x1 convolutions on shortcut paths (their weights are subset `shortcut`)."""
        return []

    def norm_layer_names(self) -> list[str]:
        """The normalisation layers (their γ, β are subset `bn`): by default every norm module."""
        return [name for name, module in self.named_modules() if is_norm(module)]

    def stage_of(self, norm_layer: str) -> tuple[int, int, str]:
        """(stage, block within the stage, role) of a norm layer, for the `bn` table's columns:
        stage 0 is the stem; (-1, -1, name) where a family has no stages."""
        return -1, -1, norm_layer


def roles(model: nn.Module) -> LayerRoles:
    if not isinstance(model, LayerRoles):
        raise TypeError(f"{type(model).__name__} declares no layer roles (sweeper.models.roles.LayerRoles)")
    return model


def _prefixed(module: str, parameter: str) -> str:
    return f"{module}.{parameter}" if module else parameter


def norm_params(model: nn.Module) -> list[str]:
    modules = dict(model.named_modules())
    return [_prefixed(m, p) for m in roles(model).norm_layer_names() for p, _ in modules[m].named_parameters(recurse=False)]


def output_params(model: nn.Module) -> list[str]:
    modules = dict(model.named_modules())
    return [_prefixed(m, p) for m in roles(model).output_layer_names() for p, _ in modules[m].named_parameters()]


def shortcut_params(model: nn.Module) -> list[str]:
    return [f"{m}.weight" for m in roles(model).shortcut_layer_names()]


def feature_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The random features' weights: every conv, and every hidden linear layer (an MLP's; the
    output layer is not a feature), each feeding one norm channel per output unit."""
    output = roles(model).output_layer_names()
    return [
        (f"{name}.weight", module.weight)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not any(name == o or name.startswith(f"{o}.") for o in output)
    ]


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The norm layers that have γ and β (an affine-free norm has nothing to train or record)."""
    modules = dict(model.named_modules())
    return [(n, modules[n]) for n in roles(model).norm_layer_names() if getattr(modules[n], "weight", None) is not None]


def position(model: nn.Module, norm_layer: str) -> tuple[int, int, str]:
    return roles(model).stage_of(norm_layer)
