"""A tiny checkpoint on disk and a config around it, shared by the runtime tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from grpo_ray.config import (
    BatchConfig, GRPOConfig, LoraConfig, ModelConfig, OptimConfig, RewardConfig, RolloutConfig, RunConfig,
    TrainConfig,
)
from recipes.tiny_model import build_char_tokenizer, build_tiny_model, save_checkpoint


#: The README's quick start, run once per session by the ``gsm8k_tiny_run`` fixture and shared by
#: the tests that need a finished --tiny run (the recipe's tests and the README snippets).
GSM8K_TINY = "python -m recipes.gsm8k --tiny"


def tiny_checkpoint(path: Path) -> Path:
    tokenizer = build_char_tokenizer("0123456789+=ab")
    return save_checkpoint(build_tiny_model(tokenizer, hidden_size=32, num_layers=2, seed=0), tokenizer, path)


def tiny_config(checkpoint: Path, output_dir: Path, **sections) -> TrainConfig:
    base = TrainConfig(
        grpo=GRPOConfig(num_generations=4, max_completion_length=6, max_prompt_length=8),
        batch=BatchConfig(per_device_train_batch_size=8, gradient_accumulation_steps=1, steps_per_generation=2),
        model=ModelConfig(name_or_path=str(checkpoint)),
        lora=LoraConfig(r=4, alpha=8),
        optim=OptimConfig(learning_rate=1e-2),
        rollout=RolloutConfig(num_workers=2),
        reward=RewardConfig(functions=("tests.support.reward_fns:short_completion",), num_workers=2),
        run=RunConfig(output_dir=str(output_dir), max_steps=3, seed=0),
    )
    return dataclasses.replace(base, **{k: dataclasses.replace(getattr(base, k), **v) for k, v in sections.items()})
