"""Shared test setup: GPU tests are skipped where there is no CUDA device; the fixtures most
modules share (a module may define its own of the same name to differ).

For the suite's time, reuse before you start: ``cluster`` (a module's Ray cluster) and
``checkpoint`` (a tiny model on disk) per module, ``gsm8k_tiny_run`` (a finished --tiny run)
per session."""

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


@pytest.fixture(scope="session")
def gsm8k_tiny_run(tmp_path_factory):
    """``python -m recipes.gsm8k --tiny`` as a user runs it: a fresh directory as the working
    directory, its own process (and Ray cluster). Returns (that directory, the CompletedProcess)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.support.tiny import GSM8K_TINY

    root = Path(__file__).resolve().parents[1]
    cwd = tmp_path_factory.mktemp("gsm8k-tiny-cwd")
    env = os.environ | {"PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, *GSM8K_TINY.split()[1:]], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{GSM8K_TINY} failed:\n{run.stderr[-3000:]}"
    return cwd, run
