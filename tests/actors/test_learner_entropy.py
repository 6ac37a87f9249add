"""The learner with an entropy bonus (in-process, no Ray): the bonus alone moves the policy's
entropy the way its sign says, on the plain and the fused loss path; and adaptive entropy control's
state (coefficient, last entropy, a half-done window's totals) survives save_state / load_state,
so a resumed run continues bit for bit."""

from __future__ import annotations

import pytest
import torch

from actors.learner import Learner
from actors.rollout_worker import RolloutWorker
from grpo_ray.advantages import compute_advantages
from grpo_ray.modeling import completion_logprobs
from tests.support.tiny import tiny_config

PROMPTS = ["1+2=", "33+4=", "5+", "ab"]


def _pair(config):
    learner, worker = Learner(config), RolloutWorker(config)
    version, weights = learner.weights()
    worker.update_weights(weights, version)
    return learner, worker


def _batch(worker, seed):
    batch = worker.generate(PROMPTS, num_generations=4, seed=seed)
    batch.rewards = torch.arange(len(batch), dtype=torch.float32).unsqueeze(1) % 3
    batch.advantages = compute_advantages(batch.rewards, 4)
    return batch


@torch.no_grad()
def _mean_entropy(learner, batch):
    _, ent = completion_logprobs(
        learner.policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
        temperature=learner.config.generation.temperature, with_entropy=True,
    )
    mask = batch.completion_mask.float()
    return ((ent * mask).sum() / mask.sum()).item()


@pytest.mark.parametrize("fused, coef", [(False, 0.5), (True, 0.5), (False, -0.5)])
def test_the_bonus_alone_moves_the_entropy_its_way(checkpoint, tmp_path, fused, coef):
    """Zero advantages (no policy gradient): one generation's two optimizer steps raise the mean
    entropy of the batch's tokens with a bonus (coef > 0) and lower it with a penalty."""
    config = tiny_config(checkpoint, tmp_path, grpo={"entropy_coef": coef}, model={"fused_loss": fused})
    learner, worker = _pair(config)
    batch = _batch(worker, 0)
    batch.advantages = torch.zeros_like(batch.advantages)
    before = _mean_entropy(learner, batch)
    metrics = learner.train_generation(batch, cycle=0)
    change = _mean_entropy(learner, batch) - before
    assert change * coef > 0 and abs(change) > 1e-3, (before, change)
    assert all(m["entropy_coef"] == coef and m["grad_norm"] > 0 for m in metrics)
    assert metrics[0]["policy_loss"] == 0.0 and metrics[0]["loss"] == pytest.approx(-coef * metrics[0]["entropy"])


def test_adaptive_entropy_control_resumes_exactly(checkpoint, tmp_path):
    """Saved mid accumulation window (4 micro-steps over 2 cycles): the controller's coefficient,
    last entropy and the window's totals come back, so the next step, the coefficient it applies
    and the update after it are the same to the bit."""
    grpo = {"use_adaptive_entropy": True, "entropy_coef": 0.0, "entropy_coef_delta": 0.05, "entropy_target": 100.0}
    config = tiny_config(checkpoint, tmp_path, grpo=grpo, batch={"gradient_accumulation_steps": 4},
                         lora={"enabled": False}, run={"max_steps": 4})
    learner, worker = _pair(config)
    learner.train_generation(_batch(worker, 0), cycle=0)
    first = learner.train_generation(_batch(worker, 1), cycle=1)  # step 1: no bonus yet, then 0 -> 0.05
    assert first[-1]["entropy_coef"] == pytest.approx(0.05) and learner.entropy_control.applied_coef == 0.05
    learner.train_generation(_batch(worker, 2), cycle=2)  # half of step 2, with the bonus on
    learner.save_state(str(tmp_path / "state"))
    saved = learner.entropy_control.state_dict()
    assert saved["window_tokens"] > 0  # the half window's statistics are part of the state
    third = _batch(worker, 3)
    expected = learner.train_generation(third, cycle=3)

    resumed = Learner(config)
    assert resumed.entropy_control.applied_coef == 0.0  # a fresh controller would apply no bonus
    resumed.load_state(str(tmp_path / "state"))
    assert resumed.entropy_control.state_dict() == saved
    got = resumed.train_generation(third, cycle=3)
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in ms]  # noqa: E731
    assert strip(got) == strip(expected) and expected[-1]["entropy_coef"] == pytest.approx(0.1)
    assert resumed.entropy_control.state_dict() == learner.entropy_control.state_dict()
    _, weights = resumed.weights()
    _, expected_weights = learner.weights()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)
