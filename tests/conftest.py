"""Shared fixtures: one local Ray cluster per test session, small stores in tmp folders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# A fresh local cluster turns token auth on and writes ~/.ray/auth_token; tests need neither.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYTHONHASHSEED", "0")

REPO = Path(__file__).resolve().parents[1]
CIFAR_ROOT = REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)  # two cores: tests must not oversubscribe them


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster shared by every test that needs one; stopped at the end."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def cifar_root() -> Path:
    if not (CIFAR_ROOT / "cifar-10-batches-py" / "data_batch_1").exists():
        pytest.skip("../shared/data/cifar10 is not beside this checkout")
    return CIFAR_ROOT
