"""One GRPO optimizer step of the learner group: plain data parallel against DeepSpeed ZeRO-2/3.

    python benchmarks/zero_bench.py --out zero.json          # GPU: needs 2 GPUs
    python benchmarks/zero_bench.py --smoke                  # CPU (gloo), tiny model: the same code path

Random-weight Qwen2.5-0.5B-shaped model (``recipes.tiny_model.random_checkpoint``), bf16,
gradient checkpointing, LoRA r16 on all linear layers and full fine-tuning. One generation
batch of 64 prompts x 8 generations x 256 completion tokens (48 prompt tokens; synthetic ids
and advantages, every completion token in the loss) is one optimizer step: micro-batch 16 per
rank, ``512 / (16 x ranks)`` accumulation steps. Variants: plain on 1 rank (1 GPU), plain on 2
ranks, ZeRO-2 on 2 ranks, ZeRO-3 on 2 ranks.

Each variant starts its ranks as the trainer does: one :class:`~actors.learner.Learner` Ray
actor per rank, one bundle each in a placement group, formed into one torch.distributed group
by :class:`~actors.learner_group.LearnerGroup` (NCCL on GPU), then calls
``train_generation`` on every rank: one warm-up step, then the median of ``--steps`` timed
steps (the learner's own ``time/train_s``). Peak memory per rank:
``torch.cuda.max_memory_allocated``. Every variant has its own deadline; a failure or a
time-out is recorded in the JSON and the next variant runs. Prints one ``RESULT {...}`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VARIANTS = {  # name -> (train_backend, ranks)
    "plain_1rank": ("plain", 1),
    "plain_2ranks": ("plain", 2),
    "zero2_2ranks": ("deepspeed_zero2", 2),
    "zero3_2ranks": ("deepspeed_zero3", 2),
}


@dataclasses.dataclass(frozen=True)
class Shape:
    prompts: int
    generations: int
    prompt_tokens: int
    completion_tokens: int
    micro_batch: int

    @property
    def rows(self) -> int:
        return self.prompts * self.generations


GPU_SHAPE = Shape(prompts=64, generations=8, prompt_tokens=48, completion_tokens=256, micro_batch=16)
SMOKE_SHAPE = Shape(prompts=4, generations=4, prompt_tokens=6, completion_tokens=8, micro_batch=4)


def make_checkpoint(workdir: Path, smoke: bool) -> Path:
    from recipes.tiny_model import random_checkpoint

    shape = "small" if smoke else "qwen2.5-0.5b"
    path = workdir / shape
    if not (path / "config.json").is_file():
        random_checkpoint(shape, path)
    return path


def make_config(model: Path, out: Path, shape: Shape, backend: str, ranks: int, lora: bool, smoke: bool) -> Any:
    from grpo_ray.config import (
        BatchConfig, GRPOConfig, LoraConfig, ModelConfig, OptimConfig, RolloutConfig, RunConfig, TrainConfig,
    )

    per_rank = shape.rows // ranks
    accumulation = per_rank // shape.micro_batch  # one optimizer step per generation batch
    return TrainConfig(
        grpo=GRPOConfig(num_generations=shape.generations, max_completion_length=shape.completion_tokens,
                        loss_type="dapo", beta=0.0, vllm_importance_sampling_correction=False),
        batch=BatchConfig(per_device_train_batch_size=shape.micro_batch, gradient_accumulation_steps=accumulation,
                          num_processes=ranks, train_backend=backend),
        model=ModelConfig(name_or_path=str(model), dtype="float32" if smoke else "bfloat16",
                          gradient_checkpointing=not smoke),
        lora=LoraConfig(enabled=lora, r=16, alpha=32, target_modules=LORA_TARGETS),
        optim=OptimConfig(learning_rate=1e-6),
        rollout=RolloutConfig(num_workers=1),
        run=RunConfig(output_dir=str(out), max_steps=1000, seed=0, mode="distributed"),
    )


def synthetic_batch(shape: Shape, vocab: int, pad: int, seed: int) -> Any:
    """A scored generation batch: random ids, full masks, random advantages."""
    import torch

    from grpo_ray.rollout_batch import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    n, p, t = shape.rows, shape.prompt_tokens, shape.completion_tokens
    return RolloutBatch(
        prompt_ids=torch.randint(10, vocab, (n, p), generator=g),
        prompt_mask=torch.ones(n, p, dtype=torch.long),
        completion_ids=torch.randint(10, vocab, (n, t), generator=g),
        completion_mask=torch.ones(n, t, dtype=torch.long),
        sampling_logps=torch.zeros(n, t),
        truncated=torch.zeros(n, dtype=torch.bool),
        completions=[""] * n,
        weight_version=0,
        pad_token_id=pad,
        advantages=torch.randn(n, generator=g),
    )


def start_learners(config: Any, gpus: float) -> tuple[Any, list[Any], Any]:
    """The learner ranks as the trainer places them: (group, rank actors, placement group)."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from actors.learner import Learner
    from actors.learner_group import LearnerGroup
    from actors.train_backends import EVERY_RANK

    n = config.batch.num_processes
    bundle = {"CPU": 1.0} | ({"GPU": gpus} if gpus else {})
    pg = placement_group([bundle] * n, strategy="PACK")
    ray.get(pg.ready(), timeout=120)
    ranks = [
        ray.remote(Learner).options(
            num_cpus=1, num_gpus=gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r),
        ).remote(config, 1, None, r)
        for r in range(n)
    ]
    group = LearnerGroup(ranks, EVERY_RANK[config.batch.train_backend])
    group.form()
    return group, ranks, pg


