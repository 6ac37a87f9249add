"""How the learner's weights reach the rollout engines, and the check that they did.

One seam, chosen by the placement (:mod:`grpo_ray.cluster`):

- :class:`ObjectStoreSync` (distributed on CPU or GPU): the learner exports its LoRA tensors
  (or full state dict) to CPU, one ``ray.put``, every rollout worker loads them in place.
- :class:`InProcessSync` (colocate): learner and engine live in one actor; the engine reads the
  learner's tensors or takes the LoRA tensors from GPU memory, nothing leaves the process.

After every push the stale-weight guard compares the engine's and the learner's logprobs of
one fixed probe sequence. A sleep-mode engine that silently kept old weights (a known failure
of colocated peers) or a dropped update shows up there as a gap far beyond kernel rounding,
and the run stops instead of training on samples from the wrong policy. The guard costs one
forward pass over ``PROBE_LENGTH`` tokens on each side per sync.
"""

from __future__ import annotations

import random
import time
from typing import Any

from grpo_ray.config import TrainConfig

PROBE_LENGTH = 32


class StaleWeightsError(RuntimeError):
    """A rollout engine does not hold the weights the learner just sent."""


def probe_tokens(vocab_size: int, length: int = PROBE_LENGTH, seed: int = 0) -> list[int]:
    """A fixed pseudo-random token sequence (the same every sync, any vocabulary)."""
    rng = random.Random(seed)
    return [rng.randrange(vocab_size) for _ in range(length)]


def sync_tolerance(config: TrainConfig) -> float:
    if config.rollout.sync_check_tolerance is not None:
        return config.rollout.sync_check_tolerance
    return 1e-3 if config.model.dtype == "float32" else 5e-2


class WeightSync:
    """``push()`` makes every rollout worker hold the learner's current weights; returns that version."""

    def __init__(self, config: TrainConfig, learner: Any, rollout_workers: list[Any], vocab_size: int):
        self.config = config
        self.learner = learner
        self.rollout_workers = rollout_workers
        g = config.grpo
        # the probe must fit the engine's context (vLLM's max_model_len = prompt + completion budget)
        fits = (g.max_prompt_length or PROBE_LENGTH) + g.max_completion_length - 1
        self.probe = probe_tokens(vocab_size, length=max(2, min(PROBE_LENGTH, fits)))
        self.tolerance = sync_tolerance(config)
        self.timings: dict[str, float] = {}

    def push(self) -> int:
        started = time.perf_counter()
        version = self._transfer()
        self.timings = {"time/sync_s": time.perf_counter() - started}
        if self.config.rollout.sync_check:
            started = time.perf_counter()
            self.check(version)
            self.timings["time/sync_check_s"] = time.perf_counter() - started
        return version

    def _transfer(self) -> int:
        raise NotImplementedError

    def check(self, version: int) -> None:
        """Raise :class:`StaleWeightsError` if any engine's probe logprobs drift from the learner's."""
        import ray

        expected = ray.get(self.learner.policy_logprobs.remote(self.probe))
        seen = ray.get([w.sampler_logprobs.remote(self.probe) for w in self.rollout_workers])
        for index, logps in enumerate(seen):
            gap = float((logps - expected).abs().mean())
            if not gap <= self.tolerance:  # also catches NaN
                raise StaleWeightsError(
                    f"rollout worker {index} does not hold the learner's weights after sync to version "
                    f"{version}: mean |logprob gap| on the probe sequence = {gap:.4g} > "
                    f"rollout.sync_check_tolerance={self.tolerance:g}. The engine is sampling from other "
                    "weights than the learner trains; stopping rather than training on them "
                    "(raise the tolerance only if the gap is kernel rounding)"
                )


class ObjectStoreSync(WeightSync):
    """Learner -> CPU tensors -> Ray object store -> every rollout worker, loaded in place."""

    def _transfer(self) -> int:
        import ray

        version, weights = ray.get(self.learner.weights.remote())
        ref = ray.put(weights)
        versions = ray.get([w.update_weights.remote(ref, version) for w in self.rollout_workers])
        if set(versions) != {version}:
            raise RuntimeError(f"weight sync failed: learner at {version}, rollout workers report {versions}")
        return version


class InProcessSync(WeightSync):
    """Learner and engine in one actor (colocate): the actor moves the tensors itself."""

    def _transfer(self) -> int:
        import ray

        return ray.get(self.learner.sync_weights.remote())


def make_weight_sync(config: TrainConfig, actors: Any) -> WeightSync:
    """The sync the placement calls for, probing within the model's vocabulary."""
    from transformers import AutoConfig

    m = config.model
    vocab_size = AutoConfig.from_pretrained(m.name_or_path, trust_remote_code=m.trust_remote_code).vocab_size
    cls = InProcessSync if actors.colocated else ObjectStoreSync
    return cls(config, actors.learner, actors.rollout_workers, vocab_size)
