"""The learner and a rollout worker in-process (no Ray): logprob parity, updates, reference."""

from __future__ import annotations

import pytest
import torch

from actors.learner import Learner
from actors.rollout_worker import RolloutWorker
from grpo_ray.advantages import compute_advantages
from tests.support.tiny import tiny_config

PROMPTS = ["1+2=", "33+4=", "5+", "ab"]

# The learner recomputes the logprob of each sampled token with one teacher-forced forward
# pass over [prompt; completion]; generate computed it step by step with a KV cache. Both are
# float32 on the same weights, so they agree to float32 rounding of the attention/matmul
# order: 1e-5 absolute is ~100x the differences seen (< 5e-7), and far below any real bug
# (a position-id or off-by-one error shifts logprobs by > 1e-1).
PARITY_ATOL = 1e-5


def _pair(config):
    learner, worker = Learner(config), RolloutWorker(config)
    version, weights = learner.weights()
    worker.update_weights(weights, version)
    return learner, worker


def _scored_batch(worker, seed=0):
    batch = worker.generate(PROMPTS, num_generations=4, seed=seed)
    batch.rewards = torch.arange(len(batch), dtype=torch.float32).unsqueeze(1) % 3
    batch.advantages = compute_advantages(batch.rewards, 4)
    return batch


def _train_once(learner, worker, seed=0):
    return learner.train_generation(_scored_batch(worker, seed), cycle=0)


@pytest.mark.parametrize("lora", [True, False])
def test_learner_logprobs_match_sampling_logprobs(checkpoint, tmp_path, lora):
    config = tiny_config(checkpoint, tmp_path, generation={"temperature": 0.7}, lora={"enabled": lora})
    learner, worker = _pair(config)
    _train_once(learner, worker)  # move the weights off their initial values (LoRA B != 0)
    version, weights = learner.weights()
    assert version == 2 and worker.update_weights(weights, version) == 2
    batch = worker.generate(PROMPTS, num_generations=4, seed=3)
    mask = batch.completion_mask.bool()
    assert mask.sum() > 10  # enough sampled tokens to compare
    diff = (learner.logprobs(batch) - batch.sampling_logps)[mask].abs().max()
    assert diff < PARITY_ATOL


def test_training_moves_weights_and_version(checkpoint, tmp_path):
    learner, worker = _pair(tiny_config(checkpoint, tmp_path))
    _, before = learner.weights()
    metrics = _train_once(learner, worker)
    version, after = learner.weights()
    assert version == 2 and [m["weight_version"] for m in metrics] == [1.0, 2.0]  # steps_per_generation=2
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(torch.tensor(m["loss"])) and m["grad_norm"] > 0 for m in metrics)


@pytest.mark.parametrize("lora", [True, False])
def test_training_raises_positive_advantage_completions_and_lowers_negative_ones(checkpoint, tmp_path, lora):
    """The direction of learning: one generation's optimizer steps on a fixed batch make the
    completions with A > 0 more likely and those with A < 0 less likely (summed over each
    completion's tokens, averaged over each side). A learner that climbs the loss does the opposite."""
    learner, worker = _pair(tiny_config(checkpoint, tmp_path, lora={"enabled": lora}))
    batch = _scored_batch(worker)
    mask = batch.completion_mask.float()
    before = (learner.logprobs(batch) * mask).sum(1)  # [N] log-likelihood of each completion
    learner.train_generation(batch, cycle=0)
    change = (learner.logprobs(batch) * mask).sum(1) - before
    adv = batch.advantages
    assert (adv > 0).sum() >= 4 and (adv < 0).sum() >= 4
    assert change[adv > 0].mean() > 0.05 and change[adv < 0].mean() < -0.05


def test_lora_reference_is_the_base_model(checkpoint, tmp_path):
    """beta > 0 with LoRA: the reference is the same model with the adapter off, not a copy."""
    config = tiny_config(checkpoint, tmp_path, grpo={"beta": 0.1})
    learner, worker = _pair(config)
    batch = worker.generate(PROMPTS, num_generations=4, seed=0)
    base = learner.logprobs(batch)  # adapter B = 0 at start: policy == base
    metrics = _train_once(learner, worker)
    assert learner.reference is None
    assert torch.allclose(learner.logprobs(batch, reference=True), base, atol=1e-6)
    assert not torch.allclose(learner.logprobs(batch), base, atol=1e-4)
    assert "kl" in metrics[-1] and metrics[-1]["kl"] > 0  # the second step sees a moved policy


def test_num_iterations_replays_the_batch_against_old_logprobs(checkpoint, tmp_path):
    """num_iterations=2: the second pass sees a moved policy, so ratios leave 1 and can clip."""
    config = tiny_config(
        checkpoint, tmp_path, grpo={"num_iterations": 2, "epsilon": 0.01}, lora={"enabled": False},
        optim={"learning_rate": 5e-2},
    )
    learner, worker = _pair(config)
    metrics = _train_once(learner, worker)
    assert learner.version == 4 and len(metrics) == 4  # 2 micro-steps x 2 iterations, one step each
    assert metrics[0]["clip_ratio/region_mean"] == 0.0  # first micro-step: policy == old policy
    assert max(m["clip_ratio/region_mean"] for m in metrics[1:]) > 0.0


