"""benchmarks/profile_learner.py: the FLOPs estimate behind the learner's MFU (by hand, and its
weight count against a real model's), the trace trimming, and a CPU run end to end
(``--smoke``, in-process), so the GPU lease does not die on a script bug."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks.profile_learner as module

    return module


def test_flops_by_hand(bench):
    # q = 4, kv = 2, W = 4*4 + 2*4*2 + 4*4 + 3*4*8 = 144; one row of 2 prompt + 1 completion tokens
    shape = bench.ModelShape(hidden=4, intermediate=8, layers=1, heads=2, kv_heads=1, vocab=10, head_dim=2)
    linear, attention, head = 2 * 144 * 3, 2 * 2 * 4 * 3 * 4 / 2, 2 * 10 * 4 * 1
    full = bench.learner_flops(shape, [(2, 1)], lora_r=None, gradient_checkpointing=True)
    forward = linear + attention + head
    assert full == {"forward": forward, "backward": 2 * forward, "recompute": linear + attention,
                    "model": 3 * forward, "executed": 3 * forward + linear + attention}
    adapters = 2 * 2 * ((4 + 4) + (8 + 4)) * 3  # r = 2 on q_proj (4 -> 4) and down_proj (8 -> 4)
    lora = bench.learner_flops(shape, [(2, 1)], lora_r=2, lora_targets=("q_proj", "down_proj"),
                               gradient_checkpointing=False, iterations=2, no_grad_passes=1)
    forward = linear + attention + head + adapters
    backward = linear + head + 2 * attention + 2 * adapters  # no weight gradients for frozen GEMMs
    assert lora == {"forward": forward, "backward": backward, "recompute": 0.0,
                    "model": 2 * (forward + backward) + forward, "executed": 2 * (forward + backward) + forward}
    with pytest.raises(ValueError, match="LoRA targets"):
        bench.learner_flops(shape, [(2, 1)], lora_r=2, lora_targets=("qkv",), gradient_checkpointing=False)


def test_the_weight_count_is_the_models(bench):
    """Forward FLOPs per token of a 0-length-attention row = 2 x the decoder's GEMM weights + the
    head's, counted on a real (small, grouped-query) Qwen2 model."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=50)
    model = Qwen2ForCausalLM(config)
    decoder = sum(m.weight.numel() for name, m in model.model.named_modules() if isinstance(m, torch.nn.Linear))
    head = model.lm_head.weight.numel()
    flops = bench.learner_flops(bench.ModelShape.of(config), [(0, 1)], lora_r=None, gradient_checkpointing=False)
    attention = 2 * 3 * 2 * 64 * 1
    assert flops["forward"] == 2 * decoder + 2 * head + attention


def test_trim_trace_keeps_the_first_seconds_and_the_metadata(bench):
    events = [{"ph": "M", "name": "process_name"}, {"ph": "X", "ts": 1000, "dur": 5},
              {"ph": "X", "ts": 1000 + 0.5e6}, {"ph": "X", "ts": 1000 + 2e6}, {"ph": "f", "ts": 1000 + 3e6}]
    assert bench.trim_trace(events, 1.0) == events[:3]


def test_smoke_run_writes_tables_trace_and_summary(bench, tmp_path, monkeypatch):
    argv = ["profile_learner.py", "--smoke", "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"),
            "--max-tokens-per-forward", "200", "--rows", "10", "--warmup", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tree"] == str(ROOT) and summary["max_tokens_per_forward"] == 200
    assert summary["rows"] == 32 and summary["micro_steps"] == 4 and summary["optimizer_steps"] == 1
    assert summary["tflop"]["executed"] > summary["tflop"]["model"] > 0 and 0 < summary["learner_mfu"] < 1
    for name in ("learner_cpu.txt", "learner_cuda.txt", "rollout_cpu.txt", "rollout_cuda.txt"):
        assert "Self CPU" in (out / name).read_text()
    with gzip.open(out / "learner_trace.json.gz", "rt") as f:
        assert any(e.get("name", "").startswith("aten::") for e in json.load(f)["traceEvents"])
