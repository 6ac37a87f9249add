"""model.fused_loss: the learner's micro-steps through the fused loss take the same optimizer
steps (metrics and weights, float32) as logprobs-then-grpo_loss, LoRA and full fine-tuning."""

from __future__ import annotations

import pytest
import torch

from actors.learner import Learner
from grpo_ray import modeling
from actors.rollout_worker import RolloutWorker
from grpo_ray.advantages import compute_advantages
from tests.support.tiny import tiny_config


@pytest.mark.parametrize("lora", [True, False])
def test_fused_loss_learner_steps_like_the_plain_one(checkpoint, tmp_path, lora, monkeypatch):
    calls = []
    fused_loss = modeling.completion_fused_loss
    monkeypatch.setattr(modeling, "completion_fused_loss", lambda *a, **k: calls.append(1) or fused_loss(*a, **k))
    sections = dict(lora={"enabled": lora}, generation={"temperature": 0.7}, grpo={"beta": 0.04, "loss_type": "grpo"})
    plain = Learner(tiny_config(checkpoint, tmp_path, **sections))
    # 6-token completions, 12-token chunks: two completions per chunk, four chunks per micro-step.
    fused_model = {"fused_loss": True, "fused_loss_chunk_size": 12}
    fused = Learner(tiny_config(checkpoint, tmp_path, model=fused_model, **sections))
    worker = RolloutWorker(plain.config)
    worker.update_weights(*reversed(plain.weights()))
    batch = worker.generate(["1+2=", "33+4=", "5+", "ab"], num_generations=4, seed=0)
    batch.rewards = torch.arange(len(batch), dtype=torch.float32).unsqueeze(1) % 3
    batch.advantages = compute_advantages(batch.rewards, 4)
    got, want = fused.train_generation(batch, cycle=0), plain.train_generation(batch, cycle=0)
    assert len(got) == len(want) == 2 and len(calls) == 2  # one fused call per micro-step
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            if not k.startswith("time/"):
                assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k
    after_plain, after_fused = plain.weights()[1], fused.weights()[1]
    assert any(not torch.equal(after_plain[k], v) for k, v in Learner(plain.config).weights()[1].items())
    # AdamW (lr 1e-2) turns float32 rounding of near-zero gradient elements into weight changes
    # (up to 1.2e-5 seen with TRL's bias-corrected KL): 5e-5 is a two-hundredth of one step; a
    # wrong gradient moves weights by ~1e-2.
    for k in after_plain:
        torch.testing.assert_close(after_fused[k], after_plain[k], rtol=1e-4, atol=5e-5)
