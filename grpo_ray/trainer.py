"""The driver: the GRPO loop over Ray actors, top to bottom like the algorithm.

    for each generation cycle:
        prompts     <- the next unique prompts of the dataset
        rollout     <- rollout workers sample num_generations completions per prompt
        rewards     <- reward workers score every completion with every reward function
        guards      <- completions with an infinite reward dropped (grpo_ray.guards)
        advantages  <- group-relative advantages (grpo_ray.advantages)
        learner     <- micro-steps of the batch plan, optimizer steps (grpo_ray.loss)
        sync        <- the learner's new weights to every rollout worker
        log, checkpoint (between cycles, so checkpoint-N holds exactly N optimizer steps)

Where the actors live (one CPU box, one GPU, many nodes) is decided in grpo_ray.cluster; the
loop is the same everywhere.

Asynchronous rollouts (``rollout.max_staleness = S > 0``) are a schedule of the same stages,
not another loop: the rollout stage is a bounded queue (grpo_ray.rollout_pipeline) that starts
cycle c + S with the weights the learner pushed after cycle c - 1, so the rollouts of the next S
cycles run on the workers while the learner trains this one; S = 0 starts cycle c's rollout and
waits for it, which is the synchronous loop. Staleness, who waited for whom and the overlap are
logged per step (``async/*``).

Reliability: the driver owns a :class:`~grpo_ray.trainer_state.TrainerState`, saved with the
learner's state in atomic checkpoints (grpo_ray.checkpoint) and restored by ``run.resume``. A
rollout or reward worker that dies is restarted by Ray and its share of the cycle is retried
(a rollout worker is first re-synced to the current weights); the learner dying, or anything
else that cannot be retried, stops the run with :class:`TrainingFailed` naming the checkpoint
to resume from. Ctrl-C or SIGTERM finishes the current cycle, saves a checkpoint, shuts the
actors down and exits with one line saying how to resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from grpo_ray.advantages import combine_rewards, compute_advantages, nanstd
from grpo_ray.batching import describe_cycle
from grpo_ray.checkpoint import (
    FINAL, TRAINER_STATE, checkpoint_name, link_final, read_trainer_state, remove_stale, rotate, step_checkpoints,
    write_atomic,
)
from grpo_ray.cli import config_to_dict
from grpo_ray.cluster import Actors, connect, place_actors
from grpo_ray.config import TrainConfig
from grpo_ray.data import PromptSampler, columns_of
from grpo_ray.guards import drop_nonfinite_rewards, zero_variance_groups
from grpo_ray.rollout_batch import RolloutBatch
from grpo_ray.rollout_pipeline import RolloutPipeline
from grpo_ray.staleness import last_cycle
from grpo_ray.startup import Checked, preflight
from grpo_ray.tracking import MetricsLog, console_line
from grpo_ray.trainer_state import TrainerState
from grpo_ray.weight_sync import WeightSyncError, make_weight_sync

log = logging.getLogger("grpo_ray")

#: ``on_step(step, record) -> extra metrics``: called with step 0 and an empty record before the
#: first cycle of a fresh run, then after every optimizer step (the rollout workers then hold
#: that cycle's weights); what it returns joins the step's record (metrics.jsonl, sinks, console).
StepHook = Callable[[int, dict[str, Any]], "dict[str, Any] | None"]

#: Seconds a dead worker may take to come back (Ray restarts it) before the run gives up.
WORKER_RESTART_TIMEOUT_S = 300.0


class TrainingFailed(RuntimeError):
    """The run stopped on something it cannot retry; the message names the checkpoint to resume from."""


class TrainingInterrupted(SystemExit):
    """Ctrl-C or SIGTERM: a checkpoint was saved and the actors shut down. A ``SystemExit`` with
    code 128 + signal, so an uncaught one ends the program without a traceback (the one-line
    message has already been printed)."""

    def __init__(self, message: str, signum: int, checkpoint: Path):
        super().__init__(128 + signum)
        self.message, self.checkpoint = message, checkpoint

    def __str__(self) -> str:
        return self.message


@dataclass
class TrainResult:
    optimizer_steps: int
    history: list[dict[str, Any]]  # one record per optimizer step of this session
    output_dir: str
    checkpoint: str  # the final checkpoint (``<output_dir>/final`` links to it)


def _split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Contiguous, nearly equal slices (empty slices dropped)."""
    size = math.ceil(len(items) / parts)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


