"""Asynchronous rollouts (rollout.max_staleness) through the real loop on a local Ray cluster.

The reference is one uninterrupted max_staleness=1 run whose engine is slow in its first cycles
and whose learner is slow in its last ones (injected delays): the bound holds in both regimes,
and every other max_staleness=1 run (no delays, interrupted and resumed, colocated) logs the very
same per-step numbers, because the schedule fixes each cycle's weights whatever the timing.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import ray
import torch

from grpo_ray.advantages import compute_advantages
from grpo_ray.checkpoint import read_trainer_state
from grpo_ray.guards import drop_nonfinite_rewards
from grpo_ray.trainer import GRPOTrainer, TrainingFailed, TrainingInterrupted
from grpo_ray.trainer_state import TrainerState
from tests.grpo_ray.test_trainer_reliability import ROWS, SAME, metrics, pid_of, when
from tests.support.tiny import tiny_config

STEPS = 8  # 4 generation cycles of 2 optimizer steps (steps_per_generation=2)
DELAY_S = 0.6


def config(checkpoint: Path, out: Path, max_staleness: int, **sections):
    base = {
        "rollout": {"num_workers": 1, "max_staleness": max_staleness},
        "reward": {"functions": ("tests.support.reward_fns:short_completion",), "num_workers": 1},
        "run": {"max_steps": STEPS, "save_steps": 2, "keep_last_n": 2, "seed": 0},
    }
    for name, values in sections.items():
        base[name] = base.get(name, {}) | values
    return tiny_config(checkpoint, out, **base)


def _slow_engine(actor, seconds: float, calls: int) -> None:
    """The rollout worker's first ``calls`` generations take ``seconds`` longer."""
    import time

    inner, count = actor.engine.generate, [0]

    def generate(*args, **kwargs):
        count[0] += 1
        if count[0] <= calls:
            time.sleep(seconds)
        return inner(*args, **kwargs)

    actor.engine.generate = generate


def _slow_learner(actor, seconds: float, after: int) -> None:
    """The learner's optimizer steps after the first ``after`` take ``seconds`` longer."""
    import time

    inner, count = actor._optimizer_step, [0]

    def step(*args, **kwargs):
        count[0] += 1
        if count[0] > after:
            time.sleep(seconds)
        return inner(*args, **kwargs)

    actor._optimizer_step = step


def run_with_delays(trainer: GRPOTrainer) -> None:
    """A slow engine for cycles 0-1 (the learner waits for it), a slow learner for cycles 2-3 (the
    engine waits for the weights its next rollout is due with)."""
    ray.get(trainer.actors.rollout_workers[0].__ray_call__.remote(_slow_engine, DELAY_S, 2))
    ray.get(trainer.actors.learner.__ray_call__.remote(_slow_learner, DELAY_S / 2, 4))
    trainer.run()


def assert_same_steps(run: list[dict], reference: list[dict]) -> None:
    assert [r["step"] for r in run] == [r["step"] for r in reference] == list(range(1, STEPS + 1))
    keys = [k for k in SAME if not k.startswith("rewards/")] + ["async/staleness", "async/version_lag"]
    for mine, theirs in zip(run, reference):
        assert {k: mine[k] for k in keys} == {k: theirs[k] for k in keys}, mine["step"]


def assert_within_bound(records: list[dict], s: int, exact: bool = True) -> None:
    for r in records:
        cycle = (r["step"] - 1) // 2
        staleness = r["async/staleness"]
        assert 0 <= staleness <= s and staleness <= cycle, r["step"]
        if exact:  # the fixed schedule: cycle c is generated with the weights of update max(c - s, 0)
            assert staleness == min(cycle, s) and r["async/version_lag"] == 2 * staleness
        hist = [r[f"async/staleness_hist/{k}"] for k in range(s + 1)]
        assert sum(hist) == 16 and hist[int(staleness)] == 16


