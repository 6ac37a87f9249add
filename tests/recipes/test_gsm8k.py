"""`python -m recipes.gsm8k --tiny`, end to end on CPU: data, SFT, GRPO, eval, logs, plot, export."""

from __future__ import annotations

import json

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recipes.gsm8k import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One --tiny run from a fresh directory with the default output_dir (./outputs/...)."""
    root = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        try:
            summary = main(["--tiny"])
        finally:
            ray.shutdown()
    return root / "outputs" / "gsm8k-tiny", summary


def test_tiny_run_writes_everything_under_outputs(tiny_run):
    out, summary = tiny_run
    assert summary["optimizer_steps"] == 4
    assert summary["train_prompts"] + summary["dropped_prompts"] == 120  # data.max_rows of the preset
    assert summary["dropped_prompts"] > 0  # the sample has prompts over 200 tokens: dropped, counted
    assert summary["eval_questions"] == 12
    assert summary["sft"]["sft/loss_last"] < summary["sft"]["sft/loss_first"]
    assert set(summary["accuracy"]) == {"0", "2", "4"}
    for name in ("checkpoint-2", "checkpoint-4", "final", "merged", "sft", "tiny-model"):
        assert (out / name).is_dir(), name
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 2, 4]
    assert {"rewards/qwen3_check_answer", "rewards/qwen3_check_answer_std", "tokens_per_s", "loss"} <= set(records[1])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 2, 4]
    assert {"question", "answer", "response", "extracted", "correct", "reward"} <= set(samples[0])


def test_merged_export_reloads_with_the_trained_models_logits(tiny_run):
    out, _ = tiny_run
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    ids = tokenizer("Natalia sold clips to 48 of her friends", return_tensors="pt")["input_ids"]
    trained = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    warmed = AutoModelForCausalLM.from_pretrained(out / "sft", dtype=torch.float32)
    assert merged.dtype == torch.bfloat16
    with torch.no_grad():
        want, got, before = (m(ids).logits.float() for m in (trained, merged, warmed))
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # bf16 rounding only
    assert (want - before).abs().max() > 10 * (got - want).abs().max()  # GRPO moved the weights
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(out / "final").chat_template