# -- the trainer ---------------------------------------------------------------------------------


class GRPOTrainer:
    """Owns the actors of one run; ``run()`` is the loop."""

    def __init__(self, config: TrainConfig, train_rows: Sequence[dict[str, Any]], checked: Checked | None = None):
        """``checked``: what :mod:`grpo_ray.startup` proved about ``config`` (the command line's
        start-up); without it the trainer runs :func:`grpo_ray.startup.preflight` itself."""
        import ray

        self.config = config
        if checked is not None and checked.config != config:
            raise ValueError("GRPOTrainer: `checked` was made for another config; pass the config it holds")
        resume_from = (checked or preflight(config, train_rows)).resume_from
        self.sampler = PromptSampler(train_rows, seed=config.run.seed)
        b = config.batch
        self.plan = describe_cycle(
            b.per_device_train_batch_size, b.gradient_accumulation_steps, b.steps_per_generation_value,
            config.grpo.num_generations, b.num_processes, config.grpo.num_iterations,
        )
        print(self.plan.describe(), flush=True)
        self._owns_ray = not ray.is_initialized()
        self._closed = False
        self.actors: Actors | None = None
        self._stop_signal: int | None = None
        self._saved_step: int | None = None
        self._learner_free_since: float | None = None  # when the learner finished its last batch (time.time())
        self.state = TrainerState()
        self.resumed_from = resume_from
        try:
            self._start(resume_from)
        except BaseException:  # Ctrl-C or a failure while the actors start: leave nothing running
            self.shutdown()
            raise

    def _start(self, resume_from: Path | None) -> None:
        """Start Ray (or join it), the actors and the weight sync; restore a checkpoint to resume."""
        import ray

        config = self.config
        connect(config)
        self.actors = place_actors(config)
        self.reward_names: list[str] = ray.get(self.actors.reward_workers[0].names.remote())
        self.weight_sync = make_weight_sync(config, self.actors)
        g = config.grpo.num_generations
        self.pipeline = RolloutPipeline(
            self.sampler, self.plan.unique_prompts, config.rollout.max_staleness,
            last_cycle(config.run.max_steps, config.batch.gradient_accumulation_steps, self.plan.micro_steps_per_generation),
            start=lambda rows, cycle, version: self.start_rollout(
                [r["prompt"] for r in rows], num_generations=g, seed=config.run.seed + cycle, weight_version=version
            ),
            finish=lambda rows, cycle, handles, version: self.finish_rollout(
                [r["prompt"] for r in rows], handles, num_generations=g, seed=config.run.seed + cycle,
                weight_version=version,
            ),
        )
        if resume_from is not None:
            self.state = TrainerState.from_dict(read_trainer_state(resume_from)["state"])
            self.pipeline.reset(self.state)  # the sampler's position, and the rollouts generated ahead
            version = ray.get(self.actors.learner.load_state.remote(str(resume_from)))
            if version != self.state.step:
                raise TrainingFailed(f"{resume_from} is inconsistent: learner at version {version}, trainer at step {self.state.step}")
            self._saved_step = self.state.step
            log.info("resuming from %s at step %d", resume_from, self.state.step)
        self.version = self.sync_weights()

    # -- the stages ------------------------------------------------------------------------------

    def generate(self, prompts: list[Any], *, num_generations: int, seed: int, greedy: bool = False) -> RolloutBatch:
        """Completions of ``prompts`` with the current weights (the loop's rollouts go through the
        pipeline, :meth:`start_rollout` and :meth:`finish_rollout`)."""
        kwargs = dict(num_generations=num_generations, seed=seed, greedy=greedy, weight_version=self.version)
        return self.finish_rollout(prompts, self.start_rollout(prompts, **kwargs), **kwargs)

    def start_rollout(
        self, prompts: list[Any], *, num_generations: int, seed: int, weight_version: int, greedy: bool = False
    ) -> list[Any]:
        """Send whole prompts (so groups stay together) to the rollout workers; returns at once."""
        shares = _split(prompts, len(self.actors.rollout_workers))
        return [
            self._generate_call(w, share, num_generations, seed, weight_version, greedy)
            for w, share in zip(self.actors.rollout_workers, shares)
        ]

    def finish_rollout(
        self, prompts: list[Any], started: list[Any], *, num_generations: int, seed: int, weight_version: int,
        greedy: bool = False,
    ) -> RolloutBatch:
        """Wait for a rollout :meth:`start_rollout` started; stack the workers' parts.

        A worker that died, or answers with other weights than ``weight_version`` (it restarted
        between calls), is re-synced to the current weights and asked again with the same seed."""
        workers = self.actors.rollout_workers
        shares = _split(prompts, len(workers))
        parts = self._gather(
            "rollout",
            workers[: len(shares)],
            lambda i, w: self._generate_call(w, shares[i], num_generations, seed, weight_version, greedy),
            futures=started,
            valid=lambda part: part.weight_version in (weight_version, self.version),
            recover=self._resync,
        )
        versions = sorted({part.weight_version for part in parts})
        if len(versions) > 1:  # a share generated again after a restart, with newer weights
            log.warning("rollout parts were generated with weight versions %s: the batch counts as %d", versions, versions[0])
            parts = [dataclasses.replace(part, weight_version=versions[0]) for part in parts]
        return RolloutBatch.concat(parts)

    def _generate_call(
        self, worker: Any, prompts: list[Any], num_generations: int, seed: int, weight_version: int, greedy: bool
    ) -> Any:
        # an asynchronous colocated worker keeps several weight versions: the call names its own
        version = {"weight_version": weight_version} if self.actors.rollout_group else {}
        call = self.actors.rollout_call(worker, "generate")
        return call.remote(prompts, num_generations=num_generations, seed=seed, greedy=greedy, **version)

    def score(self, rows: list[dict[str, Any]], batch: RolloutBatch) -> torch.Tensor:
        """``[N, R]`` rewards; whole groups of completions are split across reward workers."""
        g = len(batch) // len(rows)
        prompts = [row["prompt"] for row in rows for _ in range(g)]
        columns = columns_of(rows, g)
        groups = _split(range(len(rows)), len(self.actors.reward_workers))
        spans = [(gs[0] * g, (gs[-1] + 1) * g) for gs in groups]

        def submit(i: int, worker: Any) -> Any:
            lo, hi = spans[i]
            part = {k: v[lo:hi] for k, v in columns.items()}
            return worker.score.remote(prompts[lo:hi], batch.completions[lo:hi], part, group_size=g)

        parts = self._gather("reward", self.actors.reward_workers[: len(spans)], submit)
        scores = [row for part in parts for row in part]
        return torch.tensor(scores, dtype=torch.float32).reshape(len(batch), len(self.reward_names))

    def sync_weights(self) -> int:
        """Make every rollout worker hold the learner's weights (checked); returns that version.

        A rollout worker that died (asynchronous: while generating, so the push queued behind its
        rollout failed) gets the weights alone once Ray restarted it; its rollouts are retried
        when the loop collects them."""
        import ray

        started = time.perf_counter()
        try:
            return self.weight_sync.push()
        except (ray.exceptions.RayActorError, WeightSyncError) as err:
            died = [] if self.actors.colocated else self._rollout_workers_died(err)
            if not died:
                raise
            workers = self.actors.rollout_workers
            try:
                for index in died:
                    self._wait_alive("rollout", index, workers[index])
            except ray.exceptions.RayActorError:  # not restarted (run.max_worker_restarts spent)
                raise err from None
            version = ray.get(self.actors.learner.weight_version.remote())
            log.warning("rollout worker(s) %s died during the weight sync: giving them version %d alone", died, version)
            self.state.worker_restarts += len(died)
            for worker in workers:  # the restarted ones, and any a failed broadcast left behind
                if ray.get(worker.weight_version.remote()) != version:
                    self._resync(worker, version)
            if self.config.rollout.sync_check:
                self.weight_sync.check(version)
            self.weight_sync.timings = {"time/sync_s": time.perf_counter() - started}
            return version

    def _rollout_workers_died(self, err: Exception) -> list[int]:
        """Indices of the rollout workers whose death ``err`` (from a weight sync) reports."""
        if isinstance(err, WeightSyncError):
            return list(err.died)
        ids = [w._actor_id.hex() for w in self.actors.rollout_workers]
        actor = getattr(err, "actor_id", None)
        return [ids.index(actor)] if actor in ids else []

    def _resync(self, worker: Any, version: int | None = None) -> None:
        """Give one (restarted) rollout worker the current weights before it serves again."""
        try:
            self.weight_sync.resync(worker, self.version if version is None else version)
        except WeightSyncError as err:
            raise TrainingFailed(str(err)) from None

    def _gather(
        self,
        kind: str,
        workers: list[Any],
        submit: Callable[[int, Any], Any],
        *,
        valid: Callable[[Any], bool] | None = None,
        recover: Callable[[Any], None] | None = None,
        futures: list[Any] | None = None,
    ) -> list[Any]:
        """``ray.get`` of ``submit(i, worker)`` for each worker, surviving worker deaths.

        A worker that died (Ray restarts it, up to ``run.max_worker_restarts`` times) or whose
        answer fails ``valid`` gets ``recover(worker)`` once it is back, and its call again.
        Exceptions raised inside a worker's code are not retried. ``futures``: the calls,
        already submitted (``submit`` then only retries)."""
        import ray

        futures = list(futures) if futures is not None else [submit(i, w) for i, w in enumerate(workers)]
        results = []
        limit = self.config.run.max_worker_restarts
        for i, worker in enumerate(workers):
            failures = 0
            while True:
                try:
                    if failures:
                        self._wait_alive(kind, i, worker)
                        if recover is not None:
                            recover(worker)
                        futures[i] = submit(i, worker)
                    result = ray.get(futures[i])
                    if valid is None or valid(result):
                        break
                    reason = "answered from a restarted process"
                except ray.exceptions.RayActorError as err:
                    reason = f"died ({type(err).__name__})"
                failures += 1
                self.state.worker_restarts += 1
                if failures > limit:
                    raise TrainingFailed(
                        f"{kind} worker {i} {reason} and has failed {failures} times in one call "
                        f"(run.max_worker_restarts={limit}). {self._resume_hint()}"
                    )
                log.warning("%s worker %d %s: retrying its share once it is back (%d/%d)", kind, i, reason, failures, limit)
            results.append(result)
        return results

    def _wait_alive(self, kind: str, index: int, worker: Any) -> None:
        import ray

        deadline = time.monotonic() + WORKER_RESTART_TIMEOUT_S
        while True:
            try:
                ray.get(worker.__ray_ready__.remote())
                return
            except ray.exceptions.ActorUnavailableError:  # restarting
                if time.monotonic() > deadline:
                    raise TrainingFailed(
                        f"{kind} worker {index} did not come back within {WORKER_RESTART_TIMEOUT_S:.0f}s. {self._resume_hint()}"
                    ) from None
                time.sleep(0.2)

    # -- the loop --------------------------------------------------------------------------------

    def run(self, on_step: StepHook | None = None) -> TrainResult:
        from ray.exceptions import RayActorError, RayTaskError
        from tqdm import tqdm

        c = self.config
        s = self.state
        out = Path(c.run.output_dir)
        for name in remove_stale(out):
            log.warning("removed %s, left by a save that was killed", out / name)
        if self.resumed_from is not None:
            self._drop_later_checkpoints(out)
        metrics_log = MetricsLog(
            str(out), c.run.report_to, config_to_dict(c), resume_step=s.step if self.resumed_from is not None else None
        )
        history: list[dict[str, Any]] = []
        bar = tqdm(total=c.run.max_steps, initial=s.step, desc="GRPO", unit="step", dynamic_ncols=True)
        try:
            with self._catching_signals():
                try:
                    initial = on_step(0, {}) if on_step and s.step == 0 else None
                    if initial:
                        metrics_log.write(0, initial)
                        bar.write(console_line(0, initial))
                    while s.step < c.run.max_steps:
                        self._cycle_logged(metrics_log, bar, history, on_step)
                        if self._stop_signal is not None:
                            self._interrupt(bar)
                    final = self.checkpoint()
                except RayActorError as err:
                    raise TrainingFailed(
                        f"an actor died after step {s.step} ({type(err).__name__}; the learner is not restarted: "
                        f"its state lives only in checkpoints). {self._resume_hint()}"
                    ) from err
                except RayTaskError as err:
                    raise TrainingFailed(
                        f"an actor failed after step {s.step}: {type(err.cause).__name__}: {err.cause}. "
                        f"{self._resume_hint()}"
                    ) from err
            link_final(out, final.name)
        finally:
            bar.close()
            metrics_log.close()
        return TrainResult(optimizer_steps=s.step, history=history, output_dir=str(out), checkpoint=str(final))

    def _cycle_logged(
        self, metrics_log: MetricsLog, bar: Any, history: list[dict[str, Any]], on_step: StepHook | None = None
    ) -> None:
        """One cycle, then its records logged, the skip guard and the periodic checkpoint."""
        c, s = self.config, self.state
        before = s.step
        for record in self._cycle():
            step = int(record["step"])
            if on_step:
                record |= on_step(step, record) or {}
            history.append(record)
            if step % c.run.logging_steps == 0:
                metrics_log.write(step, record)
                bar.write(console_line(step, record))
            bar.update(1)
        if s.consecutive_skips >= c.run.max_consecutive_skips:
            path = self.checkpoint()
            raise TrainingFailed(
                f"{s.consecutive_skips} optimizer steps in a row were skipped for a non-finite loss or gradient "
                f"('skipped' in metrics.jsonl; run.max_consecutive_skips={c.run.max_consecutive_skips}); stopped at "
                f"step {s.step} with checkpoint {path}. Check the reward scale and optim.learning_rate before resuming"
            )
        if c.run.save_steps and s.step // c.run.save_steps > before // c.run.save_steps:
            self.checkpoint()

    def _cycle(self) -> list[dict[str, Any]]:
        """One generation cycle; returns one record per optimizer step taken (state updated)."""
        import ray

        c, s = self.config, self.state
        g = c.grpo.num_generations
        started, began = time.perf_counter(), time.time()
        self.pipeline.fill(policy=s.cycle, weight_version=self.version)  # the rollouts these weights generate
        rollout = self.pipeline.take(s.cycle)  # this cycle's, started max_staleness cycles ago (or just now)
        rows, batch = rollout.rows, rollout.batch
        assert batch is not None
        generated = time.perf_counter()
        raw = self.score(rows, batch)
        scored = time.perf_counter()
        batch.rewards, dropped = drop_nonfinite_rewards(raw)
        if dropped.any():
            culprits = [n for n, bad in zip(self.reward_names, torch.isinf(raw).any(0).tolist()) if bad]
            log.warning("dropped %d completion(s) with an infinite reward from %s", int(dropped.sum()), culprits)
        flat = zero_variance_groups(combine_rewards(batch.rewards, c.grpo.reward_weights), g)
        batch.advantages = compute_advantages(batch.rewards, g, c.grpo.reward_weights, c.grpo.scale_rewards)
        summary = self.rollout_metrics(batch) | {
            "dropped_samples": float(dropped.sum()),
            "frac_reward_zero_std": float(flat.float().mean()),
        }
        batch.completion_mask = batch.completion_mask.masked_fill(dropped.unsqueeze(1), 0)  # out of the loss
        learning, train_began = time.perf_counter(), time.time()
        step_metrics = ray.get(
            self.actors.learner.train_generation.remote(batch, s.cycle, max_steps=c.run.max_steps - s.step)
        )
        train_ended = time.time()
        # the driver's view of each stage (with Ray's transfers), beside the actors' own time/*_s
        summary |= {
            "time/rollout_s": generated - started, "time/rewards_s": scored - generated,
            "time/learner_s": time.perf_counter() - learning,
        }
        self.version = self.sync_weights()
        summary.update(self.weight_sync.timings)
        summary |= self.pipeline.step_metrics(
            rollout, learner_version=s.step, window=(began, time.time()), learner_busy=(train_began, train_ended),
            learner_free_since=self._learner_free_since or began,
        )
        self._learner_free_since = train_ended
        s.cycle += 1
        s.dropped_samples += int(dropped.sum())
        s.zero_variance_groups += int(flat.sum())
        s.stale_dropped_samples += int(summary["async/dropped_samples"])
        summary["time/cycle_s"] = time.perf_counter() - started
        records = []
        for m in step_metrics:
            if m.get("partial_window"):
                continue
            s.step += 1
            skipped = m.get("skipped") == 1.0
            s.skipped_steps += skipped
            s.consecutive_skips = s.consecutive_skips + 1 if skipped else 0
            records.append(summary | m | {
                "step": s.step,
                "total/skipped_steps": s.skipped_steps,
                "total/dropped_samples": s.dropped_samples,
                "total/zero_variance_groups": s.zero_variance_groups,
                "total/worker_restarts": s.worker_restarts,
                "total/stale_dropped_samples": s.stale_dropped_samples,
            })
        if self.version != s.step:
            raise TrainingFailed(f"step count out of step: {s.step} optimizer steps counted, learner at version {self.version}")
        s.weight_version = self.version
        return records

    def rollout_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        """Reward, per-function reward, completion length and truncation of one generation batch."""
        assert batch.rewards is not None
        total = combine_rewards(batch.rewards, self.config.grpo.reward_weights)
        lengths = batch.completion_mask.sum(1).float()
        out = {
            "reward": float(torch.nanmean(total)),
            "reward_std": float(torch.nan_to_num(nanstd(total))),  # 0 with fewer than two scored rows
            "completion_length": float(lengths.mean()),
            "truncated_fraction": float(batch.truncated.float().mean()),
            "weight_version_sampled": float(batch.weight_version),
        }
        for i, name in enumerate(self.reward_names):
            out[f"rewards/{name}"] = float(torch.nanmean(batch.rewards[:, i]))
            out[f"rewards/{name}_std"] = float(torch.nan_to_num(nanstd(batch.rewards[:, i])))
        return out | {k: float(v) for k, v in batch.meta.items()}

    # -- checkpoints -----------------------------------------------------------------------------

    def checkpoint(self) -> Path:
        """Save ``checkpoint-<step>`` atomically (learner state, trainer state, config), then
        rotate; a second call at the same step returns the same checkpoint."""
        import ray

        c, s = self.config, self.state
        out = Path(c.run.output_dir)
        name = checkpoint_name(s.step)
        if self._saved_step == s.step and (out / name / TRAINER_STATE).is_file():
            return out / name
        self.pipeline.complete()  # rollouts generated ahead are saved with the checkpoint, finished
        s.sampler, s.pending_rollouts = self.pipeline.state()
        s.weight_version = self.version
        payload = {"state": s.to_dict(), "config": config_to_dict(c)}

        def fill(tmp: Path) -> None:
            ray.get(self.actors.learner.save_state.remote(str(tmp)))
            (tmp / TRAINER_STATE).write_text(json.dumps(payload, indent=1))

        path = write_atomic(out, name, fill)
        self._saved_step = s.step
        for old in rotate(out, c.run.keep_last_n):
            log.info("removed %s (run.keep_last_n=%d)", old, c.run.keep_last_n)
        log.info("saved %s", path)
        return path

    def _drop_later_checkpoints(self, out: Path) -> None:
        """A resumed run redoes the steps after its checkpoint: older saves of those steps go."""
        import shutil

        for step, path in step_checkpoints(out):
            if step > self.state.step:
                log.warning("removing %s: the run resumes at step %d and redoes it", path, self.state.step)
                shutil.rmtree(path)
        if (out / FINAL).is_symlink():
            (out / FINAL).unlink()

    def _resume_hint(self) -> str:
        found = step_checkpoints(Path(self.config.run.output_dir))
        if not found:
            return "No checkpoint was saved (run.save_steps sets how often one is)"
        step, path = found[-1]
        return f"The last checkpoint is {path} (step {step}): resume with --run.resume latest"

    # -- signals ---------------------------------------------------------------------------------

    @contextmanager
    def _catching_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM set a flag that the loop reads between cycles (a second one stops at once)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without a checkpoint
        self._stop_signal = signum
        log.warning(
            "%s: finishing this generation cycle, then saving a checkpoint (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def _interrupt(self, bar: Any) -> None:
        """Save, shut the actors down, print one line and exit (TrainingInterrupted)."""
        signum = self._stop_signal
        assert signum is not None
        path = self.checkpoint()
        self.shutdown()
        bar.close()
        message = (
            f"{signal.Signals(signum).name}: stopped at step {self.state.step}/{self.config.run.max_steps}; "
            f"checkpoint {path}; resume with --run.resume latest (or --run.resume {path})"
        )
        print(message, file=sys.stderr, flush=True)
        raise TrainingInterrupted(message, signum, path)

    # -- the end ---------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every actor (and the local Ray cluster if this trainer started it); idempotent."""
        import ray

        if self._closed:
            return
        self._closed = True
        if self.actors is not None:
            try:
                ray.get([w.close.remote() for w in self.actors.reward_workers], timeout=30)
            except (ray.exceptions.RayError, TimeoutError) as err:
                log.warning("a reward worker did not close cleanly: %s", err)
            for handle in self.actors.unique():
                ray.kill(handle)
            ray.util.remove_placement_group(self.actors.placement_group)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
