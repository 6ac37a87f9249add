"""grpo_loss on row slices of a micro-batch (``micro_batch_rows`` / ``micro_batch_tokens``, the
learner's execution batches): the slices' losses and gradients sum to the whole micro-batch's,
for every loss type, both importance-sampling levels, with KL and TIS."""

import pytest
import torch

from grpo_ray.config import LOSS_TYPES, GRPOConfig
from grpo_ray.loss import grpo_loss

B, T = 6, 7
LENGTHS = [7, 1, 4, 0, 5, 3]  # a row with no loss tokens too
SLICES = [[4, 0], [3], [5, 1, 2]]  # rows of the micro-batch, in any order
SCALING = dict(gradient_accumulation_steps=2, steps_per_generation=2, num_processes=2)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T) < torch.tensor(LENGTHS).unsqueeze(1)).double()
    logps = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 2).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logps.detach() + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    sampling = old + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64)
    return logps, old, ref, sampling, adv, mask, entropy


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_slices_sum_to_the_micro_batch(loss_type, level):
    config = GRPOConfig(loss_type=loss_type, importance_sampling_level=level, beta=0.1, epsilon=0.1,
                        max_completion_length=T)
    logps, old, ref, sampling, adv, mask, entropy = _inputs()
    num_items = 40.0  # the whole generation batch's tokens (dapo)

    def loss_of(rows, **kw):
        i = torch.tensor(rows)
        return grpo_loss(logps[i], old[i], ref[i], adv[i], mask[i], config, num_items_in_batch=num_items,
                         sampling_logps=sampling[i], entropies=entropy[i], **SCALING, **kw)

    whole, whole_metrics = loss_of(list(range(B)))
    (whole_grad,) = torch.autograd.grad(whole, logps)
    tokens = mask.sum()
    pieces = [loss_of(rows, micro_batch_rows=B, micro_batch_tokens=t)
              for rows, t in zip(SLICES, [tokens, float(tokens), tokens])]  # a tensor or a host float
    total = sum(loss for loss, _ in pieces)
    (grad,) = torch.autograd.grad(total, logps)
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, whole_grad, rtol=1e-12, atol=1e-14)
    assert whole_metrics["clip_ratio/region_mean"] > 0  # the clipped branch is exercised


def test_the_whole_micro_batch_as_its_own_slice_is_the_default():
    config = GRPOConfig(loss_type="bnpo", beta=0.1)
    logps, old, ref, sampling, adv, mask, entropy = (x.float() for x in _inputs())
    args = (logps, old, ref, adv, mask, config)
    plain, plain_metrics = grpo_loss(*args, sampling_logps=sampling, entropies=entropy)
    sliced, sliced_metrics = grpo_loss(*args, sampling_logps=sampling, entropies=entropy,
                                       micro_batch_rows=B, micro_batch_tokens=float(mask.sum()))
    assert torch.equal(plain, sliced)
    assert all(torch.equal(plain_metrics[k], sliced_metrics[k]) for k in plain_metrics)

