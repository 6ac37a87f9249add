"""The seam between a rollout worker and its generation engine.

An engine takes prompt token ids and one :class:`~grpo_ray.sampling.SamplingSpec` and returns
per-sample outputs; the rollout worker tokenises, decodes and builds the
:class:`~grpo_ray.rollout_batch.RolloutBatch`. ``hf`` (transformers ``generate``) runs
anywhere and is the reference; ``vllm`` (``actors/engines/vllm_engine.py``) is the GPU engine,
on its own GPU or colocated with the learner.

Weights travel in Hugging Face names (the learner's ``state_dict`` or peft LoRA names), so
every engine accepts what every weight sync sends.
"""

from __future__ import annotations

from typing import Protocol

import torch

from grpo_ray.sampling import Sample, SamplingSpec


class GenerationEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[Sample]:
        """``spec.n`` samples per prompt, grouped consecutively (prompt i -> rows i*n .. i*n+n-1)."""

    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Take new weights in place (full state dict or LoRA tensors, HF names); {} = only the
        caches that depend on the weights are dropped (the engine shares the learner's tensors)."""

    def sampler_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """``[len(token_ids) - 1]`` logprob of each token after the first at temperature 1: the
        probe the stale-weight guard compares with the learner's."""

    def sleep(self) -> None:
        """Release what generation alone needs (the KV cache) while the learner trains."""

    def wake_up(self) -> None:
        """Take it back before generating."""
