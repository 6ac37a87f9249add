"""Loading the policy (the plain path is covered by every learner test; here the 4-bit one), and
exporting its weights for the rollout engines."""

from __future__ import annotations

import pytest
import torch

from grpo_ray import modeling
from grpo_ray.config import LoraConfig, ModelConfig
from grpo_ray.modeling import WeightExport, export_weights, load_policy
from tests.support.tiny import tiny_checkpoint


def test_load_in_4bit_gives_nf4_linear_layers_with_trainable_lora_only(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    path = tiny_checkpoint(tmp_path / "tiny")
    policy = load_policy(
        ModelConfig(name_or_path=str(path), load_in_4bit=True), LoraConfig(r=4, alpha=8), trainable=True
    )
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.dtype == torch.uint8
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("lora", [LoraConfig(r=4, alpha=8), LoraConfig(enabled=False)], ids=["lora", "full"])
def test_weight_export_walks_the_model_once_and_follows_the_weights(tiny, lora, monkeypatch):
    policy = load_policy(ModelConfig(name_or_path=str(tiny), dtype="float32"), lora, trainable=True)
    walks = []
    walk = modeling.export_weights
    monkeypatch.setattr(modeling, "export_weights", lambda *a, **k: walks.append(1) or walk(*a, **k))
    export = WeightExport(policy, lora)

    def same(got):
        want = export_weights(policy, lora)
        return list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)

    assert same(export(copy_to_cpu=False)) and same(export())
    trained = [p for p in policy.parameters() if p.requires_grad]
    with torch.no_grad():
        trained[0].add_(1.0)  # an optimizer step: in place
        trained[-1].data = trained[-1].data + 2.0  # a wrapper re-pointing .data (DeepSpeed does)
    got = export()
    assert same(got) and got[next(iter(got))].data_ptr() != trained[0].data_ptr()  # copies on the CPU side
    assert export(copy_to_cpu=False)[next(iter(got))].data_ptr() in {p.data_ptr() for p in policy.parameters()}
    assert len(walks) == 1


def test_weight_export_walks_every_time_when_a_tensor_is_no_parameter(tiny, monkeypatch):
    lora = LoraConfig(enabled=False)
    policy = load_policy(ModelConfig(name_or_path=str(tiny), dtype="float32"), lora, trainable=True)
    walk = modeling.export_weights
    computed = lambda *a, **k: {**walk(*a, **k), "extra": torch.ones(2)}  # noqa: E731 - made on each call
    monkeypatch.setattr(modeling, "export_weights", computed)
    export = WeightExport(policy, lora)
    assert export.sources is None and "extra" in export() and export.sources is None
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert torch.equal(export()[next(iter(walk(policy, lora)))], next(policy.parameters()))
