"""RolloutWorker: owns one generation engine; prompts in, a RolloutBatch out."""

from __future__ import annotations

from typing import Any

import torch

from actors.engines import make_engine
from grpo_ray.config import TrainConfig
from grpo_ray.rollout_batch import RolloutBatch


class RolloutWorker:
    """A plain class; the driver wraps it with ``ray.remote`` where it is placed."""

    def __init__(self, config: TrainConfig, worker_index: int = 0):
        torch.set_num_threads(max(1, int(config.rollout.num_cpus_per_worker)))
        self.config = config
        self.worker_index = worker_index
        self.engine = make_engine(config)
        self.version = -1  # no weights from the learner yet

    def generate(self, prompts: list[Any], *, num_generations: int, seed: int, greedy: bool = False) -> RolloutBatch:
        """``num_generations`` completions for each prompt, stamped with this worker's weight version."""
        batch = self.engine.generate(
            prompts,
            num_generations=num_generations,
            sampling=self.config.generation,
            max_new_tokens=self.config.grpo.max_completion_length,
            greedy=greedy,
            seed=seed * 1_000 + self.worker_index,
        )
        batch.weight_version = self.version
        return batch

    def load_weights(self, weights: dict[str, torch.Tensor], version: int) -> int:
        """Take the learner's weights (LoRA tensors or a full state dict); returns the new version."""
        self.engine.load_weights(weights)
        self.version = version
        return self.version

    def weight_version(self) -> int:
        return self.version
