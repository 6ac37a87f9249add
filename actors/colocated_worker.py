"""ColocatedWorker: the learner and one rollout engine in one process, on one GPU.

One copy of the base weights serves both: the hf engine samples from the learner's own
model; the vLLM engine owns the weights and the learner's model is built from views of them
(``VLLMEngine.shared_policy``). Between rollouts the engine sleeps (its KV cache released,
weights kept), so the learner trains in that memory. The driver sees an actor with both
roles' methods, so its loop is the same text as in the distributed mode.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from actors.learner import Learner
from actors.rollout_worker import RolloutWorker
from grpo_ray.config import TrainConfig
from grpo_ray.rollout_batch import RolloutBatch


class ColocatedWorker:
    """A plain class; the driver wraps it with ``ray.remote`` where it is placed."""

    def __init__(self, config: TrainConfig, num_cpus: int = 1):
        if config.rollout.backend == "vllm":
            from actors.engines.vllm_engine import VLLMEngine

            engine: Any = VLLMEngine(config, colocated=True)
            self.learner = Learner(config, num_cpus, policy=engine.shared_policy())
        else:
            from actors.engines.hf import HFEngine

            self.learner = Learner(config, num_cpus)
            engine = HFEngine(config, policy=self.learner.policy)
        self.engine = engine
        self.rollout = RolloutWorker(config, 0, engine=engine)
        self.engine.sleep()  # until the first rollout

    # -- rollout role ----------------------------------------------------------------------------

    def generate(self, prompts: list[Any], *, num_generations: int, seed: int, greedy: bool = False) -> RolloutBatch:
        with self._awake():
            return self.rollout.generate(prompts, num_generations=num_generations, seed=seed, greedy=greedy)

    def sampler_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        with self._awake():
            return self.rollout.sampler_logprobs(token_ids)

    def weight_version(self) -> int:
        return self.rollout.weight_version()

    def sync_weights(self) -> int:
        """Hand the learner's current weights to the engine in memory; returns the version.

        An engine that samples from the learner's own tensors gets ``{}`` (only its caches are
        dropped); the vLLM engine with LoRA gets the adapter tensors where they live, on the GPU.
        """
        weights = {} if self.engine.shares_weights else self.learner.weights(copy_to_cpu=False)[1]
        return self.rollout.update_weights(weights, self.learner.version)

    @contextmanager
    def _awake(self) -> Iterator[None]:
        """The engine awake for one call, asleep again after it (also on error)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the learner's freed blocks go back before the KV cache is mapped again
        self.engine.wake_up()
        try:
            yield
        finally:
            self.engine.sleep()

    # -- learner role ----------------------------------------------------------------------------

    def train_generation(self, batch: RolloutBatch, cycle: int, max_steps: int | None = None) -> list[dict[str, float]]:
        return self.learner.train_generation(batch, cycle, max_steps)

    def logprobs(self, batch: RolloutBatch, *, reference: bool = False) -> torch.Tensor:
        return self.learner.logprobs(batch, reference=reference)

    def policy_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        return self.learner.policy_logprobs(token_ids)

    def weights(self, copy_to_cpu: bool = True) -> tuple[int, dict[str, torch.Tensor]]:
        return self.learner.weights(copy_to_cpu)

    def save(self, path: str) -> str:
        return self.learner.save(path)

    def save_state(self, path: str) -> str:
        return self.learner.save_state(path)

    def load_state(self, path: str) -> int:
        """The learner's state back; the engine gets it at the sync that follows."""
        return self.learner.load_state(path)