@pytest.fixture(scope="module")
def baseline(cluster, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "run"
    trainer = GRPOTrainer(config(checkpoint, out, 1), ROWS)
    try:
        run_with_delays(trainer)
    finally:
        trainer.shutdown()
    return out


def test_max_staleness_1_holds_the_bound_under_a_slow_engine_then_a_slow_learner(baseline):
    records = metrics(baseline)
    assert_within_bound(records, 1)
    by_cycle = {(r["step"] - 1) // 2: r for r in records}
    # slow engine: the learner finishes cycle 0 and waits for cycle 1's rollout
    assert by_cycle[1]["async/learner_waited_samples"] == 16 and by_cycle[1]["time/learner_wait_s"] > 0
    # slow learner: cycle 3's rollout is due with the weights of cycle 2's update; the engine, done with
    # cycle 2's long before, waits for them
    assert by_cycle[3]["async/rollout_held_samples"] == 16 and by_cycle[3]["time/rollout_held_s"] > 0
    assert by_cycle[3]["async/learner_waited_samples"] == 0
    # cycles 0-2 each had a later rollout running while the learner trained
    assert all(by_cycle[c]["async/overlap"] > 0 for c in range(3)) and by_cycle[3]["async/overlap"] == 0
    assert records[-1]["total/stale_dropped_samples"] == 0


def test_max_staleness_2_holds_the_bound_and_survives_a_rollout_worker_killed_mid_run(cluster, checkpoint, tmp_path):
    out = tmp_path / "run"
    trainer = GRPOTrainer(config(checkpoint, out, 2, run={"save_steps": 0}), ROWS)
    rollout = trainer.actors.rollout_workers[0]
    pid = pid_of(rollout)
    when(lambda: len(metrics(out)) >= 4, lambda: os.kill(pid, signal.SIGKILL))  # during cycle 2 or 3's rollouts
    try:
        run_with_delays(trainer)
        restarted = pid_of(rollout)
    finally:
        trainer.shutdown()
    records = metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # no step lost, none twice
    assert restarted != pid and records[-1]["total/worker_restarts"] >= 1
    # a rollout generated again after the restart uses the current weights: fresher, never staler
    assert_within_bound(records, 2, exact=False)
    assert [r["async/staleness"] for r in records[:4]] == [0, 0, 1, 1]


def test_max_staleness_0_is_the_synchronous_loop(cluster, checkpoint, tmp_path):
    """Today's loop, written out from the trainer's stages (sample, generate, score, train, sync),
    then the same start through ``run()`` with max_staleness 0: the same numbers, bit for bit."""
    c = config(checkpoint, tmp_path / "run", 0, run={"max_steps": 4, "save_steps": 0})
    trainer = GRPOTrainer(c, ROWS)
    learner, g = trainer.actors.learner, c.grpo.num_generations
    start = str(tmp_path / "start")
    try:
        ray.get(learner.save_state.remote(start))
        sampler = trainer.sampler.state()
        reference = []
        for cycle in range(2):
            rows = trainer.sampler.next(trainer.plan.unique_prompts)
            batch = trainer.generate([r["prompt"] for r in rows], num_generations=g, seed=c.run.seed + cycle)
            batch.rewards, _ = drop_nonfinite_rewards(trainer.score(rows, batch))
            batch.advantages = compute_advantages(batch.rewards, g, c.grpo.reward_weights, c.grpo.scale_rewards)
            reference += ray.get(learner.train_generation.remote(batch, cycle, max_steps=4 - 2 * cycle))
            trainer.version = trainer.sync_weights()
        # back to the start (learner, sampler, engines), then the loop
        assert ray.get(learner.load_state.remote(start)) == 0
        trainer.state = TrainerState()
        trainer.pipeline.reset(TrainerState(sampler=sampler))
        trainer.version = trainer.sync_weights()
        result = trainer.run()
    finally:
        trainer.shutdown()
    assert [(m["loss"], m["grad_norm"]) for m in reference] == [(r["loss"], r["grad_norm"]) for r in result.history]
    assert [r["async/staleness"] for r in result.history] == [0.0] * 4


def test_an_async_run_interrupted_then_crashed_resumes_bit_identical(baseline, checkpoint, tmp_path):
    out = tmp_path / "run"
    # 1. Ctrl-C once the first cycle is logged: the cycle ends, the rollout in flight is finished and saved
    trainer = GRPOTrainer(config(checkpoint, out, 1), ROWS)
    when(lambda: len(metrics(out)) >= 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.run()
    saved = read_trainer_state(stopped.value.checkpoint)["state"]
    first = saved["step"]
    assert first in (2, 4) and [p["cycle"] for p in saved["pending_rollouts"]] == [first // 2]
    assert saved["pending_rollouts"][0]["policy"] == first // 2 - 1  # generated one update before

    # 2. Resume; kill -9 the learner once the next checkpoint is written: a clear failure naming it
    trainer = GRPOTrainer(config(checkpoint, out, 1, run={"resume": "latest"}), ROWS)
    learner_pid = pid_of(trainer.actors.learner)
    second = out / f"checkpoint-{first + 2}"
    when(second.exists, lambda: os.kill(learner_pid, signal.SIGKILL))
    try:
        with pytest.raises(TrainingFailed, match=rf"checkpoint-{first + 2} \(step {first + 2}\)"):
            trainer.run()
    finally:
        trainer.shutdown()

    # 3. Resume again and finish: every step as in the uninterrupted run, each cycle trained once
    trainer = GRPOTrainer(config(checkpoint, out, 1, run={"resume": "latest"}), ROWS)
    try:
        result = trainer.run()
    finally:
        trainer.shutdown()
    assert [r["step"] for r in result.history] == list(range(first + 3, STEPS + 1))
    assert_same_steps(metrics(out), metrics(baseline))
    assert read_trainer_state(out / "final")["state"]["pending_rollouts"] == []


def test_colocated_async_on_cpu_trains_like_the_distributed_schedule(baseline, checkpoint, tmp_path):
    """One actor plays both roles; its rollout group generates the next cycle with its own copy of the
    weights (a snapshot per version) while the learner trains: the same samples and steps."""
    out = tmp_path / "run"
    trainer = GRPOTrainer(config(checkpoint, out, 1, run={"mode": "colocate"}), ROWS)
    try:
        assert trainer.actors.colocated and trainer.actors.rollout_group == "rollout"
        trainer.run()
    finally:
        trainer.shutdown()
    assert_same_steps(metrics(out), metrics(baseline))
    assert_within_bound(metrics(out), 1)


def _slow_updates(actor, seconds: float) -> None:
    import time

    inner = actor.engine.update_weights

    def update(*args, **kwargs):
        time.sleep(seconds)
        return inner(*args, **kwargs)

    actor.engine.update_weights = update


def test_a_rollout_worker_killed_during_a_push_gets_the_weights_once_restarted(cluster, checkpoint, tmp_path):
    """Asynchronous pushes queue behind rollouts, so a worker that dies while generating fails the push:
    once Ray restarted it, it gets the weights alone and the guard checks it, instead of the run stopping."""
    import threading

    trainer = GRPOTrainer(config(checkpoint, tmp_path / "run", 1, run={"save_steps": 0}), ROWS)
    worker = trainer.actors.rollout_workers[0]
    try:
        ray.get(worker.__ray_call__.remote(_slow_updates, 5.0))
        threading.Timer(2.0, os.kill, (pid_of(worker), signal.SIGKILL)).start()
        assert trainer.sync_weights() == 0  # the push fails mid-way, the restarted worker is re-synced
        assert ray.get(worker.weight_version.remote()) == 0 and trainer.state.worker_restarts == 1
    finally:
        trainer.shutdown()
