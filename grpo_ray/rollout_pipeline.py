"""The bounded queue between the rollout stage and the learner (``rollout.max_staleness = S``).

The driver (:mod:`grpo_ray.trainer`) runs, for each cycle c, with the weights of update c on
the engines::

    pipeline.fill(policy=c, weight_version=v)   # start every cycle up to c + S not started yet
    rollout = pipeline.take(c)                   # cycle c's rows and batch (waits while it generates)
    ... score, train, push the new weights ...

so cycles c + 1 .. c + S generate while the learner trains cycle c, each with the weights
:func:`grpo_ray.staleness.generation_policy` gives it (S = 0: start, then wait: the synchronous
loop, in the same order of calls). How a rollout is started and collected (splitting prompts
over the workers, retries after a worker died) is the driver's, passed in as two callables.

Rollouts in flight at a checkpoint are waited for and saved in the
:class:`~grpo_ray.trainer_state.TrainerState` (:meth:`RolloutPipeline.state`), with the sampler
position before their prompts were drawn: they were generated with weights older than the
checkpoint's, which the resumed run no longer has, so regenerating them would not give the
same samples. :meth:`RolloutPipeline.reset` rebuilds the queue from that state alone (the prompts
drawn again from the sampler, the batches decoded), so a resumed run trains each sample
exactly once and continues bit-identical.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from grpo_ray.data import PromptSampler
from grpo_ray.rollout_batch import RolloutBatch
from grpo_ray.staleness import Interval, busy_overlap, staleness_histogram, startable_cycles
from grpo_ray.trainer_state import TrainerState

log = logging.getLogger("grpo_ray")

#: ``start(rows, cycle, weight_version) -> handles`` (returns at once; the rollout runs on the workers).
Start = Callable[[list[dict[str, Any]], int, int], Any]
#: ``finish(rows, cycle, handles, weight_version) -> RolloutBatch`` (waits for it).
Finish = Callable[[list[dict[str, Any]], int, Any, int], RolloutBatch]

#: Keys of ``RolloutBatch.meta`` the pipeline reads: the engine's busy time and when it ended.
GENERATE_S, GENERATE_END = "time/generate_s", "time/generate_end"


@dataclass
class Rollout:
    """One cycle's rollout: started (``handles``), then finished (``batch``)."""

    cycle: int
    rows: list[dict[str, Any]]
    policy: int  # the weight update it is generated with (cycles the learner had trained)
    weight_version: int  # the learner's version (optimizer steps) of those weights
    sampler_before: dict[str, Any]  # the sampler's position before its rows were drawn
    submitted: float = 0.0  # time.time() when started
    handles: Any = None
    batch: RolloutBatch | None = None
    generated: Interval | None = None  # when the engines were busy with it (time.time())
    engines_free_at: float | None = None  # when the engines finished the rollout before it


