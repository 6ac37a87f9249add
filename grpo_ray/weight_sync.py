"""How the learner's weights reach the rollout engines, and the check that they did.

One seam, chosen by the placement (:mod:`grpo_ray.cluster`):

- :class:`ObjectStoreSync` (distributed on CPU or GPU): the learner exports its LoRA tensors
  (or full state dict) to CPU, one ``ray.put``, every rollout worker loads them in place.
- :class:`CollectiveSync` (distributed, ``rollout.sync_backend='collective'``): learner rank 0
  broadcasts the tensors in buckets over a process group of its own with every rollout
  worker (gloo on CPU, NCCL on GPU; :mod:`grpo_ray.collective`), bounded by
  ``rollout.sync_timeout_s``: a worker that died or stalls is named in a
  :class:`WeightSyncError` within that time.
- :class:`InProcessSync` (colocate): learner and engine live in one actor; the engine reads the
  learner's tensors or takes the LoRA tensors from GPU memory, nothing leaves the process.

A rollout worker that Ray restarted gets the weights alone through the object store
(:meth:`WeightSync.resync`) before it serves again.

After every push the stale-weight guard checks the weight version each engine reports, then
compares the engine's and the learner's logprobs of one fixed probe sequence. A sleep-mode engine that silently kept old weights (a known failure
of colocated peers) or a dropped update shows up there as a gap far beyond kernel rounding,
and the run stops instead of training on samples from the wrong policy. The guard costs one
forward pass over ``PROBE_LENGTH`` tokens on each side per sync.

Asynchronous rollouts (``rollout.max_staleness > 0``): a push reaches an engine between
requests, never during one. A distributed rollout worker runs its calls in the order the driver
sent them, so the push (and the guard's probe after it) waits for the rollouts started before
it, which keep the weights they started with; an asynchronous colocated worker keeps up to
``max_staleness + 1`` versions (:mod:`actors.colocated_worker`) and the probe names the version.
"""

from __future__ import annotations

import random
import time
from typing import Any

from grpo_ray.cluster import uses_gpu
from grpo_ray.config import TrainConfig

PROBE_LENGTH = 32


class StaleWeightsError(RuntimeError):
    """A rollout engine does not hold the weights the learner just sent."""


class WeightSyncError(RuntimeError):
    """A weight transfer failed or ran out of time; the message names the actor at fault, ``died``
    the rollout workers (by index) that died during it."""

    def __init__(self, message: str, died: tuple[int, ...] = ()):
        super().__init__(message)
        self.died = died


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

    def __init__(
        self, config: TrainConfig, learner: Any, rollout_workers: list[Any], vocab_size: int,
        rollout_call: Any = getattr, versioned: bool = False,
    ):
        """``rollout_call(worker, method)``: how the rollout workers' methods are called
        (:meth:`grpo_ray.cluster.Actors.rollout_call`); ``versioned``: their probes name the version."""
        self.config = config
        self.rollout_call, self.versioned = rollout_call, versioned
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

    def resync(self, worker: Any, version: int) -> None:
        """Give one (restarted) rollout worker the learner's current weights, which must be ``version``."""
        import ray

        current, weights = ray.get(self.learner.weights.remote())
        if current != version:
            raise WeightSyncError(f"cannot re-sync a rollout worker: learner at {current}, the run at {version}")
        ray.get(worker.update_weights.remote(weights, version))

    def check(self, version: int) -> None:
        """Raise :class:`StaleWeightsError` if an engine reports another version than ``version``, or
        its probe logprobs drift from the learner's."""
        import ray

        at = {"weight_version": version} if self.versioned else {}
        expected = self.learner.policy_logprobs.remote(self.probe)
        probes = [self.rollout_call(w, "sampler_logprobs").remote(self.probe, **at) for w in self.rollout_workers]
        reported = ray.get([w.weight_version.remote() for w in self.rollout_workers])
        for index, held in enumerate(reported):
            if held != version:
                raise StaleWeightsError(
                    f"rollout worker {index} reports weight version {held} after the push of version {version}: "
                    "the engine did not take the learner's weights; stopping rather than training on its samples"
                )
        expected, seen = ray.get(expected), ray.get(probes)
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