def test_full_finetuning_with_beta_keeps_a_frozen_reference(checkpoint, tmp_path):
    config = tiny_config(checkpoint, tmp_path, grpo={"beta": 0.1}, lora={"enabled": False})
    learner, worker = _pair(config)
    batch = worker.generate(PROMPTS, num_generations=4, seed=0)
    base = learner.logprobs(batch)
    _train_once(learner, worker)
    assert learner.reference is not None
    assert not any(p.requires_grad for p in learner.reference.parameters())
    assert torch.equal(learner.logprobs(batch, reference=True), base)
    assert not torch.allclose(learner.logprobs(batch), base, atol=1e-4)


def test_accumulation_across_generations_reports_partial_windows(checkpoint, tmp_path):
    """gradient_accumulation_steps=4 > steps_per_generation=2: one optimizer step per two cycles."""
    config = tiny_config(checkpoint, tmp_path, batch={"gradient_accumulation_steps": 4})
    learner, worker = _pair(config)
    first = _train_once(learner, worker)
    assert learner.version == 0 and first[-1]["partial_window"] == 1.0
    batch = worker.generate(PROMPTS, num_generations=4, seed=1)
    batch.rewards = torch.arange(len(batch), dtype=torch.float32).unsqueeze(1) % 2
    batch.advantages = compute_advantages(batch.rewards, 4)
    second = learner.train_generation(batch, cycle=1)
    assert learner.version == 1 and "partial_window" not in second[-1] and second[-1]["grad_norm"] > 0


def _batch(worker, seed, rewards=None):
    batch = worker.generate(PROMPTS, num_generations=4, seed=seed)
    batch.rewards = torch.arange(len(batch), dtype=torch.float32).unsqueeze(1) % 3 if rewards is None else rewards
    batch.advantages = compute_advantages(batch.rewards, 4)
    return batch


def test_save_state_and_load_state_continue_bit_identically(checkpoint, tmp_path):
    """Mid accumulation window (4 micro-steps over 2 cycles of 2): weights, pending gradients,
    AdamW moments, schedule and RNG all come back, so the next cycle is the same to the bit."""
    import random

    import numpy as np

    config = tiny_config(checkpoint, tmp_path, batch={"gradient_accumulation_steps": 4}, lora={"enabled": False},
                         run={"max_steps": 4})
    learner, worker = _pair(config)
    learner.train_generation(_batch(worker, 0), cycle=0)  # half a window: 2 of its 4 micro-steps
    learner.train_generation(_batch(worker, 1), cycle=1)  # completes step 1
    learner.train_generation(_batch(worker, 2), cycle=2)  # half of step 2: gradients pending
    assert learner.version == 1 and any(p.grad is not None for p in learner.params)
    learner.save_state(str(tmp_path / "state"))
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    third = _batch(worker, 3)
    expected = learner.train_generation(third, cycle=3)
    _, expected_weights = learner.weights()

    resumed = Learner(config)
    assert resumed.load_state(str(tmp_path / "state")) == 1
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws
    got = resumed.train_generation(third, cycle=3)
    version, weights = resumed.weights()
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in ms]  # noqa: E731
    assert version == 2 and strip(got) == strip(expected)
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)


def test_a_non_finite_loss_skips_the_step_and_leaves_weights_and_moments_alone(checkpoint, tmp_path):
    learner, worker = _pair(tiny_config(checkpoint, tmp_path))
    _, before = learner.weights()
    batch = _batch(worker, 0)
    batch.advantages[:8] = float("nan")  # the first micro-step (8 rows) of the cycle
    metrics = learner.train_generation(batch, cycle=0, max_steps=1)
    _, after = learner.weights()
    assert [m["skipped"] for m in metrics] == [1.0] and learner.version == 1
    assert all(torch.equal(before[k], after[k]) for k in before) and not learner.optimizer.state
    assert all(p.grad is None for p in learner.params)  # the poisoned gradients are gone
    good = learner.train_generation(_batch(worker, 1), cycle=1)
    assert [m["skipped"] for m in good] == [0.0, 0.0] and learner.version == 3
    assert all(torch.isfinite(p).all() for p in learner.params)


def test_max_steps_ends_the_cycle_after_that_many_optimizer_steps(checkpoint, tmp_path):
    learner, worker = _pair(tiny_config(checkpoint, tmp_path))
    metrics = learner.train_generation(_batch(worker, 0), cycle=0, max_steps=1)
    assert len(metrics) == 1 and learner.version == 1 and "partial_window" not in metrics[0]
