"""Distributed mode on two GPUs of one host: the vLLM engine on one, the learner on the other,
weights broadcast over NCCL (``rollout.sync_backend='collective'``). Run on the device machine:

    python -m pytest -q -m gpu tests/grpo_ray/test_distributed_gpu.py

Two engine starts (eager vLLM, the 2-layer ``small`` shape): a LoRA run and a full-weights run,
each followed by a fault (the engine killed, or stopped) during a push. The CPU twins (gloo,
the hf engine) are tests/grpo_ray/test_weight_sync_collective.py and test_cluster_multinode.py.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray
import torch

from grpo_ray.trainer import GRPOTrainer
from grpo_ray.weight_sync import CollectiveSync, WeightSyncError
from recipes.tiny_model import random_checkpoint
from tests.support.tiny import tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")]
ROWS = [{"prompt": p} for p in ["w1 w2 w3", "w4 w5", "w6", "w7 w8 w9 w10", "w11", "w12 w13", "w14", "w15 w16"]]
TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=6, num_gpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint("small", tmp_path_factory.mktemp("small"))


def _gpu(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: os.environ["CUDA_VISIBLE_DEVICES"]))


@pytest.fixture(scope="module", params=[True, False], ids=["lora", "full"])
def run(request, cluster, checkpoint, tmp_path_factory):
    """A 3-step run (LoRA, or full weights), its trainer kept alive for the fault test after it."""
    lora = request.param
    config = tiny_config(
        checkpoint, tmp_path_factory.mktemp("run") / "run", model={"dtype": "bfloat16"},
        lora={"enabled": lora, "r": 16, "alpha": 32}, grpo={"max_completion_length": 16, "max_prompt_length": 16},
        rollout={"backend": "vllm", "num_workers": 1, "enforce_eager": True, "sync_backend": "collective",
                 "sync_timeout_s": TIMEOUT_S},
        reward={"num_workers": 1}, run={"mode": "distributed", "max_steps": 3, "max_worker_restarts": 0},
    )
    trainer = GRPOTrainer(config, ROWS)  # the first push (and its guard) runs here
    try:
        gpus = [_gpu(trainer.actors.learner), _gpu(trainer.actors.rollout_workers[0])]
        yield lora, trainer, trainer.run(), gpus
    finally:
        trainer.shutdown()


def test_nccl_sync_into_vllm_on_its_own_gpu_passes_the_guard_every_step(run):
    lora, trainer, result, gpus = run
    sync = trainer.weight_sync
    assert isinstance(sync, CollectiveSync) and sync.backend == "nccl"
    assert gpus[0] != gpus[1]  # the learner and the engine on different GPUs
    names = [s.name for s in sync.specs]
    assert all(".lora_" in n for n in names) if lora else any(n.endswith("embed_tokens.weight") for n in names)
    assert result.optimizer_steps == 3
    assert ray.get(trainer.actors.rollout_workers[0].weight_version.remote()) == 3
    assert [r["weight_version_sampled"] for r in result.history] == [0, 0, 2]
    # the guard compared vLLM's probe logprobs with the learner's after every sync, and passed
    assert all(r["time/sync_check_s"] > 0 for r in result.history)


def test_a_killed_or_stalled_engine_is_named_within_the_timeout(run):
    """After the run: the LoRA run's engine is killed, the full run's stopped (SIGSTOP)."""
    lora, trainer, _, _ = run
    worker = trainer.actors.rollout_workers[0]
    pid = ray.get(worker.__ray_call__.remote(lambda self: os.getpid()))
    fault, needle = ("kill", "rollout worker 0 died") if lora else ("stall", "rollout worker 0 did not finish")
    try:
        if fault == "kill":
            ray.kill(worker)
        else:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(WeightSyncError, match=needle):
            trainer.sync_weights()
        assert time.monotonic() - started < TIMEOUT_S + 5
        # the learner came back from its NCCL wait (bounded, not the watchdog killing the process)
        assert ray.get(trainer.actors.learner.weight_version.remote(), timeout=30) == 3
    finally:
        if fault == "stall":
            os.kill(pid, signal.SIGCONT)
