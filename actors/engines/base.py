"""The seam between a rollout worker and its generation engine.

An engine turns prompts into a :class:`~grpo_ray.rollout_batch.RolloutBatch` and accepts new
weights. ``hf`` (transformers ``generate``) runs anywhere and is the reference; ``vllm`` is
the GPU engine (colocated or on its own GPUs) and plugs in here with the same two methods.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from grpo_ray.config import GenerationConfig
from grpo_ray.rollout_batch import RolloutBatch


class GenerationEngine(Protocol):
    def generate(
        self,
        prompts: list[Any],
        *,
        num_generations: int,
        sampling: GenerationConfig,
        max_new_tokens: int,
        greedy: bool = False,
        seed: int = 0,
    ) -> RolloutBatch:
        """``num_generations`` completions per prompt, grouped consecutively."""

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Replace the engine's weights (full state dict or LoRA tensors) in place."""
