"""Figures 1-7 and Table 1 of Frankle, Schwab & Morcos (2021), "Training BatchNorm and only
BatchNorm", redrawn from the store's tables alone (pandas + matplotlib; no torch).

Tables read (each joined to `trials` on `trial_id`):
  trials     one row per trial: every TrainSpec field, test_acc, the parameter counts by group
  bn         every γ, β per channel with its layer (measure `bn`)      -> Fig. 4, Fig. 5, β, γ by layer
  clamp      accuracy with |γ| < t zeroed, per threshold (`clamp`)      -> Fig. 6
  dead_relu  dead-unit fractions per activation layer (`dead_relu`)     -> Fig. 7

Two ways to grow a network are told apart as the paper does: *deeper* is the series at the
study's smallest width (ResNet-D, W = 16), *wider* the series at its smallest depth (WRN-14-k).
One colour per trainable subset throughout (Figs. 5 and 6: one colour per threshold); solid lines
are deeper, dashed lines wider; error bars are one standard deviation over seeds. Figs. 5-7 are
drawn as the paper draws them, against depth and against width; the `*_vs_bn_params` (and
`clamp_accuracy_vs_fraction`) figures draw the same numbers against the BN parameter count. On
ImageNet trials (`imagenet`, `imagenet224`) Figs. 1-3 add top-5 panels beside top-1, as the paper
reports both there. When a study varies anything else (norm, activation, init,
dataset, ...), each value gets its own file, suffixed `__field=value`.

Figures by group: `accuracy` (Figs. 1-3), `gamma` (Figs. 4-6), `units` (Fig. 7, Table 1),
`layers` (β distributions, γ by layer);
`common` holds the conventions and the selection of trials they share.
"""
from __future__ import annotations

from sweeper.analysis.frankle.accuracy import accuracy_vs_bn_params, accuracy_vs_depth_width, all_vs_all_but_bn
from sweeper.analysis.frankle.gamma import (
    clamp_accuracy,
    clamp_accuracy_vs_fraction,
    gamma_distribution,
    gamma_sparsity_figure,
    gamma_sparsity_vs_bn_params,
)
from sweeper.analysis.frankle.layers import beta_distribution, gamma_by_layer
from sweeper.analysis.frankle.units import dead_relu, dead_relu_vs_bn_params, table1_params

FIGURES = {
    "all_vs_all_but_bn": all_vs_all_but_bn,
    "accuracy_vs_depth_width": accuracy_vs_depth_width,
    "accuracy_vs_bn_params": accuracy_vs_bn_params,
    "gamma_distribution": gamma_distribution,
    "gamma_sparsity": gamma_sparsity_figure,
    "clamp_accuracy": clamp_accuracy,
    "dead_relu": dead_relu,
    "table1_params": table1_params,
    # the same measures drawn another way, and what the `bn` table holds beyond the paper's figures
    "gamma_sparsity_vs_bn_params": gamma_sparsity_vs_bn_params,
    "clamp_accuracy_vs_fraction": clamp_accuracy_vs_fraction,
    "dead_relu_vs_bn_params": dead_relu_vs_bn_params,
    "beta_distribution": beta_distribution,
    "gamma_by_layer": gamma_by_layer,
}
