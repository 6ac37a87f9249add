"""A causal LM built on tensors it does not own (colocate mode's one copy), plain and 4-bit.

The 4-bit weights are packed the way vLLM's bitsandbytes loader packs them (NF4, statistics
double-quantized then expanded), on CPU; the GPU test runs the same path on a real engine.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from grpo_ray.config import LoraConfig, ModelConfig
from grpo_ray.modeling import prepare_policy
from grpo_ray.shared_model import Packed4bit, model_on_tensors

bnb = pytest.importorskip("bitsandbytes")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _config(tied: bool) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tied, max_position_embeddings=64,
    )


def _source(tied: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(_config(tied), dtype=torch.float32).eval()


def _nf4(weight: torch.Tensor) -> Packed4bit:
    from bitsandbytes.functional import quantize_4bit

    data, state = quantize_4bit(weight.contiguous(), compress_statistics=True, quant_type="nf4")
    return Packed4bit(data, state)


def _ids() -> torch.Tensor:
    return torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("tied", [True, False])
def test_plain_tensors_are_shared_not_copied(tied):
    source = _source(tied)
    tensors = dict(source.named_parameters())
    model = model_on_tensors(_config(tied), {n: t.data for n, t in tensors.items()}, dtype=torch.float32, trainable=True)
    for name, p in model.named_parameters():
        assert p.data_ptr() == tensors[name].data_ptr(), name
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) == tied
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()).logits, source(_ids()).logits, rtol=0, atol=0)


def test_a_missing_tensor_is_named():
    tensors = {n: t.data for n, t in _source(False).named_parameters() if "layers.1.mlp.up_proj" not in n}
    with pytest.raises(RuntimeError, match="layers.1.mlp.up_proj.weight"):
        model_on_tensors(_config(False), tensors, dtype=torch.float32, trainable=False)


def test_4bit_weights_become_linear4bit_layers_on_the_same_bytes():
    source = _source(tied=True)
    tensors: dict = {}
    for name, p in source.named_parameters():
        is_linear = name.endswith(".weight") and name.rsplit(".", 2)[-2] in LINEARS
        tensors[name] = _nf4(p.data) if is_linear else p.data
    model = model_on_tensors(_config(True), tensors, dtype=torch.float32, trainable=False)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and model.is_loaded_in_4bit
    assert q.weight.data_ptr() == tensors["model.layers.0.self_attn.q_proj.weight"].data.data_ptr()
    assert q.bias.data_ptr() == tensors["model.layers.0.self_attn.q_proj.bias"].data_ptr()
    # the reference: the source model with every linear weight replaced by its NF4 round trip
    from bitsandbytes.functional import dequantize_4bit

    with torch.no_grad():
        for name, t in tensors.items():
            if isinstance(t, Packed4bit):
                source.get_parameter(name).copy_(dequantize_4bit(t.data, t.quant_state))
        expected = source(_ids()).logits
    model.train()  # (in eval mode bitsandbytes may repack CPU weights for its own kernel)
    with torch.no_grad():
        got = model(_ids()).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_qlora_on_shared_4bit_weights_trains_only_the_adapters():
    source = _source(tied=True)
    tensors = {
        n: _nf4(p.data) if n.endswith(".weight") and n.rsplit(".", 2)[-2] in LINEARS else p.data
        for n, p in source.named_parameters()
    }
    model = model_on_tensors(_config(True), tensors, dtype=torch.float32, trainable=False)
    policy = prepare_policy(
        model, ModelConfig(name_or_path="x", gradient_checkpointing=True, load_in_4bit=True),
        LoraConfig(r=4, alpha=8, target_modules=LINEARS), trainable=True,
    )
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    assert isinstance(policy.base_model.model.model.layers[0].mlp.down_proj, LoraLinear4bit)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    with torch.no_grad():  # a non-zero B, so A gets a gradient too
        for n, p in policy.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.02)
    policy(_ids()).logits.float().pow(2).mean().backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
