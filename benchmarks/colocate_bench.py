"""Colocate mode on one GPU, side by side with raw vLLM, the hf engine and TRL's GRPOTrainer.

    python benchmarks/colocate_bench.py all --out results.json     # every part, one process each
    python benchmarks/colocate_bench.py rollout|step|trl --trl-util 0.35

Random-weight Qwen2.5-0.5B-shaped model (``recipes.tiny_model.random_checkpoint``), bf16.
Each part runs in its own process (one vLLM engine per process):

* rollout: tokens/s of our rollout worker (vLLM engine: tokenise, generate, decode, build the
  batch) against raw ``LLM.generate`` on the same engine, prompts and sampling parameters,
  and against the hf engine; alternating, median of 3.
* step: colocated GRPO optimizer steps (LoRA r16 on all linear layers, 64 prompts x 8
  generations x up to 256 new tokens, beta 0, dapo, micro-batch 16 x 32 accumulation steps,
  gradient checkpointing), time per stage and peak memory, then the sync + wake time, and
  GPU memory after step 2 and the last step (a leak shows as growth).
* trl: TRL's GRPOTrainer, ``use_vllm=True, vllm_mode="colocate"``, sleep mode on, the same
  model, LoRA, batch and micro-batch, at ``--trl-util`` GPU memory utilisation.

Peak memory: ``torch.cuda.max_memory_allocated`` (torch's view, as TRL reports) and the
process's GPU memory as NVML sees it (context, cuBLAS workspace, CUDA graph pool included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS, GENERATIONS, NEW_TOKENS, PROMPT_WORDS = 64, 8, 256, 48
MICRO_BATCH, ACCUMULATION = 16, 32  # 512 completions per optimizer step, as TRL is run
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def nvml_used_gib() -> float:
    """GPU memory this process holds, as NVML sees it."""
    import pynvml  # nvidia-ml-py

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]))
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    used = sum(p.usedGpuMemory or 0 for p in procs if p.pid == os.getpid())
    if not used:  # some containers hide pids: the whole device then
        used = pynvml.nvmlDeviceGetMemoryInfo(handle).used
    return used / 2**30


def checkpoint(workdir: Path) -> Path:
    from recipes.tiny_model import random_checkpoint

    path = workdir / "qwen2.5-0.5b"
    if not (path / "config.json").is_file():
        random_checkpoint("qwen2.5-0.5b", path)
    return path


def prompts() -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(f"w{rng.randrange(100, 150000)}" for _ in range(PROMPT_WORDS)) for _ in range(PROMPTS)]


def our_config(path: Path, workdir: Path, *, lora: bool = True):
    from grpo_ray.config import (
        BatchConfig, GRPOConfig, LoraConfig, ModelConfig, OptimConfig, RewardConfig, RolloutConfig, RunConfig,
        TrainConfig,
    )

    return TrainConfig(
        grpo=GRPOConfig(num_generations=GENERATIONS, max_completion_length=NEW_TOKENS, max_prompt_length=64, beta=0.0),
        batch=BatchConfig(per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=ACCUMULATION),
        model=ModelConfig(name_or_path=str(path), dtype="bfloat16", gradient_checkpointing=True),
        lora=LoraConfig(enabled=lora, r=16, alpha=32, target_modules=LORA_TARGETS),
        optim=OptimConfig(learning_rate=1e-5),
        rollout=RolloutConfig(backend="vllm", num_workers=1),
        reward=RewardConfig(functions=("tests.support.reward_fns:short_completion",)),
        run=RunConfig(output_dir=str(workdir / "run"), mode="colocate", max_steps=100),
    )


def length_reward(completions: list, **_) -> list[float]:
    """A cheap verifiable-style reward: shorter is better (what both trainers score)."""
    return [-len(c if isinstance(c, str) else c[0]["content"]) / 1000.0 for c in completions]


# -- parts -------------------------------------------------------------------------------------


def part_rollout(workdir: Path) -> dict:
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from actors.engines.hf import HFEngine
    from actors.engines.vllm_engine import VLLMEngine
    from actors.rollout_worker import RolloutWorker

    config = our_config(checkpoint(workdir), workdir, lora=False)
    engine = VLLMEngine(config)
    worker = RolloutWorker(config, engine=engine)
    rows = prompts()
    ids = [worker.tokenizer(p, add_special_tokens=False)["input_ids"] for p in rows]
    raw_params = SamplingParams(n=GENERATIONS, max_tokens=NEW_TOKENS, temperature=1.0, logprobs=0,
                                stop_token_ids=engine.eos_ids, detokenize=False)

    def ours() -> int:
        return int(worker.generate(rows, num_generations=GENERATIONS, seed=0).completion_mask.sum())

    def raw() -> int:
        outs = engine.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], raw_params, use_tqdm=False)
        return sum(len(o.token_ids) for r in outs for o in r.outputs)

    timings: dict[str, list[float]] = {"ours": [], "raw": []}
    tokens: dict[str, int] = {}
    ours(), raw()  # warm-up
    for _ in range(3):
        for name, fn in (("ours", ours), ("raw", raw)):
            torch.cuda.synchronize()
            t = time.perf_counter()
            tokens[name] = fn()
            torch.cuda.synchronize()
            timings[name].append(time.perf_counter() - t)
    result = {name: {"tokens": tokens[name], "s": statistics.median(ts), "tok_per_s": tokens[name] / statistics.median(ts)}
              for name, ts in timings.items()}
    result["engine_init_s"] = engine.init_s
    hf_worker = RolloutWorker(config, engine=HFEngine(config))
    hf_worker.generate(rows[:4], num_generations=GENERATIONS, seed=0)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    n = int(hf_worker.generate(rows, num_generations=GENERATIONS, seed=0).completion_mask.sum())
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    result["hf"] = {"tokens": n, "s": seconds, "tok_per_s": n / seconds}
    return result


def part_step(workdir: Path, steps: int) -> dict:
    import torch

    from actors.colocated_worker import ColocatedWorker
    from grpo_ray.advantages import compute_advantages

    started = time.perf_counter()
    config = our_config(checkpoint(workdir), workdir, lora=True)
    worker = ColocatedWorker(config)
    init_s = time.perf_counter() - started
    rows = prompts()
    worker.sync_weights()
    records = []
    for step in range(steps):
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        batch = worker.generate(rows, num_generations=GENERATIONS, seed=step)
        t1 = time.perf_counter()
        batch.rewards = torch.tensor(length_reward(batch.completions)).unsqueeze(1)
        batch.advantages = compute_advantages(batch.rewards, GENERATIONS)
        t2 = time.perf_counter()
        metrics = worker.train_generation(batch, cycle=step)
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        worker.sync_weights()
        torch.cuda.synchronize()
        t4 = time.perf_counter()
        records.append({
            "step": step + 1, "step_s": t4 - t0, "rollout_s": t1 - t0, "rewards_s": t2 - t1, "learner_s": t3 - t2,
            "sync_s": t4 - t3, "optimizer_steps": len(metrics),
            "completion_tokens": int(batch.completion_mask.sum()),
            "torch_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "torch_reserved_gib": torch.cuda.memory_reserved() / 2**30,
            "nvml_gib": nvml_used_gib(),
        })
        print(json.dumps(records[-1]), flush=True)
    # sync + wake alone, LoRA (the adapter into vLLM's slot) and the prefix-cache reset
    sync_wake = []
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        worker.sync_weights()
        worker.engine.wake_up()
        torch.cuda.synchronize()
        sync_wake.append(time.perf_counter() - t)
        worker.engine.sleep()
    return {"init_s": init_s, "steps": records, "sync_plus_wake_s": statistics.median(sync_wake),
            "kv_cache_gib": worker.engine.sizes["kv_cache_memory_bytes"] / 2**30}


def part_sync_full(workdir: Path) -> dict:
    """Full fine-tuning: the engine shares the learner's tensors (nothing copied), and for
    reference an in-place load of the whole state dict from GPU memory."""
    import torch

    from actors.colocated_worker import ColocatedWorker

    worker = ColocatedWorker(our_config(checkpoint(workdir), workdir, lora=False))
    out = {}
    for name, fn in (
        ("shared_sync_plus_wake_s", lambda: (worker.sync_weights(), worker.engine.wake_up())),
        ("load_state_dict_plus_wake_s", lambda: (worker.engine.update_weights(worker.learner.weights(False)[1]),
                                                 worker.engine.wake_up())),
    ):
        ts = []
        for _ in range(5):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
            worker.engine.sleep()
        out[name] = statistics.median(ts)
    return out


def part_trl(workdir: Path, util: float, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29533"}.items():
        os.environ.setdefault(key, value)
    path = checkpoint(workdir)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    args = GRPOConfig(
        output_dir=str(workdir / f"trl-{util}"), per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=ACCUMULATION, num_generations=GENERATIONS, max_completion_length=NEW_TOKENS,
        learning_rate=1e-5, beta=0.0, loss_type="dapo", use_vllm=True, vllm_mode="colocate",
        vllm_enable_sleep_mode=True, vllm_gpu_memory_utilization=util, bf16=True, gradient_checkpointing=True,
        max_steps=steps, logging_steps=1, report_to="none", save_strategy="no", seed=0,
        model_init_kwargs={"dtype": torch.bfloat16},
    )
    started = time.perf_counter()
    trainer = GRPOTrainer(
        model=str(path), reward_funcs=length_reward, args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts()] * steps),
        processing_class=PreTrainedTokenizerFast.from_pretrained(path),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"),
        callbacks=[Clock()],
    )
    init_s = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train()
    times = [b - a for a, b in zip([t0, *stamps], stamps)]
    lengths = [r.get("completions/mean_length") for r in trainer.state.log_history if "completions/mean_length" in r]
    return {"util": util, "init_s": init_s, "step_s": times, "torch_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "nvml_gib": nvml_used_gib(), "mean_completion_length": lengths}


# -- driver ------------------------------------------------------------------------------------


def run_part(argv: list[str], timeout: int) -> dict:
    """One part in a fresh process; its JSON result is the last line it prints."""
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(proc.stderr[-4000:])
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}", "stdout_tail": proc.stdout[-2000:], "stderr_tail": proc.stderr[-3000:]}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["all", "rollout", "step", "sync_full", "trl"])
    parser.add_argument("--workdir", default="/tmp/colocate-bench")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trl-steps", type=int, default=3)
    parser.add_argument("--trl-util", type=float, default=0.35)
    parser.add_argument("--trl-utils", default="0.35,0.08")
    parser.add_argument("--parts", default="rollout,step,sync_full,trl")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.part != "all":
        result = {
            "rollout": lambda: part_rollout(workdir),
            "step": lambda: part_step(workdir, args.steps),
            "sync_full": lambda: part_sync_full(workdir),
            "trl": lambda: part_trl(workdir, args.trl_util, args.trl_steps),
        }[args.part]()
        print("RESULT " + json.dumps(result), flush=True)
        return
    import torch

    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": torch.cuda.get_device_name(0)}
    for part in args.parts.split(","):
        common = ["--workdir", str(workdir)]
        if part == "trl":
            for util in args.trl_utils.split(","):
                results[f"trl@{util}"] = run_part(["trl", "--trl-util", util, "--trl-steps", str(args.trl_steps), *common], 900)
        else:
            results[part] = run_part([part, "--steps", str(args.steps), *common], 900)
        print(json.dumps({part: results.get(part, {k: v for k, v in results.items() if k.startswith("trl")})})[:3000], flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
