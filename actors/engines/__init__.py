"""Generation engines behind :class:`~actors.engines.base.GenerationEngine`."""

from __future__ import annotations

from actors.engines.base import GenerationEngine
from grpo_ray.config import TrainConfig


def make_engine(config: TrainConfig) -> GenerationEngine:
    """The engine ``config.rollout.backend`` names (validated by the config), built from ``config.model``."""
    from actors.engines.hf import HFEngine

    return {"hf": HFEngine}[config.rollout.backend](config)
