"""Shared test setup: GPU tests are skipped where there is no CUDA device; the fixtures most
modules share (a module may define its own of the same name to differ)."""

import grpo_ray  # noqa: F401 - first: its process defaults (OMP_WAIT_POLICY) must precede torch's import
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def cluster():
    """A fresh local Ray cluster for the module (``address='local'``: never a neighbour's)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model and tokenizer on disk, made once per module."""
    from tests.support.tiny import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
