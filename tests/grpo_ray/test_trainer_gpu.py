"""The GRPO loop in colocate mode with the vLLM engine, on a real local Ray cluster with one GPU."""

from __future__ import annotations

import pytest

from recipes.tiny_model import random_checkpoint
from tests.support.tiny import tiny_config

pytestmark = pytest.mark.gpu
ROWS = [{"prompt": p} for p in ["w1 w2 w3", "w4 w5", "w6", "w7 w8 w9 w10", "w11", "w12 w13", "w14", "w15 w16"]]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_colocated_vllm_run_trains_syncs_and_passes_the_guard(tmp_path, lora):
    import ray

    from grpo_ray.trainer import GRPOTrainer

    checkpoint = random_checkpoint("small", tmp_path / "small")
    config = tiny_config(
        checkpoint, tmp_path / "run", model={"dtype": "bfloat16"}, lora={"enabled": lora},
        grpo={"max_completion_length": 16, "max_prompt_length": 16},
        rollout={"backend": "vllm", "num_workers": 1, "enforce_eager": True},
        reward={"num_workers": 1}, run={"mode": "colocate", "max_steps": 4},
    )
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False)
    try:
        trainer = GRPOTrainer(config, ROWS)
        try:
            assert trainer.actors.colocated
            result = trainer.run()
        finally:
            trainer.shutdown()
    finally:
        ray.shutdown()
    assert result.optimizer_steps == 4
    assert [r["weight_version_sampled"] for r in result.history] == [0, 0, 2, 2]
    assert all(r["time/sync_check_s"] > 0 for r in result.history)
