"""Loading the policy: the plain path is covered by every learner test; here the 4-bit one."""

from __future__ import annotations

import pytest
import torch

from grpo_ray.config import LoraConfig, ModelConfig
from grpo_ray.modeling import load_policy
from tests.support.tiny import tiny_checkpoint

bnb = pytest.importorskip("bitsandbytes")


def test_load_in_4bit_gives_nf4_linear_layers_with_trainable_lora_only(tmp_path):
    path = tiny_checkpoint(tmp_path / "tiny")
    policy = load_policy(
        ModelConfig(name_or_path=str(path), load_in_4bit=True), LoraConfig(r=4, alpha=8), trainable=True
    )
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.dtype == torch.uint8
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
