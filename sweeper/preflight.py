"""Before any work, one check of what a sweep needs from its environment, so that a bad store,
missing data or a dead cluster costs one line and exit status 2, not a half-run sweep.

`sweeper run` and `sweeper nightly` both call `check_environment`. In the order users see the
complaints:
1. the store takes writes (an object store: the endpoint answers, the bucket exists and the
   credentials open it, within seconds);
2. every registered dataset the studies' trials read (a spec's `dataset`, and the `inputs` of the
   kinds that draw their inputs from a dataset) is under the data root;
3. the Ray cluster named by `--address` answers and accepts this client's token.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from sweeper.errors import SweeperError
from sweeper.store import Store

# Spec fields that may name a dataset in `sweeper.data.DATASETS` (`inputs` also takes synthetic
# inputs such as `gaussian`, which need no data).
DATA_FIELDS = ("dataset", "inputs")


def datasets_of(study) -> list[str]:
    """The registered datasets a study's trials read, sorted."""
    from sweeper.data import DATASETS

    names = {getattr(s, f, None) for s in study.specs() for f in DATA_FIELDS}
    return sorted(n for n in names if n in DATASETS)


def check_environment(studies: Sequence, store: Store, data_root: str | None, address: str | None, *,
                      files: Iterable[str] | None = None, marker: bool = False) -> None:
    """Raise one SweeperError for the first thing missing (see the module's docstring).

    `data_root` as normalized by `sweeper.data.normalize_root`. `files`, one per study, locates a
    study's data error at its study file (a nightly names several). `marker` writes the store's
    version file now; `run` leaves it to the sweep's start, so that a sweep that waits for nodes in
    vain leaves the store as it found it."""
    from sweeper.data import check_data

    store.ensure_writable(marker=marker)
    files = list(files) if files is not None else [None] * len(studies)
    for study, where in zip(studies, files):
        for name in datasets_of(study):
            try:
                check_data(name, data_root)
            except SweeperError as e:
                if where is None:
                    raise
                raise e.at(where) from None
    from sweeper.orchestration.connect import check_address, is_local, local_cpus

    if is_local(address):
        local_cpus()  # a bad $SWEEPER_LOCAL_CPUS: refused now, not when the cluster starts
    else:
        check_address(address)


def native_cpu_bf16() -> bool:
    """Whether PyTorch's oneDNN runs bf16 natively on this CPU (AVX-512 with bf16, or AMX); without
    it bf16 convolutions take a generic path about 10x slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 convolution either
        return False


def slow_cpu_bf16(specs, gpus_per_trial: float, scale: str) -> str | None:
    """A warning when CPU trials ask for bf16 on a CPU where PyTorch's oneDNN has no bf16 (an
    AVX2-only x86, as most laptops): their convolutions then fall back to a slow generic path. On
    such a CPU (2026-11-27) `sweeper plan studies/depth_vs_width.py --scale cpu --time-steps` timed
    4.0 days of trial time in bf16 against 9.0 hours in fp32, where an AVX-512 CPU with bf16 ran
    the same 63 trials in 7.0 hours. None when nothing here is slow. `precision` is part of a
    trial's id, so the fix (fp32) is the user's choice, not made silently."""
    if gpus_per_trial > 0 or not any(getattr(s, "precision", None) == "bf16" for s in specs):
        return None
    if native_cpu_bf16():
        return None
    key = "recipe.precision" if scale == "full" else f"{scale}.recipe.precision"
    return (f"warning: {key} is bf16, and this CPU has no bf16 that PyTorch's oneDNN can use (it needs AVX-512): "
            "bf16 convolutions run on a slow fallback, about 10x the fp32 time (`sweeper plan --time-steps` "
            f"times both); --set {key}=fp32 trains in fp32 (new trial ids)")


def warn_slow_cpu_bf16(study, gpus_per_trial: float | None, scale: str, address: str | None) -> None:
    """`sweeper run`'s line for `slow_cpu_bf16`: on the embedded cluster (no --address), whose
    trials run on this CPU; `gpus_per_trial` is --gpus-per-trial (None: the study's)."""
    gpus = gpus_per_trial if gpus_per_trial is not None else study.resources.get("gpu", 0)
    if address is None and (note := slow_cpu_bf16(study.specs(), gpus, scale)):
        print(f"{study.name}: {note}")
