"""`python -m recipes.gsm8k --tiny`, end to end on CPU: data, SFT, GRPO, eval, logs, plot, export."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

@pytest.fixture(scope="module")
def tiny_run(gsm8k_tiny_run):
    """The session's --tiny run (tests/conftest.py): a fresh directory, the default output_dir
    (./outputs/...), its own process; the console kept for the console test."""
    cwd, run = gsm8k_tiny_run
    out = cwd / "outputs" / "gsm8k-tiny"
    return out, json.loads((out / "summary.json").read_text()), run


def test_tiny_run_writes_everything_under_outputs(tiny_run):
    out, summary, _ = tiny_run
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
    out, _, _ = tiny_run
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


NOISE = [
    "Repo card metadata", "real_accelerator", "Token authentication", "FutureWarning", "Loading weights",
    "Writing model shards", "Generating train split", "gemm_4bit_forward", "Started a local Ray instance",
]


def test_the_console_shows_the_run_not_the_libraries(tiny_run):
    """The plan, the progress bars, the metric lines and where the outputs are; none of the
    libraries' chatter, no empty actor lines, repeats squeezed in the printed samples."""
    out, summary, run = tiny_run
    console = run.stdout + run.stderr
    for noise in NOISE:
        assert noise not in console, noise
    lines = re.sub(r"\x1b\[[0-9;]*m", "", console).replace("\r", "\n").splitlines()  # without Ray's colours
    assert not [line for line in lines if re.fullmatch(r"\s*\(\w+ pid=\d+\)\s*", line)]  # empty "(Learner pid=..)" lines
    assert f"Ray: started a local cluster with {os.cpu_count()} logical CPUs" in run.stderr  # one per core
    assert "generation cycle: 2 unique prompts -> 8 completions" in run.stdout  # the plan
    assert "GRPO: 100%" in run.stderr and "SFT warm-up: 100%" in run.stderr  # the bars
    assert [line.split("|")[0].split()[-1] for line in run.stdout.splitlines() if line.startswith("step ")] == list("01234")
    assert f"wrote: final {Path('outputs/gsm8k-tiny/final')}" in run.stdout  # where the outputs are
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for sample in samples:  # a barely trained model repeats itself: the console shows a repeat once
        shown = run.stdout.split(f"at step {sample['step']} ----", 1)[1].split("Response: ", 1)[1].split("\nExtracted:", 1)[0]
        assert len(shown) <= len(sample["response"])
