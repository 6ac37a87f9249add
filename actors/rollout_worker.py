"""RolloutWorker: owns one generation engine; prompts in, a RolloutBatch out."""

from __future__ import annotations

import time
from typing import Any

import torch

from actors.engines import make_engine
from actors.engines.base import GenerationEngine
from grpo_ray import collective
from grpo_ray.config import TrainConfig
from grpo_ray.modeling import load_tokenizer
from grpo_ray.prompts import as_completions, encode_prompts
from grpo_ray.rollout_batch import RolloutBatch
from grpo_ray.sampling import SamplingSpec


class RolloutWorker:
    """A plain class; the driver wraps it with ``ray.remote`` where it is placed.

    Tokenising prompts, decoding completions and building the batch happen here, once for
    every engine; the engine only turns token ids into samples.
    """

    def __init__(self, config: TrainConfig, worker_index: int = 0, engine: GenerationEngine | None = None):
        torch.set_num_threads(max(1, int(config.rollout.num_cpus_per_worker)))
        self.config = config
        self.worker_index = worker_index
        self.tokenizer = load_tokenizer(config.model)
        self.engine = engine if engine is not None else make_engine(config)
        self.version = -1  # no weights from the learner yet
        self._sync_group: Any = None  # collective weight sync: learner rank 0 + every engine
        self._sync_device: torch.device | None = None  # where it receives: the engine's GPU under NCCL, else CPU

    def generate(self, prompts: list[Any], *, num_generations: int, seed: int, greedy: bool = False) -> RolloutBatch:
        """``num_generations`` completions for each prompt, stamped with this worker's weight version."""
        started = time.perf_counter()
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.config.grpo.max_prompt_length)
        spec = SamplingSpec.from_config(
            self.config.generation,
            n=num_generations,
            max_new_tokens=self.config.grpo.max_completion_length,
            seed=seed * 1_000 + self.worker_index,
            greedy=greedy,
        )
        samples = self.engine.generate(prompt_ids, spec)
        texts = self.tokenizer.batch_decode([s.token_ids for s in samples], skip_special_tokens=True)
        return RolloutBatch.from_samples(
            prompt_ids,
            samples,
            completions=as_completions(prompts, texts, num_generations),
            pad_token_id=self.tokenizer.pad_token_id,
            weight_version=self.version,
            # generate_end (wall clock): when the engine was free again, for the driver's overlap metric
            meta={"time/generate_s": time.perf_counter() - started, "time/generate_end": time.time()},
        )

    def update_weights(self, weights: dict[str, torch.Tensor], version: int) -> int:
        """Take the learner's weights (LoRA tensors or a full state dict); returns the new version."""
        self.engine.update_weights(weights)
        self.version = version
        return self.version

    def join_sync_group(self, backend: str, host: str, port: int, rank: int, world_size: int, timeout_s: float) -> int:
        """Join the weight-sync group learner rank 0 hosts (collective sync); returns this worker's rank in it."""
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
        self._sync_group = collective.join_group(backend, rank, world_size, timeout_s, host=host, port=port, device=device)
        self._sync_device = device
        return rank

    def receive_weights(self, specs: list[collective.TensorSpec], version: int, bucket_bytes: int) -> int:
        """Take broadcast ``version`` from learner rank 0, whole, then load it; returns the new version
        once the engine holds it (on a GPU the load's copies are waited for, so the sync's time is
        the time until the engine can sample from the new weights)."""
        if self._sync_group is None:
            raise RuntimeError(f"rollout worker {self.worker_index} is in no weight-sync group (it restarted)")
        weights = collective.receive(self._sync_group, specs, version, bucket_bytes, self._sync_device)
        version = self.update_weights(weights, version)
        if self._sync_device is not None:
            torch.cuda.synchronize(self._sync_device)
        return version

    def sampler_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """The engine's logprobs of a probe sequence (the stale-weight guard's half)."""
        return self.engine.sampler_logprobs(token_ids)

    def weight_version(self) -> int:
        return self.version
