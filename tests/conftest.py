"""Shared fixtures: offline Hugging Face, one local Ray instance for the whole session."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """A test module may change torch's thread count; the next module starts from the count before it,
    so no module's speed depends on which ran first."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    if before is not None:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for the module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_local():
    """One fresh local Ray instance (127.0.0.1) shared by every test that needs Ray (starting Ray costs ~5 s).

    address="local": never a cluster named by RAY_ADDRESS or recorded in /tmp/ray.
    """
    import ray

    from cluster.ray_setup import init_ray

    init_ray("local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
