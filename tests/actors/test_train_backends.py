"""The train backends' pure choices: DeepSpeed's config, built from ours alone (no DeepSpeed needed to
check it), and when the learner's AdamW runs fused."""

from __future__ import annotations

import pytest

from actors.train_backends import EVERY_RANK, deepspeed_config
from grpo_ray.config import BatchConfig, ModelConfig, OptimConfig, TrainConfig


def _config(**batch) -> TrainConfig:
    return TrainConfig(
        batch=BatchConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_processes=2, **batch),
        model=ModelConfig(dtype="bfloat16"), optim=OptimConfig(max_grad_norm=0.5),
    )


@pytest.mark.parametrize("backend, stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_config_follows_ours(backend, stage):
    ds = deepspeed_config(_config(train_backend=backend), hidden_size=64)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_batch_size"] == 4 * 2 * 2 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert "offload_optimizer" not in ds["zero_optimization"]
    assert ("stage3_param_persistence_threshold" in ds["zero_optimization"]) == (stage == 3)


def test_optimizer_offload_goes_to_the_cpu():
    ds = deepspeed_config(_config(train_backend="deepspeed_zero2", zero_offload_optimizer=True), hidden_size=64)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_only_zero3_reads_weights_on_every_rank():
    assert EVERY_RANK["plain"] == frozenset() and EVERY_RANK["deepspeed_zero2"] == {"save_state"}
    assert {"weights", "policy_logprobs", "save"} <= EVERY_RANK["deepspeed_zero3"]


def test_adamw_runs_fused_only_on_floating_cuda_parameters_of_the_plain_backend():
    from types import SimpleNamespace

    import torch

    from actors.train_backends import fused_adamw

    def param(device, dtype=torch.float32):
        return SimpleNamespace(device=torch.device(device), dtype=dtype)

    cuda = [param("cuda"), param("cuda", torch.bfloat16)]
    assert fused_adamw(cuda, "plain")
    assert not fused_adamw(cuda, "deepspeed_zero2")  # DeepSpeed swaps in its own flat partitions
    assert not fused_adamw(cuda + [param("cpu")], "plain")
    assert not fused_adamw([param("cuda", torch.int8)], "plain")
    assert not fused_adamw([], "plain")
    assert not fused_adamw(list(torch.nn.Linear(2, 2).parameters()), "plain")  # this box: CPU tensors
