"""grpo_ray.loss_weights: the engine correction's four modes, off-policy sequence masking and
the high-entropy token mask, on hand-worked values."""

import math

import pytest
import torch

from grpo_ray.loss_weights import engine_importance_weights, high_entropy_mask, off_policy_sequence_mask

D = torch.float64
LN = math.log


def t(rows):
    return torch.tensor(rows, dtype=D)


# Two rows; row 1's last token is padding (sampler logprob NaN there, and on row 0's token 2).
# old - sampling per token: row 0 [ln 0.5, ln 3, NaN -> 0], row 1 [ln 2, ln 1.25, (padding)].
# Token ratios: [[0.5, 3, 1], [2, 1.25, 1]]; sequence ratios (products): 1.5 and 2.5.
OLD = t([[-1.0, -2.0, -0.5], [-1.5, -0.7, -1.0]])
SAMPLING = OLD - t([[LN(0.5), LN(3), 0.0], [LN(2), LN(1.25), 0.0]])
SAMPLING[0, 2] = float("nan")
SAMPLING[1, 2] = 7.0  # padding: any value, ignored
MASK = t([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize(
    "mode, clip_min, clip_max, expected",
    [
        ("token_truncate", None, 2.0, [[0.5, 2.0, 1.0], [2.0, 1.25, 1.0]]),
        ("token_truncate", 0.8, 2.0, [[0.8, 2.0, 1.0], [2.0, 1.25, 1.0]]),
        ("token_truncate", 0.8, None, [[0.8, 3.0, 1.0], [2.0, 1.25, 1.0]]),
        ("token_mask", None, 2.0, [[0.5, 0.0, 1.0], [2.0, 1.25, 1.0]]),
        ("token_mask", 0.8, 2.0, [[0.0, 0.0, 1.0], [2.0, 1.25, 1.0]]),
        ("token_mask", None, None, [[0.5, 3.0, 1.0], [2.0, 1.25, 1.0]]),
        ("sequence_truncate", None, 2.0, [[1.5], [2.0]]),
        ("sequence_truncate", 1.6, 3.0, [[1.6], [2.5]]),
        ("sequence_mask", None, 2.0, [[1.5], [0.0]]),
        ("sequence_mask", 1.6, 3.0, [[0.0], [2.5]]),
    ],
)
def test_engine_importance_weights_hand_worked(mode, clip_min, clip_max, expected):
    got = engine_importance_weights(OLD, SAMPLING, MASK, mode, clip_min, clip_max)
    torch.testing.assert_close(got, t(expected), rtol=1e-12, atol=1e-12)


def test_engine_importance_weights_unknown_mode():
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode"):
        engine_importance_weights(OLD, SAMPLING, MASK, "seq_mask", None, 2.0)


def test_off_policy_sequence_mask_hand_worked():
    # Four rows of 2 tokens (row 3 has one). Mean per-token (behaviour - logp):
    #   row 0: (0.4 + 0.2) / 2 = 0.3, A = -1  -> dropped at threshold 0.25, kept at 0.3 (<=)
    #   row 1: (0.4 + 0.2) / 2 = 0.3, A = +1  -> kept: positive advantages always train
    #   row 2: (0.1 + NaN -> 0) / 2 = 0.05, A = -1 -> kept (NaN carries no evidence)
    #   row 3: 0.5 over its 1 token (the padding's 9 is ignored), A = 0 -> kept (A >= 0)
    logps = t([[-1.0, -1.0], [-2.0, -2.0], [-1.0, -1.0], [-1.0, -1.0]])
    behaviour = logps + t([[0.4, 0.2], [0.4, 0.2], [0.1, float("nan")], [0.5, 9.0]])
    mask = t([[1, 1], [1, 1], [1, 1], [1, 0]])
    adv = t([[-1.0], [1.0], [-1.0], [0.0]])
    keep = off_policy_sequence_mask(adv, logps.requires_grad_(True), behaviour, mask, 0.25)
    assert keep.tolist() == [[0.0], [1.0], [1.0], [1.0]]
    assert off_policy_sequence_mask(adv, logps, behaviour, mask, 0.3).tolist() == [[1.0]] * 4
    assert not keep.requires_grad


def test_high_entropy_mask_hand_worked():
    # Loss tokens' entropies 1..5 (the padding's 100 is not in the pool). quantile 0.4 keeps
    # entropies >= the 0.6 quantile: position 0.6 * 4 = 2.4 -> 3 + 0.4 * (4 - 3) = 3.4 -> {4, 5}.
    ent = t([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    assert high_entropy_mask(ent, MASK, 0.4).tolist() == [[False, False, False], [True, True, False]]
    # 0.5: the 0.5 quantile is exactly 3, and >= keeps it.
    assert high_entropy_mask(ent, MASK, 0.5).tolist() == [[False, False, True], [True, True, False]]
    # 0 keeps the maximum only; 1 keeps every loss token.
    assert high_entropy_mask(ent, MASK, 0.0).tolist() == [[False, False, False], [False, True, False]]
    assert high_entropy_mask(ent, MASK, 1.0).tolist() == [[True, True, True], [True, True, False]]
    # A pool from the whole micro-batch (or other processes) moves the threshold: with 10 and 20
    # added, the 0.6 quantile of 7 values is at position 3.6 -> 4 + 0.6 * (5 - 4) = 4.6 -> {5}.
    pool = t([1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0])
    assert high_entropy_mask(ent, MASK, 0.4, pool).tolist() == [[False, False, False], [False, True, False]]
    # No loss token at all: nothing trains.
    assert not high_entropy_mask(ent, torch.zeros_like(MASK), 0.4).any()
