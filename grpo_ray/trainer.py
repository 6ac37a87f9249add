"""The driver: the GRPO loop over Ray actors, top to bottom like the algorithm.

    for each generation cycle:
        prompts     <- the next unique prompts of the dataset
        rollout     <- rollout workers sample num_generations completions per prompt
        rewards     <- reward workers score every completion with every reward function
        advantages  <- group-relative advantages (grpo_ray.advantages)
        learner     <- micro-steps of the batch plan, optimizer steps (grpo_ray.loss)
        sync        <- the learner's new weights to every rollout worker
        log, checkpoint

Where the actors live (one CPU box, one GPU, many nodes) is decided in grpo_ray.cluster; the
loop is the same everywhere.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from grpo_ray.advantages import combine_rewards, compute_advantages, nanstd
from grpo_ray.batching import describe_cycle
from grpo_ray.cli import config_to_dict
from grpo_ray.cluster import Actors, connect, place_actors
from grpo_ray.config import TrainConfig
from grpo_ray.data import PromptSampler, columns_of
from grpo_ray.rollout_batch import RolloutBatch
from grpo_ray.tracking import MetricsLog, console_line
from grpo_ray.weight_sync import make_weight_sync

log = logging.getLogger("grpo_ray")

#: ``on_step(step, record) -> extra metrics``: called with step 0 and an empty record before the
#: first cycle, then after every optimizer step (the rollout workers then hold that cycle's
#: weights); what it returns joins the step's record (metrics.jsonl, sinks, console line).
StepHook = Callable[[int, dict[str, Any]], "dict[str, Any] | None"]


@dataclass
class TrainResult:
    optimizer_steps: int
    history: list[dict[str, Any]]  # one record per optimizer step
    output_dir: str


def _split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Contiguous, nearly equal slices (empty slices dropped)."""
    size = math.ceil(len(items) / parts)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def preflight(config: TrainConfig) -> Any:
    """Fail in the driver, before any actor starts, on what would otherwise fail inside one.

    Returns the model's transformers config.
    """
    from transformers import AutoConfig

    from grpo_ray.rewards import resolve

    if not config.reward.functions:
        raise ValueError("reward.functions is empty: name at least one reward function")
    for spec in config.reward.functions:
        resolve(spec)  # raises RewardResolutionError naming the entry and the registered names
    if config.rollout.backend == "vllm":
        from actors.engines.vllm_engine import require_supported_vllm

        require_supported_vllm()
    try:
        return AutoConfig.from_pretrained(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model.name_or_path={config.model.name_or_path!r} is not a loadable checkpoint: {err}"
        ) from err