class CollectiveSync(WeightSync):
    """Learner rank 0 -> every rollout worker by broadcast over their own process group.

    The group is formed at the first push and again after a worker restarted or a push
    failed (a restarted worker is not in the old one). Each push is bounded by
    ``rollout.sync_timeout_s``. Members' own operations give up after 3/4 of it, so at the
    deadline the healthy ones have answered (with a timeout) and only a stalled one is out."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        r = self.config.rollout
        self.timeout_s = r.sync_timeout_s
        self.member_timeout_s = 0.75 * r.sync_timeout_s
        self.bucket_bytes = int(r.sync_bucket_mb * 2**20)
        self.backend = "nccl" if uses_gpu(self.config) else "gloo"
        self.specs: list[Any] | None = None  # tensor names, shapes and dtypes, fixed for the run

    def _form_group(self) -> None:
        import ray

        world = 1 + len(self.rollout_workers)
        host, port = ray.get(self.learner.host_group.remote(world, self.member_timeout_s))
        joins = [self.learner.join_sync_group.remote(self.backend, world, self.member_timeout_s)] + [
            w.join_sync_group.remote(self.backend, host, port, 1 + i, world, self.member_timeout_s)
            for i, w in enumerate(self.rollout_workers)
        ]
        self._await("form the weight-sync group", joins[0], joins[1:])
        self.specs = ray.get(self.learner.weight_specs.remote())

    def _transfer(self) -> int:
        import ray

        try:
            if self.specs is None:
                self._form_group()
            version = ray.get(self.learner.weight_version.remote())
            sender = self.learner.broadcast_weights.remote(self.bucket_bytes)
            receivers = [w.receive_weights.remote(self.specs, version, self.bucket_bytes) for w in self.rollout_workers]
            self._await(f"send weights version {version}", sender, receivers)
        except BaseException:
            self.specs = None  # the group is broken: form a new one next time
            raise
        return version

    def _await(self, what: str, sender: Any, receivers: list[Any]) -> None:
        """Wait for every member's part of one collective, at most ``timeout_s``; name the culprit."""
        import ray

        everyone = [sender, *receivers]
        ray.wait(everyone, num_returns=len(everyone), timeout=self.timeout_s)
        ready = set(ray.wait(everyone, num_returns=len(everyone), timeout=0)[0])
        problems: list[tuple[int, str]] = []  # (0 died, 1 stalled, 2 failed: likely the others' victim), text
        died: list[int] = []
        for index, (name, ref) in enumerate([*((f"rollout worker {i}", r) for i, r in enumerate(receivers)),
                                             ("learner rank 0", sender)]):
            if ref not in ready:
                problems.append((1, f"{name} did not finish within rollout.sync_timeout_s={self.timeout_s:g}s (stalled)"))
                continue
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                problems.append((0, f"{name} died ({type(err).__name__})"))
                died += [index] if index < len(receivers) else []
            except ray.exceptions.RayTaskError as err:
                cause = str(err.cause).strip().splitlines()[0][:200] if str(err.cause).strip() else ""
                problems.append((2, f"{name} failed: {type(err.cause).__name__}: {cause}"))
        if problems:
            problems.sort(key=lambda p: p[0])
            raise WeightSyncError(f"could not {what}: " + "; ".join(text for _, text in problems), tuple(died))

    def resync(self, worker: Any, version: int) -> None:
        super().resync(worker, version)
        self.specs = None  # the restarted worker is in no group: form a new one at the next push


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
    if actors.colocated:
        cls: type[WeightSync] = InProcessSync
    else:
        cls = CollectiveSync if config.rollout.sync_backend == "collective" else ObjectStoreSync
    return cls(
        config, actors.learner, actors.rollout_workers, vocab_size, rollout_call=actors.rollout_call,
        versioned=actors.rollout_group is not None,
    )