def _peak_gib(learner: Any) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def run_variant(config: Any, shape: Shape, steps: int, gpus: float, vocab: int, pad: int, timeout_s: float) -> dict:
    import ray

    deadline = time.monotonic() + timeout_s
    left = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
    group, ranks, pg = start_learners(config, gpus)
    try:
        times, losses = [], []
        for cycle in range(1 + steps):
            batch = synthetic_batch(shape, vocab, pad, seed=cycle)
            started = time.perf_counter()
            metrics = ray.get(group.train_generation.remote(batch, cycle), timeout=left())
            wall = time.perf_counter() - started
            if len(metrics) != 1 or "partial_window" in metrics[0]:
                raise RuntimeError(f"expected one optimizer step per generation batch, got {metrics}")
            if cycle:  # the first is the warm-up
                times.append((metrics[0]["time/train_s"], wall))
                losses.append(metrics[0]["loss"])
        weights = ray.get(group.weights.remote(), timeout=left())[1]  # full tensors on rank 0, also under ZeRO-3
        peaks = ray.get([r.__ray_call__.remote(_peak_gib) for r in ranks], timeout=left())
        step_s = statistics.median(t for t, _ in times)
        tokens = shape.rows * (shape.prompt_tokens + shape.completion_tokens)
        return {
            "step_s": step_s, "wall_s": statistics.median(w for _, w in times), "tokens_per_s": tokens / step_s,
            "completion_tokens_per_s": shape.rows * shape.completion_tokens / step_s, "losses": losses,
            "peak_gib_per_rank": peaks, "exported_tensors": len(weights),
            "exported_numel": sum(t.numel() for t in weights.values()),
        }
    finally:
        for r in ranks:
            ray.kill(r)
        ray.util.remove_placement_group(pg)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU (gloo), small model, tiny batch: the same code path")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per variant (after one warm-up)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--modes", default="lora,full", help="comma-separated subset of lora,full")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="deadline of one variant (start, warm-up, steps)")
    parser.add_argument("--workdir", default=None, help="where the random checkpoint is written (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    args = parser.parse_args(argv)
    unknown = set(args.modes.split(",")) - {"lora", "full"} or set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown mode or variant {sorted(unknown)}: --modes takes lora,full; --variants {','.join(VARIANTS)}")

    import ray
    import torch

    from grpo_ray.modeling import load_tokenizer

    shape = SMOKE_SHAPE if args.smoke else GPU_SHAPE
    gpus = 0.0 if args.smoke else 1.0
    if not args.smoke and torch.cuda.device_count() < 2:
        raise SystemExit(f"needs 2 GPUs (this machine has {torch.cuda.device_count()}); --smoke runs on CPU")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zero_bench_"))
    model = make_checkpoint(workdir, args.smoke)
    tokenizer = load_tokenizer(make_config(model, workdir, shape, "plain", 1, True, args.smoke).model)
    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    ray.init(address="local", num_cpus=4, num_gpus=0 if args.smoke else 2, include_dashboard=False,
             log_to_driver=bool(os.environ.get("ZERO_BENCH_LOGS")),
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    result: dict[str, Any] = {
        "smoke": args.smoke, "device": torch.cuda.get_device_name(0) if not args.smoke else "cpu",
        "shape": dataclasses.asdict(shape), "model": model.name, "steps": args.steps, "runs": {},
    }
    try:
        for mode in args.modes.split(","):
            for name in args.variants.split(","):
                backend, ranks = VARIANTS[name]
                key = f"{mode}/{name}"
                config = make_config(model, workdir / key, shape, backend, ranks, mode == "lora", args.smoke)
                started = time.perf_counter()
                try:
                    run = run_variant(config, shape, args.steps, gpus, vocab, pad, args.timeout_s)
                except Exception as err:  # noqa: BLE001 - recorded, and the next variant runs
                    run = {"error": f"{type(err).__name__}: {err}"[:2000], "trace": traceback.format_exc()[-4000:]}
                run["total_s"] = time.perf_counter() - started
                result["runs"][key] = run
                print(key, json.dumps({k: v for k, v in run.items() if k != "trace"}), flush=True)
    finally:
        ray.shutdown()
    print("RESULT " + json.dumps(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