class RolloutPipeline:
    def __init__(
        self, sampler: PromptSampler, prompts_per_cycle: int, max_staleness: int, last_cycle: int,
        start: Start, finish: Finish,
    ):
        self.sampler, self.prompts_per_cycle = sampler, prompts_per_cycle
        self.max_staleness, self.last_cycle = max_staleness, last_cycle
        self._start, self._finish = start, finish
        self.pending: dict[int, Rollout] = {}  # by cycle, oldest first
        self.next_cycle = 0  # the first cycle not drawn yet
        self.policy, self.weight_version = 0, 0  # the weights on the engines (last fill)
        self.finished: list[Interval] = []  # the engines' busy intervals of recent rollouts
        self.last_end: float | None = None  # when the engines finished the last rollout
        self.dropped_samples = 0  # completions dropped since the last take (a lowered bound, on resume)

    # -- the queue -------------------------------------------------------------------------------

    def fill(self, policy: int, weight_version: int) -> None:
        """The engines hold the weights of update ``policy`` (learner version ``weight_version``):
        start the rollouts that must be generated with them, and any dropped one again."""
        self.policy, self.weight_version = policy, weight_version
        for rollout in self.pending.values():
            if rollout.handles is None and rollout.batch is None:
                self._launch(rollout)
        end = min(startable_cycles(policy, self.max_staleness), self.last_cycle + 1)
        while self.next_cycle < end:
            before = self.sampler.state()
            rows = self.sampler.next(self.prompts_per_cycle)
            self._launch(Rollout(self.next_cycle, rows, policy, weight_version, before))
            self.next_cycle += 1

    def _launch(self, rollout: Rollout) -> None:
        rollout.policy, rollout.weight_version = self.policy, self.weight_version
        rollout.submitted = time.time()
        rollout.handles = self._start(rollout.rows, rollout.cycle, rollout.weight_version)
        self.pending[rollout.cycle] = rollout
        self.pending = dict(sorted(self.pending.items()))

    def take(self, cycle: int) -> Rollout:
        """Cycle ``cycle``'s rollout, finished (the learner waits here while it generates)."""
        if not self.pending or min(self.pending) != cycle:
            raise RuntimeError(f"cycle {cycle} is not the next one the pipeline holds ({sorted(self.pending)})")
        rollout = self.pending.pop(cycle)
        if rollout.batch is None:
            self._collect(rollout)
        return rollout

    def complete(self) -> None:
        """Wait for every rollout in flight (before a checkpoint saves them)."""
        for rollout in self.pending.values():
            if rollout.batch is None and rollout.handles is not None:
                self._collect(rollout)

    def _collect(self, rollout: Rollout) -> None:
        batch = self._finish(rollout.rows, rollout.cycle, rollout.handles, rollout.weight_version)
        rollout.handles = None
        if batch.weight_version > rollout.weight_version:  # a share was generated again, after a worker restart
            rollout.policy, rollout.weight_version = self.policy, batch.weight_version
        end, busy = batch.meta.pop(GENERATE_END, None), batch.meta.get(GENERATE_S)
        if end is not None and busy is not None:
            rollout.generated = (end - busy, end)
            rollout.engines_free_at = self.last_end
            self.last_end = end if self.last_end is None else max(self.last_end, end)
            self.finished = [*self.finished[-2 * self.max_staleness - 4 :], rollout.generated]
        rollout.batch = batch

    def busy(self, now: float) -> list[Interval]:
        """The engines' busy intervals: finished rollouts, and those in flight (taken as running from
        when they were started, or the engines last finished, until ``now``)."""
        running = [
            (max(r.submitted, self.last_end or r.submitted), now)
            for r in self.pending.values() if r.batch is None and r.handles is not None
        ]
        return [*self.finished, *running[:1]]

    # -- what a step reports -----------------------------------------------------------------------

    def step_metrics(
        self, rollout: Rollout, *, learner_version: int, window: Interval, learner_busy: Interval,
        learner_free_since: float,
    ) -> dict[str, float]:
        """Staleness (histogram over the step's completions), who waited for whom, and the overlap
        achieved: the share of the step during which the engines and the learner were both busy.

        The learner waited for a rollout that ended after it finished its previous batch
        (``learner_free_since``), wherever the driver was blocked meanwhile (a distributed push
        queues behind the rollout in flight); the engines waited for the learner when a rollout
        was started after they had finished the one before it (its weights were not pushed yet)."""
        assert rollout.batch is not None
        samples = len(rollout.batch)
        staleness = rollout.cycle - rollout.policy
        waited = max(0.0, rollout.generated[1] - learner_free_since) if rollout.generated else 0.0
        out = {
            "async/staleness": float(staleness),
            "async/version_lag": float(learner_version - rollout.batch.weight_version),
            **staleness_histogram(staleness, samples, self.max_staleness),
            "async/learner_waited_samples": float(samples if waited > 0 else 0),
            "time/learner_wait_s": waited,
            "async/dropped_samples": float(self.dropped_samples),
        }
        held = 0.0
        if rollout.generated is not None and rollout.engines_free_at is not None:
            # started after the engines had finished the one before: it waited for its weights
            if rollout.submitted > rollout.engines_free_at:
                held = rollout.generated[0] - rollout.engines_free_at
        out["async/rollout_held_samples"] = float(samples if held > 0 else 0)
        out["time/rollout_held_s"] = held
        both = busy_overlap(self.busy(window[1]), [learner_busy], window)
        out["time/overlap_s"] = both
        out["async/overlap"] = both / (window[1] - window[0]) if window[1] > window[0] else 0.0
        self.dropped_samples = 0
        return out

    # -- checkpoints -----------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(the sampler's position before the pending rollouts' prompts, the pending rollouts encoded);
        call :meth:`complete` first."""
        if not self.pending:
            return self.sampler.state(), []
        if any(r.batch is None for r in self.pending.values()):
            raise RuntimeError("rollouts are still in flight: complete() them before saving the pipeline")
        first = self.pending[min(self.pending)]
        return first.sampler_before, [encode_rollout(r) for r in self.pending.values()]

    def reset(self, state: TrainerState) -> None:
        """Forget what is in flight and rebuild the queue from ``state``: the sampler at
        ``state.sampler``, each pending rollout's prompts drawn again (checked against the saved
        ones) with its saved batch. A pending rollout beyond this run's bound (``max_staleness``
        lowered on resume) is dropped and generated again with the current weights (counted)."""
        self.pending, self.finished, self.last_end = {}, [], None
        self.sampler.load_state(state.sampler)
        self.next_cycle = state.cycle
        for saved in state.pending_rollouts:
            before = self.sampler.state()
            rows = self.sampler.next(self.prompts_per_cycle)
            if saved["cycle"] != self.next_cycle or saved["prompts"] != prompts_digest(rows):
                raise RuntimeError(
                    f"the checkpoint's pending rollout of cycle {saved['cycle']} does not match the prompts drawn for "
                    f"cycle {self.next_cycle}: resume with the same training data and seed"
                )
            rollout = Rollout(saved["cycle"], rows, saved["policy"], saved["weight_version"], before)
            if rollout.cycle - rollout.policy <= self.max_staleness:
                rollout.batch = decode_batch(saved["batch"])
            else:
                self.dropped_samples += len(saved["batch"]["completions"])
                log.warning("cycle %d was generated %d weight updates ahead, beyond rollout.max_staleness=%d: "
                            "generating it again", rollout.cycle, rollout.cycle - rollout.policy, self.max_staleness)
            self.pending[rollout.cycle] = rollout
            self.next_cycle += 1


# -- encoding for TrainerState (JSON) --------------------------------------------------------------


def prompts_digest(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps([r.get("prompt") for r in rows], sort_keys=True, default=str).encode()).hexdigest()


def encode_rollout(rollout: Rollout) -> dict[str, Any]:
    assert rollout.batch is not None
    return {
        "cycle": rollout.cycle, "policy": rollout.policy, "weight_version": rollout.weight_version,
        "prompts": prompts_digest(rollout.rows), "batch": encode_batch(rollout.batch),
    }


def _encode(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        raw = t.view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)
        return {"tensor": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                "data": base64.b64encode(raw.numpy().tobytes()).decode()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"tensor", "shape", "data"}:
        dtype = getattr(torch, value["tensor"])
        data = base64.b64decode(value["data"])
        if not data:
            return torch.empty(value["shape"], dtype=dtype)
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        t = raw.to(torch.bool) if dtype == torch.bool else raw.view(dtype)
        return t.reshape(value["shape"]).clone()
    return value


def encode_batch(batch: RolloutBatch) -> dict[str, Any]:
    """Every field of the batch, tensors as base64 of their bytes (exact, JSON-ready)."""
    return {f.name: _encode(getattr(batch, f.name)) for f in dataclasses.fields(batch)}


def decode_batch(data: dict[str, Any]) -> RolloutBatch:
    return RolloutBatch(**{name: _decode(value) for name, value in data.items()})
