"""Two-number addition with a tiny model, end to end on a CPU in minutes.

    python -m recipes.arith                      # the default run (README has its numbers)
    python -m recipes.arith --run.max_steps 10   # any TrainConfig knob, see --help

A preset of `python -m grpo_ray train`, like the seed tutorials: a short supervised warm-up
teaches the answer format (the tutorials' "pre-finetune for formatting"), then GRPO with a
verifiable reward (exact match of the sum) takes over. Held-out accuracy (greedy decoding) is
measured before and after GRPO. Nothing is downloaded: the problems are generated into
``<output_dir>/problems/{train,test}.jsonl``, and the model is built from a config with a
character tokenizer made on the spot, saved, and loaded back with ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any, Sequence

from grpo_ray.cli import parse_config, user_errors
from grpo_ray.config import (
    BatchConfig, DataConfig, EvalConfig, ExportConfig, GenerationConfig, GRPOConfig, LoraConfig, ModelConfig,
    OptimConfig, RewardConfig, RolloutConfig, RunConfig, SFTConfig, TrainConfig,
)
from grpo_ray.startup import with_model
from grpo_ray.tracking import quiet_console
from grpo_ray.train import train
from recipes.tiny_model import build_char_tokenizer, build_tiny_model, save_checkpoint

ALPHABET = "0123456789+="
MAX_OPERAND = 50  # operands in [0, 50): sums have one or two digits
NUM_TRAIN, NUM_EVAL = 2000, 300

DEFAULTS = TrainConfig(
    grpo=GRPOConfig(num_generations=8, max_completion_length=4, max_prompt_length=8, beta=0.0),
    generation=GenerationConfig(temperature=1.0),
    batch=BatchConfig(per_device_train_batch_size=128, gradient_accumulation_steps=1, steps_per_generation=2),
    model=ModelConfig(name_or_path=""),  # empty: a tiny model is made on the spot
    lora=LoraConfig(enabled=False),
    optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.1, lr_scheduler_type="linear"),
    rollout=RolloutConfig(num_workers=1),
    reward=RewardConfig(functions=("recipes.arith:exact_sum_reward",), num_workers=1),
    run=RunConfig(output_dir="outputs/arith", max_steps=1600, seed=0, logging_steps=50),
    data=DataConfig(dataset="", chat_template="none"),  # empty: the problems are generated
    # A deliberately short warm-up: format, not mastery. Unclipped, as this recipe always was: with
    # the gradient clipped at 1.0 the same 400 steps reach ~83% and leave GRPO little to do.
    sft=SFTConfig(steps=400, batch_size=64, learning_rate=3e-3, max_grad_norm=0.0),
    eval=EvalConfig(limit=NUM_EVAL, judge="recipes.arith:exact_sum_reward", samples=0),
    export=ExportConfig(merged=False),
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


def write_problems(path: Path) -> Path:
    """train.jsonl (2000 problems) and test.jsonl (300 held-out ones) in ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", make_problems(NUM_TRAIN, seed=1)), ("test", make_problems(NUM_EVAL, seed=2))):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make(config: TrainConfig) -> TrainConfig:
    """The problems and the tiny model, made once per output directory (a resumed run reuses them)."""
    out = Path(config.run.output_dir)
    if not config.data.dataset:
        if not (out / "problems" / "test.jsonl").is_file():
            write_problems(out / "problems")
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=str(out / "problems")))
    if not config.model.name_or_path:
        if not (out / "tiny-model" / "config.json").is_file():
            tokenizer = build_char_tokenizer(ALPHABET)
            tiny = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, max_positions=32, seed=config.run.seed)
            save_checkpoint(tiny, tokenizer, out / "tiny-model")
        config = with_model(config, out / "tiny-model")
    return config


PROG = "python -m recipes.arith"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    quiet_console()
    config = parse_config(argv, base=DEFAULTS, description=__doc__, prog=PROG)
    with user_errors(PROG, config.run.output_dir):
        return train(config, make=make)


if __name__ == "__main__":
    main(sys.argv[1:])
