"""grpo_ray.modeling.completion_grpo_loss (the fused loss through a model) against
grpo_loss(completion_logprobs(...)) on a tiny Qwen2 model in float64: loss, metrics and the
gradient of every trainable parameter (LoRA adapters under gradient checkpointing; every weight
in full fine-tuning, with the LM head separate or tied to the embeddings), several chunks of
whole completions, temperature 0.7, a masked completion; and the decoder's output receives its
gradient exactly once."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from grpo_ray.config import GRPOConfig, LoraConfig, ModelConfig
from grpo_ray.loss import grpo_loss
from grpo_ray.modeling import CompletionLogprobs, causal_lm, completion_grpo_loss, completion_logprobs, prepare_policy

D = torch.float64
B, P, T, V = 5, 4, 7, 37
SETUPS = {
    "lora+checkpointing": dict(lora=LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj")),
                               checkpointing=True, tied=False),
    "full": dict(lora=LoraConfig(enabled=False), checkpointing=False, tied=False),
    "full-tied-head": dict(lora=LoraConfig(enabled=False), checkpointing=True, tied=True),
}


def tiny_policy(lora, checkpointing, tied):
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=tied,
    )
    model = Qwen2ForCausalLM(config).to(D)
    policy = prepare_policy(model, ModelConfig(gradient_checkpointing=checkpointing), lora, trainable=True)
    if lora.enabled:  # peft starts B at 0: move it so the adapters change the logprobs
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.1)
    return policy


def batch():
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(0, V, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    completion_ids = torch.randint(0, V, (B, T), generator=g)
    completion_mask = torch.ones(B, T, dtype=torch.long)
    completion_mask[1, 3:] = 0
    completion_mask[3] = 0  # nothing to train on
    loss_mask = completion_mask.to(D)
    loss_mask[2, 1] = 0  # a token that does not train (tool output)
    advantages = torch.tensor([1.0, -0.7, 0.4, 0.9, -1.1], dtype=D)
    return prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask, advantages


def norm_grad_counter(policy):
    """Counts the gradients reaching the decoder's output (its final norm)."""
    calls = []
    causal_lm(policy).get_decoder().norm.register_full_backward_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("loss_type,level", [("grpo", "token"), ("bnpo", "sequence"), ("dr_grpo", "token"),
                                             ("dapo", "sequence")])
def test_fused_loss_through_the_model_matches_logprobs_then_grpo_loss(setup, loss_type, level):
    policy = tiny_policy(**SETUPS[setup])
    params = [p for p in policy.parameters() if p.requires_grad]
    prompt_ids, prompt_mask, ids, cmask, loss_mask, adv = batch()
    config = GRPOConfig(loss_type=loss_type, importance_sampling_level=level, beta=0.04, max_completion_length=T)
    with torch.no_grad():
        base = completion_logprobs(policy, prompt_ids, prompt_mask, ids, cmask, temperature=0.7, impl="full")
    g = torch.Generator().manual_seed(2)
    kw = dict(
        old_logps=base + 0.2 * torch.randn(B, T, generator=g, dtype=D),
        ref_logps=base + 0.1 * torch.randn(B, T, generator=g, dtype=D),
        num_items_in_batch=30.0, gradient_accumulation_steps=2,
    )
    counter = norm_grad_counter(policy)
    score = CompletionLogprobs(policy)
    loss, metrics = completion_grpo_loss(
        policy, prompt_ids, prompt_mask, ids, cmask, advantages=adv, loss_mask=loss_mask, config=config,
        temperature=0.7, impl="torch", chunk_size=2 * T, with_entropy=True, **kw,
    )
    grads = torch.autograd.grad(loss, params)
    assert counter == [1]

    logps, ent = score(prompt_ids, prompt_mask, ids, cmask, temperature=0.7, impl="full", with_entropy=True)
    want, want_metrics = grpo_loss(logps, kw["old_logps"], kw["ref_logps"], adv, loss_mask, config, entropies=ent,
                                   **{k: v for k, v in kw.items() if k not in ("old_logps", "ref_logps")})
    want_grads = torch.autograd.grad(want, params)
    assert counter == [1, 1]

    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-13)
    assert metrics.keys() == want_metrics.keys() and "entropy" in metrics and "kl" in metrics
    for k in metrics:
        torch.testing.assert_close(metrics[k], want_metrics[k], rtol=1e-10, atol=1e-13)
    assert len(grads) == len(params) > 0
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    for name, got, ref in zip(names, grads, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-11, msg=name)
    assert sum(r.abs().sum() for r in want_grads) > 0
