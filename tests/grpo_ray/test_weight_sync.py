"""Weight sync and placement on a real local Ray cluster: colocate mode, and the stale-weight guard."""

from __future__ import annotations

import pytest
import ray

from grpo_ray.trainer import GRPOTrainer
from grpo_ray.weight_sync import StaleWeightsError, probe_tokens
from tests.support.tiny import tiny_config

ROWS = [{"prompt": p} for p in ["1+2=", "33+4=", "5+", "ab", "7=", "12+12=", "9+9", "a+b="]]


def test_probe_is_fixed_and_inside_the_vocabulary():
    assert probe_tokens(50) == probe_tokens(50)
    assert all(0 <= t < 50 for t in probe_tokens(50)) and len(set(probe_tokens(50))) > 10


@pytest.mark.parametrize("lora", [True, False])
def test_colocate_mode_trains_with_one_actor_and_in_process_sync(cluster, checkpoint, tmp_path, lora):
    config = tiny_config(
        checkpoint, tmp_path / "run", rollout={"num_workers": 1}, reward={"num_workers": 1},
        run={"mode": "colocate"}, lora={"enabled": lora},
    )
    trainer = GRPOTrainer(config, ROWS)
    try:
        assert trainer.actors.colocated and trainer.actors.rollout_workers == [trainer.actors.learner]
        assert len(trainer.actors.unique()) == 2  # the colocated worker and one reward worker
        result = trainer.run()
        version = ray.get(trainer.actors.learner.weight_version.remote())
    finally:
        trainer.shutdown()
    assert result.optimizer_steps == 3 and version == 3  # checkpoint-N holds exactly N steps
    # the guard ran after every sync (the engine samples from the learner's own tensors: no gap)
    assert all(r["time/sync_check_s"] > 0 for r in result.history)
    assert [r["weight_version_sampled"] for r in result.history] == [0, 0, 2]


def test_stale_weight_guard_stops_a_run_whose_engine_missed_a_sync(cluster, checkpoint, tmp_path):
    config = tiny_config(checkpoint, tmp_path / "run", rollout={"num_workers": 2}, reward={"num_workers": 1})
    trainer = GRPOTrainer(config, ROWS)
    try:
        trainer.weight_sync.check(trainer.version)  # freshly synced: passes
        rows = trainer.sampler.next(trainer.plan.unique_prompts)
        batch = trainer.generate([r["prompt"] for r in rows], num_generations=4, seed=0)
        batch.rewards = trainer.score(rows, batch)
        from grpo_ray.advantages import compute_advantages

        batch.advantages = compute_advantages(batch.rewards, 4)
        ray.get(trainer.actors.learner.train_generation.remote(batch, 0))
        pushed = trainer.version + 2  # the push that should have come was skipped: the engines say so
        with pytest.raises(StaleWeightsError, match=f"rollout worker 0 reports weight version 0 after the push of version {pushed}"):
            trainer.weight_sync.check(pushed)
        for worker in trainer.actors.rollout_workers:  # engines that claim the version without its weights
            ray.get(worker.update_weights.remote({}, pushed))
        with pytest.raises(StaleWeightsError, match="rollout worker 0 does not hold the learner's weights"):
            trainer.weight_sync.check(pushed)  # the probe's logprobs give them away
        assert trainer.sync_weights() == 2  # after a real push the guard passes again
    finally:
        trainer.shutdown()
