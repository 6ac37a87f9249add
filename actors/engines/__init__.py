"""Generation engines behind :class:`~actors.engines.base.GenerationEngine`."""

from __future__ import annotations

from actors.engines.base import GenerationEngine
from grpo_ray.config import TrainConfig


def make_engine(config: TrainConfig) -> GenerationEngine:
    """The engine ``config.rollout.backend`` names, with its own copy of ``config.model``.

    The colocated worker (``actors/colocated_worker.py``) builds its engine itself, sharing
    the learner's weights.
    """
    if config.rollout.backend == "vllm":
        from actors.engines.vllm_engine import VLLMEngine

        return VLLMEngine(config)
    from actors.engines.hf import HFEngine

    return HFEngine(config)
