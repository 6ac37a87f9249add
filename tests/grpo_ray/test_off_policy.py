"""The off-policy corrections (rollout.off_policy_correction) on hand-worked float64 examples.

Two completions of one token each, sampled by a stale engine (behaviour mu), trained after the
learner's weights moved within the batch (pi_old at the batch start != pi_theta now); epsilon
0.2, cap C = 2, dapo over the batch's 2 tokens (loss = sum / 2):

    row  A   pi_theta  pi_old  mu
    0    +1  0.5       0.4     0.25
    1    -1  0.225     0.25    0.1

tis (pi_old = the batch start): row 0: r = 1.25 -> clipped to 1.2 (A > 0), w = min(0.4/0.25, 2) = 1.6,
  loss term -1.2 * 1.6 = -1.92, no gradient (clipped); row 1: r = 0.9 (inside), w = min(2.5, 2) = 2,
  term -(0.9 * -1) * 2 = 1.8, d/dlogp = -A r w = 1.8. Loss (-1.92 + 1.8) / 2 = -0.06, grad (0, 0.9).
decoupled (pi_prox = pi_theta at the step's start, detached): r = 1 for both; row 0: w = min(2, 2) = 2,
  term -2, d/dlogp = -A w = -2; row 1: w = min(2.25, 2) = 2, term 2, d/dlogp = 2. Loss 0, grad (-1, 1).
"""

import math

import pytest
import torch

from grpo_ray.config import GRPOConfig
from grpo_ray.loss import grpo_loss
from grpo_ray.off_policy import needs_old_logprobs

CONFIG = GRPOConfig(loss_type="dapo", epsilon=0.2, vllm_importance_sampling_mode="token_truncate",
                    vllm_importance_sampling_clip_max=2.0)
LOG = lambda *p: torch.tensor([[math.log(x)] for x in p], dtype=torch.float64)  # noqa: E731
ADVANTAGES = torch.tensor([1.0, -1.0], dtype=torch.float64)
MASK = torch.ones(2, 1, dtype=torch.float64)


def _loss(old):
    logps = LOG(0.5, 0.225).requires_grad_()
    loss, metrics = grpo_loss(logps, old, None, ADVANTAGES, MASK, CONFIG, num_items_in_batch=2.0,
                              sampling_logps=LOG(0.25, 0.1))
    loss.backward()
    return loss.item(), logps.grad.flatten().tolist(), metrics


def test_tis_measures_the_ratio_against_the_batch_start_and_weights_by_it_over_the_engine():
    old = LOG(0.4, 0.25) if needs_old_logprobs("tis", 1, 2, 1) else None
    loss, grad, metrics = _loss(old)
    assert loss == pytest.approx(-0.06, abs=1e-12)
    assert grad == pytest.approx([0.0, 0.9], abs=1e-12)
    assert metrics["is_ratio_mean"].item() == pytest.approx((1.6 + 2.0) / 2, abs=1e-12)


def test_decoupled_takes_the_steps_own_weights_as_proximal_and_the_behaviour_weight_does_the_rest():
    old = LOG(0.4, 0.25) if needs_old_logprobs("decoupled", 1, 2, 1) else None
    loss, grad, metrics = _loss(old)
    assert old is None  # no old-logprob pass
    assert loss == pytest.approx(0.0, abs=1e-12)
    assert grad == pytest.approx([-1.0, 1.0], abs=1e-12)
    assert metrics["is_ratio_mean"].item() == pytest.approx(2.0, abs=1e-12)
    assert metrics["clip_ratio/region_mean"].item() == 0.0  # the ratio is 1: nothing clips


def test_with_one_optimizer_step_per_batch_both_are_one_objective():
    for gas, spg, iterations in [(1, 1, 1), (2, 2, 1), (4, 2, 2), (3, 1, 3)]:
        assert not needs_old_logprobs("tis", gas, spg, iterations)
        assert not needs_old_logprobs("decoupled", gas, spg, iterations)
    # the weights move within the batch: tis computes pi_old (TRL's rule), decoupled never does
    for gas, spg, iterations in [(1, 2, 1), (2, 4, 1), (1, 1, 2), (2, 3, 1)]:
        assert needs_old_logprobs("tis", gas, spg, iterations)
        assert not needs_old_logprobs("decoupled", gas, spg, iterations)
    with pytest.raises(ValueError, match="off_policy_correction"):
        needs_old_logprobs("coupled", 1, 1, 1)


@pytest.mark.parametrize("correction", ["tis", "decoupled"])
def test_the_learner_runs_the_old_logprob_pass_only_for_tis(correction, checkpoint, tmp_path):
    from actors.learner import Learner, _Rows
    from grpo_ray.rollout_batch import RolloutBatch
    from grpo_ray.sampling import Sample
    from tests.support.tiny import tiny_config

    config = tiny_config(checkpoint, tmp_path, rollout={"off_policy_correction": correction})  # 2 steps per batch
    learner = Learner(config)
    batch = RolloutBatch.from_samples(
        [[1, 2], [3]], [Sample([4, 5], [-1.0, -1.0], False)] * 4 + [Sample([6], [-1.0], True)] * 4,
        completions=[""] * 8, pad_token_id=0, weight_version=0,
    )
    old = learner._old_logprobs(_Rows.of(batch, torch.device("cpu")))
    if correction == "tis":
        assert torch.equal(old, learner.logprobs(batch))
    else:
        assert old is None
