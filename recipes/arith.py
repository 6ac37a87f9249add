"""Two-number addition with a tiny model, end to end on a CPU in minutes.

    python -m recipes.arith                      # the default run (README has its numbers)
    python -m recipes.arith --run.max_steps 10   # any TrainConfig knob, see --help

Like the seed tutorials: a short supervised warm-up teaches the answer format (the tutorials'
"pre-finetune for formatting"), then GRPO with a verifiable reward (exact match of the sum)
takes over. Held-out accuracy (greedy decoding) is measured before and after GRPO. Nothing
is downloaded: the model is built from a config with a character tokenizer made on the spot,
saved, and loaded back with ``from_pretrained`` like any checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from grpo_ray.cli import parse_config, user_errors
from grpo_ray.config import (
    BatchConfig, GenerationConfig, GRPOConfig, LoraConfig, ModelConfig, OptimConfig, RewardConfig,
    RolloutConfig, RunConfig, TrainConfig,
)
from recipes.tiny_model import build_char_tokenizer, build_tiny_model, save_checkpoint

ALPHABET = "0123456789+="
MAX_OPERAND = 50  # operands in [0, 50): sums have one or two digits
NUM_TRAIN, NUM_EVAL = 2000, 300
SFT_STEPS, SFT_BATCH, SFT_LR = 400, 64, 3e-3  # a deliberately short warm-up: format, not mastery

DEFAULTS = TrainConfig(
    grpo=GRPOConfig(num_generations=8, max_completion_length=4, max_prompt_length=8, beta=0.0),
    generation=GenerationConfig(temperature=1.0),
    batch=BatchConfig(per_device_train_batch_size=128, gradient_accumulation_steps=1, steps_per_generation=2),
    model=ModelConfig(name_or_path=""),  # filled in with the warmed-up checkpoint
    lora=LoraConfig(enabled=False),
    optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.1, lr_scheduler_type="linear"),
    rollout=RolloutConfig(num_workers=1),
    reward=RewardConfig(functions=("recipes.arith:exact_sum_reward",), num_workers=1),
    run=RunConfig(output_dir="outputs/arith", max_steps=1600, seed=0, logging_steps=50),
)


def make_problems(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randrange(MAX_OPERAND), rng.randrange(MAX_OPERAND)
        rows.append({"prompt": f"{a}+{b}=", "answer": str(a + b)})
    return rows


def exact_sum_reward(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
    """1.0 when the completion is exactly the sum, else 0.0 (the verifiable reward)."""
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]


def supervised_warmup(path: Path, train: list[dict[str, Any]], seed: int) -> Path:
    """Teacher-forced training on prompt + answer + EOS; loss on the answer tokens only."""
    tokenizer = build_char_tokenizer(ALPHABET)
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, max_positions=32, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SFT_LR)
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    for _ in range(SFT_STEPS):
        rows = rng.sample(train, SFT_BATCH)
        seqs = [tokenizer(r["prompt"])["input_ids"] + tokenizer(r["answer"])["input_ids"] + [eos] for r in rows]
        n_prompt = [len(tokenizer(r["prompt"])["input_ids"]) for r in rows]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        labels = torch.full((len(seqs), width), -100)
        for i, (s, p) in enumerate(zip(seqs, n_prompt)):
            ids[i, : len(s)] = torch.tensor(s)
            labels[i, p : len(s)] = torch.tensor(s[p:])
        loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_checkpoint(model, tokenizer, path)


def accuracy(trainer: Any, rows: list[dict[str, Any]]) -> float:
    """Greedy held-out accuracy through the rollout workers (the policy being trained)."""
    batch = trainer.generate([r["prompt"] for r in rows], num_generations=1, seed=0, greedy=True)
    scores = exact_sum_reward([], batch.completions, [r["answer"] for r in rows])
    return sum(scores) / len(scores)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from grpo_ray.trainer import GRPOTrainer, preflight

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = parse_config(argv, base=DEFAULTS, description=__doc__)
    out = Path(config.run.output_dir)
    train, held_out = make_problems(NUM_TRAIN, seed=1), make_problems(NUM_EVAL, seed=2)
    started = time.perf_counter()
    warmup = not config.model.name_or_path
    if warmup:  # the policy is the warm-up's checkpoint, made below
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, name_or_path=str(out / "sft")))
    with user_errors("python -m recipes.arith"):
        preflight(config, train, check_model=not warmup)  # every check before any work or any file
        if warmup and not (config.run.resume and (out / "sft" / "config.json").is_file()):
            print(f"supervised warm-up: {SFT_STEPS} steps of {SFT_BATCH} problems", flush=True)
            supervised_warmup(out / "sft", train, config.run.seed)
        trainer = GRPOTrainer(config, train)
    try:
        before = accuracy(trainer, held_out)
        when = "before GRPO" if trainer.state.step == 0 else f"at step {trainer.state.step} (resumed)"
        print(f"held-out accuracy {when}: {before:.1%}", flush=True)
        result = trainer.run()
        after = accuracy(trainer, held_out)
        print(f"held-out accuracy after GRPO:  {after:.1%} ({(after - before) * 100:+.1f} points)", flush=True)
    finally:
        trainer.shutdown()
    summary = {
        "accuracy_before": before,
        "accuracy_after": after,
        "optimizer_steps": result.optimizer_steps,
        "wall_s": round(time.perf_counter() - started, 1),
        "final_reward": result.history[-1]["reward"] if result.history else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
