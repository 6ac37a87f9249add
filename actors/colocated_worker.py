"""ColocatedWorker: the learner and one rollout engine in one process, on one GPU.

One copy of the base weights serves both: the hf engine samples from the learner's own
model; the vLLM engine owns the weights and the learner's model is built from views of them
(``VLLMEngine.shared_policy``). Between rollouts the engine sleeps (its KV cache released,
weights kept), so the learner trains in that memory. The driver sees an actor with both
roles' methods, so its loop is the same text as in the distributed mode.

Asynchronous (``rollout.max_staleness = S > 0``): the engine generates later cycles while the
learner trains, in the same process. The actor is placed with a ``rollout`` concurrency group
(:data:`grpo_ray.cluster.ROLLOUT_GROUP`, one thread): ``generate`` and ``sampler_logprobs`` run
there, in order, while the learner's calls run in the actor's default thread. Each rollout
names the weight version it must use (the driver's fixed schedule, :mod:`grpo_ray.staleness`),
and the engine keeps up to S + 1 versions at once, so a push never changes the weights under a
running generation:

- vLLM with LoRA: S + 1 adapter slots (``max_loras``); a push copies the learner's adapter into
  the slot of the oldest version no rollout is using, the rollout samples with its version's
  slot. The base weights are shared and frozen, so the learner trains its own adapter while
  the engine reads the base. The KV cache stays awake the whole run (memory: engine weights +
  KV cache + S + 1 adapter slots + the learner's peak, at once).
- vLLM with full fine-tuning: the learner cannot train the tensors vLLM samples from, so it
  gets its own copy of the weights (one more copy on the GPU, besides its gradients and
  optimizer); each version is a CPU snapshot that the rollout thread loads into vLLM's
  weights before the first rollout that names it, between requests.
- hf (CPU tests): the same with the engine's own copy of the policy (it cannot sample from
  tensors the learner is changing).

Threads share the GIL; the learner's kernels go to a CUDA stream of its own so that they may
overlap vLLM's on the card (whether they do is what colocate_bench's ``async`` part measures).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch

from actors.learner import Learner
from actors.rollout_worker import RolloutWorker
from grpo_ray.config import TrainConfig
from grpo_ray.rollout_batch import RolloutBatch

log = logging.getLogger("grpo_ray")

#: Seconds a rollout waits for the weight version it was scheduled with before giving up.
VERSION_WAIT_S = 600.0


class ColocatedWorker:
    """A plain class; the driver wraps it with ``ray.remote`` where it is placed."""

    def __init__(self, config: TrainConfig, num_cpus: int = 1):
        self.asynchronous = config.rollout.max_staleness > 0
        slots = config.rollout.max_staleness + 1
        if config.rollout.backend == "vllm":
            from actors.engines.vllm_engine import VLLMEngine

            engine: Any = VLLMEngine(config, colocated=True, lora_slots=slots if self.asynchronous else 1)
            own_copy = self.asynchronous and not config.lora.enabled  # full fine-tuning: not vLLM's tensors
            if own_copy:
                log.info("rollout.max_staleness=%d with full fine-tuning: the learner trains its own copy of the "
                         "weights (one more on the GPU); vLLM gets each version between requests",
                         config.rollout.max_staleness)
            self.learner = Learner(config, num_cpus, policy=None if own_copy else engine.shared_policy())
        else:
            from actors.engines.hf import HFEngine

            self.learner = Learner(config, num_cpus)
            # asynchronous: the engine's own copy, loaded with snapshots; else the learner's model itself
            engine = HFEngine(config) if self.asynchronous else HFEngine(config, policy=self.learner.policy)
        self.engine = engine
        self.rollout = RolloutWorker(config, 0, engine=engine)
        self.slots = slots
        self._held: dict[int, Any] = {}  # version -> vLLM slot, or hf snapshot (asynchronous)
        self._in_use: dict[int, int] = {}  # version -> rollouts running with it
        self._loaded: int | None = None  # hf: the version in the engine's own model
        self._versions = threading.Condition()
        self._stream = torch.cuda.Stream() if self.asynchronous and torch.cuda.is_available() else None
        if not self.asynchronous:
            self.engine.sleep()  # until the first rollout (asynchronous: awake the whole run)

    # -- rollout role ----------------------------------------------------------------------------

    def generate(
        self, prompts: list[Any], *, num_generations: int, seed: int, greedy: bool = False,
        weight_version: int | None = None,
    ) -> RolloutBatch:
        """Synchronous: wake, generate with the last pushed weights, sleep. Asynchronous: generate
        with ``weight_version``'s weights (waiting for their push if need be), engine awake."""
        with self._using(weight_version):
            return self.rollout.generate(prompts, num_generations=num_generations, seed=seed, greedy=greedy)

    def sampler_logprobs(self, token_ids: list[int], weight_version: int | None = None) -> torch.Tensor:
        with self._using(weight_version):
            return self.rollout.sampler_logprobs(token_ids)

    def weight_version(self) -> int:
        """The newest version the engine holds (asynchronous: of the ones it keeps)."""
        with self._versions:
            return max(self._held) if self._held else self.rollout.weight_version()

    def sync_weights(self) -> int:
        """Hand the learner's current weights to the engine in memory; returns the version.

        An engine that samples from the learner's own tensors gets ``{}`` (only its caches are
        dropped); the vLLM engine with LoRA gets the adapter tensors where they live, on the GPU.
        Asynchronous: into a slot (vLLM) or a snapshot (hf) of its own, beside the versions that
        scheduled rollouts still use.
        """
        version = self.learner.version
        if not self.asynchronous:
            weights = {} if self.engine.shares_weights else self.learner.weights(copy_to_cpu=False)[1]
            return self.rollout.update_weights(weights, version)
        with self._versions:
            if version in self._held:
                return version
            slot = self._free_slot()
        if isinstance(slot, int):  # vLLM: into the slot's GPU buffers, on the learner's stream
            with self._on_learner_stream():
                self.engine.update_weights(self.learner.weights(copy_to_cpu=False)[1], slot=slot)
                if self._stream is not None:
                    self._stream.synchronize()
            held: Any = slot
        else:
            held = self.learner.weights(copy_to_cpu=True)[1]  # hf: a CPU snapshot
        with self._versions:
            self._held[version] = held
            self._versions.notify_all()
        return version

    def _free_slot(self) -> int | None:
        """(Lock held.) Room for one more version: beyond S + 1 held, the oldest goes once no rollout
        runs with it (the schedule needs only the newest S + 1). vLLM: returns the slot to write;
        hf (snapshots need no slot): None."""
        if len(self._held) >= self.slots:
            oldest = min(self._held)
            if not self._versions.wait_for(lambda: not self._in_use.get(oldest), timeout=VERSION_WAIT_S):
                raise RuntimeError(f"weight version {oldest} is still in use after {VERSION_WAIT_S:.0f}s")
            evicted = self._held.pop(oldest)
            if isinstance(evicted, int):
                return evicted
        if not getattr(self.engine, "lora_slots", 0):
            return None
        used = set(self._held.values())
        return next(s for s in range(self.slots) if s not in used)

    @contextmanager
    def _using(self, version: int | None) -> Iterator[None]:
        """The engine ready for one call: awake (synchronous), or holding ``version`` (asynchronous;
        None = the newest it holds)."""
        if not self.asynchronous:
            with self._awake():
                yield
            return
        with self._versions:
            if version is None:
                version = max(self._held)
            if not self._versions.wait_for(lambda: version in self._held, timeout=VERSION_WAIT_S):
                raise RuntimeError(f"weight version {version} was not pushed within {VERSION_WAIT_S:.0f}s "
                                   f"(the engine holds {sorted(self._held)})")
            self._in_use[version] = self._in_use.get(version, 0) + 1
            held = self._held[version]
        try:
            if isinstance(held, dict):  # hf snapshot: into the engine's own model (only this thread touches it)
                if self._loaded != version:
                    self.engine.update_weights(held)
                    self._loaded = version
            else:
                self.engine.use_slot(held)
            self.rollout.version = version
            yield
        finally:
            with self._versions:
                self._in_use[version] -= 1
                self._versions.notify_all()

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

    def _on_learner_stream(self) -> Any:
        return torch.cuda.stream(self._stream) if self._stream is not None else nullcontext()

    # -- learner role ----------------------------------------------------------------------------

    def train_generation(self, batch: RolloutBatch, cycle: int, max_steps: int | None = None) -> list[dict[str, float]]:
        with self._on_learner_stream():
            out = self.learner.train_generation(batch, cycle, max_steps)
            if self._stream is not None:
                self._stream.synchronize()
            return out

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
