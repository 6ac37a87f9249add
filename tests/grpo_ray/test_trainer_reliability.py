"""Reliability of the loop on a real local Ray cluster: exact checkpoints, exact resume after an
interrupt and after a learner crash, dead rollout/reward workers, numerical guards.

One uninterrupted baseline run is the reference: every other run must log the very same
per-step numbers (bit for bit: the CPU path is deterministic and retries reuse their seeds).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import ray
import torch

from grpo_ray.checkpoint import LEARNER_STATE, read_trainer_state
from grpo_ray.trainer import GRPOTrainer, TrainingFailed, TrainingInterrupted
from tests.support.tiny import tiny_config

ROWS = [{"prompt": p} for p in ["1+2=", "33+4=", "5+", "ab", "7=", "12+12=", "9+9", "a+b="]]
STEPS = 8  # 4 generation cycles of 2 optimizer steps
#: Everything a step computes (timings aside).
SAME = ("loss", "reward", "reward_std", "grad_norm", "completion_length", "learning_rate", "weight_version",
        "weight_version_sampled", "rewards/tests.support.reward_fns:slow_short_completion", "frac_reward_zero_std")


def config(checkpoint: Path, out: Path, **sections):
    base = {
        "rollout": {"num_workers": 1},
        "reward": {"functions": ("tests.support.reward_fns:slow_short_completion",), "num_workers": 1},
        "run": {"max_steps": STEPS, "save_steps": 2, "keep_last_n": 2, "seed": 0},
    }
    for name, values in sections.items():
        base[name] = base.get(name, {}) | values
    return tiny_config(checkpoint, out, **base)


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def when(condition: Callable[[], bool], action: Callable[[], None], timeout_s: float = 300) -> threading.Thread:
    """Run ``action`` on a thread as soon as ``condition`` holds."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                action()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def pid_of(handle) -> int:
    return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))


def assert_same_steps(run: list[dict], reference: list[dict]) -> None:
    assert [r["step"] for r in run] == [r["step"] for r in reference] == list(range(1, STEPS + 1))
    for mine, theirs in zip(run, reference):
        assert {k: mine[k] for k in SAME} == {k: theirs[k] for k in SAME}, mine["step"]


@pytest.fixture(scope="module")
def baseline(cluster, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "run"
    trainer = GRPOTrainer(config(checkpoint, out), ROWS)
    try:
        result = trainer.run()
    finally:
        trainer.shutdown()
    return out, result


def test_checkpoint_n_holds_exactly_n_steps_and_old_ones_rotate(baseline):
    out, result = baseline
    assert result.optimizer_steps == STEPS and [r["step"] for r in metrics(out)] == list(range(1, STEPS + 1))
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert kept == ["checkpoint-6", "checkpoint-8"]  # save_steps=2, keep_last_n=2
    for name in kept:
        n = int(name.split("-")[1])
        state = read_trainer_state(out / name)["state"]
        assert state["step"] == state["weight_version"] == n and state["cycle"] == n // 2
        assert torch.load(out / name / LEARNER_STATE, weights_only=True)["version"] == n
    assert (out / "final").resolve() == (out / "checkpoint-8").resolve()
    assert not list(out.glob(".tmp-*"))


def test_interrupted_then_crashed_run_resumes_bit_identical(baseline, checkpoint, tmp_path):
    out = tmp_path / "run"
    # 1. Ctrl-C (SIGINT) once the first cycle is logged: the run ends its cycle, saves, and exits.
    trainer = GRPOTrainer(config(checkpoint, out), ROWS)
    when(lambda: len(metrics(out)) >= 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.run()
    first = read_trainer_state(stopped.value.checkpoint)["state"]["step"]
    assert stopped.value.code == 128 + signal.SIGINT and first in (2, 4)
    assert f"resume with --run.resume latest (or --run.resume {stopped.value.checkpoint})" in str(stopped.value)

    # 2. Resume; kill -9 the learner once the next checkpoint is written: a clear failure naming it.
    trainer = GRPOTrainer(config(checkpoint, out, run={"resume": "latest"}), ROWS)
    learner_pid = pid_of(trainer.actors.learner)
    second = out / f"checkpoint-{first + 2}"
    when(second.exists, lambda: os.kill(learner_pid, signal.SIGKILL))
    try:
        with pytest.raises(TrainingFailed, match=rf"checkpoint-{first + 2} \(step {first + 2}\): resume with --run.resume latest"):
            trainer.run()
    finally:
        trainer.shutdown()

    # 3. Resume again and finish: the log is the uninterrupted run's, step for step.
    trainer = GRPOTrainer(config(checkpoint, out, run={"resume": "latest"}), ROWS)
    try:
        result = trainer.run()
    finally:
        trainer.shutdown()
    assert result.optimizer_steps == STEPS and [r["step"] for r in result.history] == list(range(first + 3, STEPS + 1))
    assert_same_steps(metrics(out), metrics(baseline[0]))


def test_killed_rollout_and_reward_workers_are_restarted_and_no_step_is_lost(baseline, checkpoint, tmp_path):
    out = tmp_path / "run"
    trainer = GRPOTrainer(config(checkpoint, out), ROWS)
    rollout, reward = trainer.actors.rollout_workers[0], trainer.actors.reward_workers[0]
    pids = {"rollout": pid_of(rollout), "reward": pid_of(reward)}
    when(lambda: len(metrics(out)) >= 2, lambda: os.kill(pids["rollout"], signal.SIGKILL))
    when(lambda: len(metrics(out)) >= 4, lambda: os.kill(pids["reward"], signal.SIGKILL))
    try:
        result = trainer.run()
        after = {"rollout": pid_of(rollout), "reward": pid_of(reward)}
        versions = ray.get(rollout.weight_version.remote())
    finally:
        trainer.shutdown()
    assert after["rollout"] != pids["rollout"] and after["reward"] != pids["reward"]  # both were restarted
    assert versions == STEPS and result.history[-1]["total/worker_restarts"] >= 1
    assert_same_steps(metrics(out), metrics(baseline[0]))


def test_infinite_rewards_are_dropped_and_repeated_skipped_steps_stop_the_run(cluster, checkpoint, tmp_path):
    out = tmp_path / "run"
    c = config(
        checkpoint, out,
        grpo={"scale_rewards": "none"},
        reward={"functions": ("tests.support.reward_fns:flat_infinite_huge",)},
        run={"save_steps": 0, "max_consecutive_skips": 2},
    )
    trainer = GRPOTrainer(c, ROWS)
    try:
        with pytest.raises(TrainingFailed, match=r"2 optimizer steps in a row were skipped .* checkpoint .*checkpoint-2"):
            trainer.run()
    finally:
        trainer.shutdown()
    records = metrics(out)
    assert [r["skipped"] for r in records] == [1.0, 1.0]
    assert records[-1]["dropped_samples"] == 1.0 and records[-1]["total/dropped_samples"] == 1
    assert records[-1]["frac_reward_zero_std"] == 0.25  # group 0 of 4 has no reward spread
    assert records[-1]["total/skipped_steps"] == 2 and records[-1]["total/zero_variance_groups"] == 1
    state = torch.load(out / "checkpoint-2" / LEARNER_STATE, weights_only=True)
    lora_b = [t for name, t in state["params"].items() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(t) == 0 for t in lora_b)  # skipped steps left the weights alone
