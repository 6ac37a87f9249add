"""GSM8K with GRPO: the seed tutorials (the Qwen3 GRPO tutorial, Unsloth's GSM8K reward set) as one command.

    python -m recipes.gsm8k                       # Qwen/Qwen2.5-1.5B-Instruct on openai/gsm8k (a GPU and the Hub or its cache)
    python -m recipes.gsm8k --tiny                # the whole pipeline on CPU in about a minute, nothing downloaded
    python -m recipes.gsm8k --data.dataset ../shared/data/gsm8k --model.name_or_path /path/to/model
    python -m recipes.gsm8k --reward-set gsm8k    # Unsloth's GSM8K set (<reasoning>/<answer>) instead of the Qwen3 one

A preset of `python -m grpo_ray train`: the chat template and the tutorial's reasoning/solution
tags, a short SFT warm-up that teaches the format, GRPO with the chosen seed reward set, greedy
pass@1 with the math verifier (before, every eval.steps steps, at the end), metrics.jsonl, a PNG,
checkpoints, the LoRA adapter and a merged 16-bit model (GGUF with --export.gguf q8_0).

Recipe flags: --tiny [mini|qwen2.5-0.5b], --reward-set qwen3|gsm8k, --eval-limit N (the "recipe"
group below); every other flag is a knob. With --tiny, --help shows the --tiny defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from grpo_ray.cli import parse_command, user_errors
from grpo_ray.config import (
    BatchConfig, DataConfig, EvalConfig, ExportConfig, GenerationConfig, GRPOConfig, LoraConfig, ModelConfig,
    OptimConfig, RewardConfig, RunConfig, SFTConfig, TrainConfig,
)
from grpo_ray.prompting import answer_format
from grpo_ray.startup import with_model
from grpo_ray.tracking import quiet_console
from grpo_ray.train import train

PROG = "python -m recipes.gsm8k"
SAMPLE = Path(__file__).resolve().parent / "data" / "gsm8k_sample"
HINT = ", or run the whole pipeline on CPU with --tiny"

# The tutorial's GRPO settings (lr 5e-6, weight decay 0.01, 10% warm-up, linear decay, AdamW
# beta2 0.99, min_p 0.1, LoRA r 32 / alpha 64, 100 steps) on a 1.5B instruct model.
DEFAULTS = TrainConfig(
    grpo=GRPOConfig(num_generations=8, max_prompt_length=320, max_completion_length=512),
    generation=GenerationConfig(temperature=1.0, min_p=0.1),
    batch=BatchConfig(per_device_train_batch_size=8, gradient_accumulation_steps=4, steps_per_generation=4),
    model=ModelConfig(name_or_path="Qwen/Qwen2.5-1.5B-Instruct", dtype="bfloat16", gradient_checkpointing=True),
    lora=LoraConfig(r=32, alpha=64),
    optim=OptimConfig(learning_rate=5e-6, weight_decay=0.01, adam_beta2=0.99, warmup_ratio=0.1),
    reward=RewardConfig(functions=answer_format("qwen3").reward_functions),
    run=RunConfig(output_dir="outputs/gsm8k", max_steps=100, save_steps=50, seed=3407),
    data=DataConfig(dataset="openai/gsm8k", subset="main", prompt_column="question", format="qwen3"),
    sft=SFTConfig(steps=50, batch_size=4, learning_rate=2e-4),
    eval=EvalConfig(limit=200, steps=25, samples=2),
)

# --tiny: the same pipeline at a size a CPU runs in about a minute. A random-weight model learns
# next to nothing through LoRA in that time, so --tiny fine-tunes every weight (pass
# --lora.enabled true for the adapter path); the merged export is then the model in 16 bits.
TINY = {
    "grpo": dict(num_generations=4, max_prompt_length=200, max_completion_length=160),
    "batch": dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, steps_per_generation=1),
    "model": dict(name_or_path="", dtype="float32", gradient_checkpointing=False),
    "lora": dict(enabled=False),
    "optim": dict(learning_rate=1e-3),
    "run": dict(output_dir="outputs/gsm8k-tiny", max_steps=4, save_steps=2),
    "data": dict(dataset=str(SAMPLE), subset=None, max_rows=120),
    "sft": dict(steps=30, batch_size=8, learning_rate=3e-3),
    "eval": dict(limit=12, steps=2, samples=1),
}


def with_sections(config: TrainConfig, sections: dict[str, dict[str, Any]]) -> TrainConfig:
    return dataclasses.replace(config, **{k: dataclasses.replace(getattr(config, k), **v) for k, v in sections.items()})


def build_tiny_checkpoint(path: Path, shape: str, seed: int) -> Path:
    """A random-weight Qwen2 model (64-dim, 2 layers; or Qwen2.5-0.5B's layer sizes) and a BPE
    tokenizer trained on the shipped sample, whose vocabulary the model takes."""
    from recipes.tiny_model import build_bpe_tokenizer, build_tiny_model, random_checkpoint, save_checkpoint

    texts = [row["question"] + "\n" + row["answer"] for f in ("train.jsonl", "test.jsonl")
             for row in map(json.loads, (SAMPLE / f).read_text().splitlines())]
    texts += [answer_format(name).system_prompt or "" for name in ("qwen3", "gsm8k")] * 50  # the tags become tokens
    if shape == "mini":
        tokenizer = build_bpe_tokenizer(texts, vocab_size=2048)
        model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, max_positions=1024, seed=seed)
        return save_checkpoint(model, tokenizer, path)
    return random_checkpoint(shape, path, seed=seed, tokenizer=build_bpe_tokenizer(texts, vocab_size=8192))


def recipe_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tiny", nargs="?", const="mini", choices=("mini", "qwen2.5-0.5b"),
        help="Make a random-weight model of that shape (mini: 64-dim, 2 layers; qwen2.5-0.5b: Qwen2.5-0.5B's layer "
        "sizes) and a BPE tokenizer on the spot, train on the shipped GSM8K sample unless --data.dataset is given, "
        "with small knobs: the whole pipeline on a CPU in about a minute.",
    )
    parser.add_argument(
        "--reward-set", choices=("qwen3", "gsm8k"), default="qwen3",
        help="The Qwen3 tutorial's tags and four rewards (qwen3, the default) or Unsloth's GSM8K set "
        "(<reasoning>/<answer>, five rewards); sets data.format and reward.functions.",
    )
    parser.add_argument("--eval-limit", type=int, metavar="N", help="Eval questions: eval.limit N (as its default, so --eval.limit and --config still win).")


def preset(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """The defaults the recipe's flags pick (what --help then shows)."""
    base = with_sections(base, {"data": {"format": args.reward_set},
                                "reward": {"functions": answer_format(args.reward_set).reward_functions}})
    if args.tiny:
        base = with_sections(base, TINY)
    if args.eval_limit is not None:
        base = with_sections(base, {"eval": {"limit": args.eval_limit}})
    return base


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, TrainConfig]:
    """Recipe flags first (they pick the preset), then every knob on top of it."""
    return parse_command(argv, base=DEFAULTS, description=__doc__, prog=PROG, recipe_flags=recipe_flags, preset=preset)


def make_tiny(config: TrainConfig, shape: str) -> TrainConfig:
    """--tiny's model, made once per output directory (a resumed run reuses it)."""
    path = Path(config.run.output_dir) / "tiny-model"
    if not (path / "config.json").is_file():
        print(f"--tiny: building a random-weight {shape} model and a BPE tokenizer in {path}", flush=True)
        build_tiny_checkpoint(path, shape, config.run.seed)
    return with_model(config, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    quiet_console()
    args, config = parse(list(sys.argv[1:] if argv is None else argv))
    make = functools.partial(make_tiny, shape=args.tiny) if args.tiny and not config.model.name_or_path else None
    with user_errors(PROG, config.run.output_dir):
        return train(config, hint=HINT, make=make)


if __name__ == "__main__":
    main(sys.argv[1:])
