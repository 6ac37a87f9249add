"""What a generation engine is asked for and what it gives back: one sampling spec, per-sample outputs.

Engines see token ids only. Tokenising prompts, decoding completions and padding everything
into a :class:`~grpo_ray.rollout_batch.RolloutBatch` happen once, in the rollout worker, so
the HF and vLLM engines stay thin adapters that cannot disagree on masks or truncation.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpo_ray.config import GenerationConfig


@dataclass(frozen=True)
class SamplingSpec:
    """One request to an engine: ``n`` completions for every prompt, sampled like this."""

    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    greedy: bool = False
    seed: int = 0

    @staticmethod
    def from_config(
        generation: GenerationConfig, *, n: int, max_new_tokens: int, seed: int, greedy: bool = False
    ) -> "SamplingSpec":
        return SamplingSpec(
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            top_k=generation.top_k,
            min_p=generation.min_p,
            repetition_penalty=generation.repetition_penalty,
            greedy=greedy,
            seed=seed,
        )


@dataclass
class Sample:
    """One completion as the engine produced it.

    ``token_ids`` run up to and including the stop token (EOS) when there is one;
    ``logprobs[i]`` is the engine's log-probability of ``token_ids[i]`` under the distribution
    it sampled from (after temperature and the top-k/top-p/min-p filters), the quantity the
    truncated importance-sampling correction needs. ``truncated`` = stopped by the length limit.
    """

    token_ids: list[int]
    logprobs: list[float]
    truncated: bool