class GRPOTrainer:
    """Owns the actors of one run; ``run()`` is the loop."""

    def __init__(self, config: TrainConfig, train_rows: Sequence[dict[str, Any]]):
        self.config = config
        self.vocab_size = preflight(config).vocab_size
        self.sampler = PromptSampler(train_rows, seed=config.run.seed)
        b = config.batch
        self.plan = describe_cycle(
            b.per_device_train_batch_size, b.gradient_accumulation_steps, b.steps_per_generation_value,
            config.grpo.num_generations, b.num_processes, config.grpo.num_iterations,
        )
        print(self.plan.describe(), flush=True)
        connect(config)
        self.actors: Actors = place_actors(config)
        import ray

        self.reward_names: list[str] = ray.get(self.actors.reward_workers[0].names.remote())
        self.weight_sync = make_weight_sync(config, self.actors, self.vocab_size)
        self.version = self.sync_weights()

    # -- the stages ------------------------------------------------------------------------------

    def generate(self, prompts: list[Any], *, num_generations: int, seed: int, greedy: bool = False) -> RolloutBatch:
        """Split whole prompts (so groups stay together) across rollout workers; stack the results."""
        import ray

        workers = self.actors.rollout_workers
        shares = _split(prompts, len(workers))
        futures = [
            w.generate.remote(share, num_generations=num_generations, seed=seed, greedy=greedy)
            for w, share in zip(workers, shares)
        ]
        return RolloutBatch.concat(ray.get(futures))

    def score(self, rows: list[dict[str, Any]], batch: RolloutBatch) -> torch.Tensor:
        """``[N, R]`` rewards; rows of completions are split across reward workers."""
        import ray

        g = len(batch) // len(rows)
        prompts = [row["prompt"] for row in rows for _ in range(g)]
        columns = columns_of(rows, g)
        workers = self.actors.reward_workers
        spans = _split(range(len(batch)), len(workers))
        futures = [
            w.score.remote(
                prompts[s[0] : s[-1] + 1],
                batch.completions[s[0] : s[-1] + 1],
                {k: v[s[0] : s[-1] + 1] for k, v in columns.items()},
            )
            for w, s in zip(workers, spans)
        ]
        scores = [row for part in ray.get(futures) for row in part]
        return torch.tensor(scores, dtype=torch.float32).reshape(len(batch), len(self.reward_names))

    def sync_weights(self) -> int:
        """Make every rollout worker hold the learner's weights (checked); returns that version."""
        return self.weight_sync.push()

    # -- the loop --------------------------------------------------------------------------------

    def run(self, on_step: StepHook | None = None) -> TrainResult:
        import ray
        from tqdm import tqdm

        c = self.config
        metrics_log = MetricsLog(c.run.output_dir, c.run.report_to, config_to_dict(c))
        history: list[dict[str, Any]] = []
        steps = 0
        bar = tqdm(total=c.run.max_steps, desc="GRPO", unit="step", dynamic_ncols=True)
        cycle = 0
        try:
            initial = on_step(0, {}) if on_step else None
            if initial:
                metrics_log.write(0, initial)
                bar.write(console_line(0, initial))
            while steps < c.run.max_steps:
                started = time.perf_counter()
                rows = self.sampler.next(self.plan.unique_prompts)
                batch = self.generate([r["prompt"] for r in rows], num_generations=c.grpo.num_generations, seed=c.run.seed + cycle)
                batch.rewards = self.score(rows, batch)
                batch.advantages = compute_advantages(
                    batch.rewards, c.grpo.num_generations, c.grpo.reward_weights, c.grpo.scale_rewards
                )
                step_metrics = ray.get(self.actors.learner.train_generation.remote(batch, cycle))
                self.version = self.sync_weights()
                summary = self.rollout_metrics(batch) | self.weight_sync.timings
                summary["time/cycle_s"] = time.perf_counter() - started
                for m in step_metrics:
                    if m.get("partial_window"):
                        continue
                    steps += 1
                    record = summary | m
                    if on_step:
                        record |= on_step(steps, record) or {}
                    history.append(record)
                    if steps % c.run.logging_steps == 0:
                        metrics_log.write(steps, record)
                        bar.write(console_line(steps, record))
                    bar.update(1)
                    if c.run.save_steps and steps % c.run.save_steps == 0:
                        self.save(f"checkpoint-{steps}")
                    if steps >= c.run.max_steps:
                        break
                cycle += 1
            self.save("final")
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving what was learned so far", steps)
            self.save(f"interrupted-{steps}")
            raise
        finally:
            bar.close()
            metrics_log.close()
        return TrainResult(optimizer_steps=steps, history=history, output_dir=c.run.output_dir)

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

    def save(self, name: str) -> str:
        import ray

        path = str(Path(self.config.run.output_dir) / name)
        ray.get(self.actors.learner.save.remote(path))
        log.info("saved %s", path)
        return path

    def shutdown(self) -> None:
        import ray

        ray.get([w.close.remote() for w in self.actors.reward_workers])
        for handle in self.actors.unique():
            ray.kill(handle)
        ray.util.remove_placement_group(self.actors.placement_group)
