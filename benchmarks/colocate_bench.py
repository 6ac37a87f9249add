"""Colocate mode on one GPU, side by side with raw vLLM, the hf engine and TRL's GRPOTrainer.

    python benchmarks/colocate_bench.py all --out results.json     # every part, one process each
    python benchmarks/colocate_bench.py rollout|step|trl --trl-util 0.35
    python benchmarks/colocate_bench.py async --max-staleness 1     # the driver's colocated step, asynchronous
    python benchmarks/colocate_bench.py all --parts async --out async.json   # max_staleness 0 and 1, same call

Random-weight Qwen2.5-0.5B-shaped model (``recipes.tiny_model.random_checkpoint``), bf16.
Each part runs in its own process (one vLLM engine per process):

* rollout: tokens/s of our rollout worker (vLLM engine: tokenise, generate, decode, build the
  batch) against raw ``LLM.generate`` on the same engine, prompts and sampling parameters,
  and against the hf engine; alternating, median of 3.
* step: colocated GRPO optimizer steps (LoRA r16 on all linear layers, 64 prompts x 8
  generations x up to 256 new tokens, beta 0, dapo, micro-batch 16 x 32 accumulation steps,
  gradient checkpointing), time per stage and peak memory, the learner's model-FLOPs
  utilisation (``benchmarks/profile_learner.py``'s estimate over ``--peak-tflops``), then the
  sync + wake time, and GPU memory after step 2 and the last step (a leak shows as growth).
  ``--max-tokens-per-forward 0,16384,65536`` runs ``--steps`` steps at each learner token
  budget in the same process (medians per budget in ``by_budget``).
* single_card: the seeds' one-card case, 16 completions of 768 tokens, LoRA on a bf16 or 4-bit base,
  Qwen2.5 0.5B to 7B shapes, CUDA graphs (compiled or not) or eager: per-step tokens/s, learner
  time and NVML peaks per phase, start-up split (vLLM's own figures included), memory breakdown.
* trl: TRL's GRPOTrainer, ``use_vllm=True, vllm_mode="colocate"``, sleep mode on, the same
  model, LoRA, batch and micro-batch, at ``--trl-util`` GPU memory utilisation.
* async: the step's config through the real driver (``GRPOTrainer``, ``run.mode='colocate'``) at
  ``rollout.max_staleness`` ``--max-staleness``: 0 is the synchronous loop; 1 generates cycle
  t + 1 (vLLM, the previous adapter's slot, KV cache awake) while the learner trains cycle t in
  the same process (its own CUDA stream). The phases overlap, so it reports the step
  (``time/cycle_s``), each phase's busy time (``time/generate_s``, ``time/train_s``), the waits,
  the overlap achieved (``async/overlap`` = time both busy / step) and NVML's peak (the KV cache
  and the learner's peak at once), median of steps 2..N. ``--smoke``: the same on CPU (hf engine).

Peak memory: ``torch.cuda.max_memory_allocated`` (torch's view, as TRL reports) and the
process's GPU memory as NVML sees it (context, cuBLAS workspace, CUDA graph pool included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    ACCUMULATION, GENERATIONS, LORA_TARGETS, MICRO_BATCH, NEW_TOKENS, NvmlPeak, checkpoint, length_reward, our_config,
    prompts, run_part,
)


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
    result = {name: {"tokens": tokens[name], "s": statistics.median(ts), "all_s": ts,
                     "tok_per_s": tokens[name] / statistics.median(ts)} for name, ts in timings.items()}
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


def part_step(workdir: Path, steps: int, max_num_seqs: int | None, budgets: list[int | None], peak_tflops: float) -> dict:
    """``steps`` colocated steps at each learner token budget (``batch.max_tokens_per_forward``;
    None = the config's auto), in one process: one engine start, the budget switched on the
    learner's config between steps (it is read at every ``train_generation``)."""
    import torch
    from transformers import AutoConfig

    from actors.colocated_worker import ColocatedWorker
    from benchmarks.profile_learner import ModelShape, learner_flops
    from grpo_ray.advantages import compute_advantages

    from benchmarks.common import VllmStartupLog

    nvml = NvmlPeak()
    config = our_config(checkpoint(workdir), workdir, lora=True, max_num_seqs=max_num_seqs)
    vllm_log = VllmStartupLog()  # the checkpoint is made before the clock starts: a user's is on disk already
    started = time.perf_counter()
    worker = ColocatedWorker(config)
    init_s = time.perf_counter() - started
    startup = {"engine_init_s": worker.engine.init_s, "learner_init_s": init_s - worker.engine.init_s,
               "vllm": vllm_log.close()}
    shape = ModelShape.of(AutoConfig.from_pretrained(config.model.name_or_path))
    rows = prompts()
    worker.sync_weights()
    records = []
    for budget in budgets:
        worker.learner.config = dataclasses.replace(
            config, batch=dataclasses.replace(config.batch, max_tokens_per_forward=budget)
        )
        for _ in range(steps):
            step = len(records)
            nvml.take()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            batch = worker.generate(rows, num_generations=GENERATIONS, seed=step)
            t1 = time.perf_counter()
            rollout_peak, rollout_nvml = torch.cuda.max_memory_allocated() / 2**30, nvml.take()
            torch.cuda.reset_peak_memory_stats()
            batch.rewards = torch.tensor(length_reward(batch.completions)).unsqueeze(1)
            batch.advantages = compute_advantages(batch.rewards, GENERATIONS)
            t2 = time.perf_counter()
            metrics = worker.train_generation(batch, cycle=step)
            torch.cuda.synchronize()
            t3 = time.perf_counter()
            learner_peak, learner_nvml = torch.cuda.max_memory_allocated() / 2**30, nvml.take()
            worker.sync_weights()
            torch.cuda.synchronize()
            t4 = time.perf_counter()
            lengths = list(zip(batch.prompt_mask.sum(1).tolist(), batch.completion_mask.sum(1).tolist()))
            flops = learner_flops(shape, lengths, lora_r=config.lora.r, lora_targets=config.lora.target_modules,
                                  gradient_checkpointing=config.model.gradient_checkpointing)
            records.append({
                "step": step + 1, "max_tokens_per_forward": budget,
                "step_s": t4 - t0, "rollout_s": t1 - t0, "rewards_s": t2 - t1, "learner_s": t3 - t2,
                "sync_s": t4 - t3, "optimizer_steps": len(metrics),
                "completion_tokens": int(batch.completion_mask.sum()),
                "learner_model_tflop": flops["model"] / 1e12,
                "learner_mfu": flops["model"] / ((t3 - t2) * peak_tflops * 1e12),
                "learner_hfu": flops["executed"] / ((t3 - t2) * peak_tflops * 1e12),
                "torch_peak_gib": max(rollout_peak, learner_peak), "torch_peak_rollout_gib": rollout_peak,
                "torch_peak_learner_gib": learner_peak, "nvml_peak_rollout_gib": rollout_nvml,
                "nvml_peak_learner_gib": learner_nvml, "torch_reserved_gib": torch.cuda.memory_reserved() / 2**30,
                "nvml_after_step_gib": nvml.now() - nvml.baseline,
            })
            print(json.dumps(records[-1]), flush=True)
    by_budget = {}  # medians per budget, the run's first step (warm-up) left out
    for budget in budgets:
        mine = [r for r in records[1:] if r["max_tokens_per_forward"] == budget]
        if mine:
            by_budget[str(budget)] = {k: statistics.median(r[k] for r in mine) for k in (
                "step_s", "learner_s", "learner_mfu", "learner_hfu", "torch_peak_learner_gib", "nvml_peak_learner_gib")}
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
    return {"init_s": init_s, "startup": startup, "steps": records, "by_budget": by_budget, "peak_tflops": peak_tflops,
            "sync_plus_wake_s": statistics.median(sync_wake),
            "max_num_seqs": worker.engine.sizes["max_num_seqs"],
            "kv_cache_gib": worker.engine.sizes["kv_cache_memory_bytes"] / 2**30}


def part_single_card(
    workdir: Path, steps: int, four_bit: bool, num_prompts: int, shape: str, eager: bool, compile_graphs: bool,
) -> dict:
    """The seeds' single-card case: a Qwen2.5 shape, LoRA r16 on a bf16 or 4-bit (NF4) base shared
    with vLLM, colocate, ``num_prompts`` x 8 generations of 256 prompt + 768 completion tokens
    (random weights rarely sample EOS: completions run to the limit); per step the rollout's
    tokens/s, the learner's and the sync's time and the NVML peak of each phase; start-up split
    into the engine (with vLLM's own figures: weights, compile, graph capture and its pool) and
    the learner built on the engine's tensors; where the memory goes."""
    import dataclasses

    import torch

    from actors.colocated_worker import ColocatedWorker
    from benchmarks.common import VllmStartupLog
    from grpo_ray.advantages import compute_advantages
    from grpo_ray.config import BatchConfig

    nvml = NvmlPeak()
    torch.empty(1, device="cuda")
    context = nvml.now() - nvml.baseline
    path = checkpoint(workdir, shape)  # made before the clock starts: a user's model is on disk already
    base = our_config(path, workdir, lora=True)
    config = dataclasses.replace(
        base,
        grpo=dataclasses.replace(base.grpo, max_prompt_length=256, max_completion_length=768),
        # num_prompts x 8 generations (a cycle needs 2 prompts at least), micro-batch 2
        batch=BatchConfig(per_device_train_batch_size=2, gradient_accumulation_steps=4 * num_prompts),
        model=dataclasses.replace(base.model, logprob_chunk_size=1024, load_in_4bit=four_bit),
        rollout=dataclasses.replace(base.rollout, enforce_eager=eager, compile=compile_graphs),
    )
    nvml.take()
    vllm_log = VllmStartupLog()
    started = time.perf_counter()
    worker = ColocatedWorker(config)
    init_s = time.perf_counter() - started
    startup = {"init_s": init_s, "engine_init_s": worker.engine.init_s,
               "learner_init_s": init_s - worker.engine.init_s, "vllm": vllm_log.close(),
               "nvml_peak_init_gib": nvml.take(),
               # what stays in torch's allocator after start-up: the CUDA-graph pool, vLLM's buffers
               "torch_reserved_after_init_gib": torch.cuda.memory_reserved() / 2**30}
    engine_weights = sum(p.numel() * p.element_size() for p in worker.engine.model.parameters()) / 2**30
    states = [s for p in worker.engine.model.parameters() for s in getattr(p, "bnb_quant_state", {}).values()]
    quant_stats = sum(s.absmax.numel() * s.absmax.element_size() + s.code.numel() * 4 for s in states) / 2**30
    rows = [" ".join(f"w{100 + 37 * i + j}" for i in range(256)) for j in range(num_prompts)]
    worker.sync_weights()
    records = []
    for step in range(steps):
        nvml.take()
        t0 = time.perf_counter()
        batch = worker.generate(rows, num_generations=GENERATIONS, seed=step)
        t1 = time.perf_counter()
        rollout_nvml = nvml.take()
        batch.rewards = torch.tensor(length_reward(batch.completions)).unsqueeze(1)
        batch.advantages = compute_advantages(batch.rewards, GENERATIONS)
        worker.train_generation(batch, cycle=step)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        learner_nvml = nvml.take()
        worker.sync_weights()
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        tokens = int(batch.completion_mask.sum())
        records.append({"step": step + 1, "step_s": t3 - t0, "rollout_s": t1 - t0, "learner_s": t2 - t1,
                        "sync_s": t3 - t2, "completion_tokens": tokens, "rollout_tok_per_s": tokens / (t1 - t0),
                        "nvml_peak_rollout_gib": rollout_nvml, "nvml_peak_learner_gib": learner_nvml})
        print(json.dumps(records[-1]), flush=True)
    optimizer = worker.learner.optimizer
    adam = sum(t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t))
    lora = sum(p.numel() * p.element_size() for p in worker.learner.params)
    timed = records[1:] or records  # the first step warms up (allocator, autotuning)
    return {"shape": shape, "four_bit": four_bit, "eager": eager, "compile": compile_graphs and not eager,
            "num_prompts": num_prompts, "completions_per_step": 8 * num_prompts, "startup": startup,
            "steps": records, "cuda_context_gib": context, "engine_weights_gib": engine_weights,
            "quantization_statistics_gib": quant_stats,
            "kv_cache_gib": worker.engine.sizes["kv_cache_memory_bytes"] / 2**30,
            "cudagraph_capture_sizes": None if eager else worker.engine.compilation.get("cudagraph_capture_sizes"),
            "lora_params_plus_grads_plus_adam_gib": (2 * lora + adam) / 2**30,
            "median_step_s": statistics.median(r["step_s"] for r in timed),
            "median_rollout_tok_per_s": statistics.median(r["rollout_tok_per_s"] for r in timed),
            "median_learner_s": statistics.median(r["learner_s"] for r in timed),
            "nvml_peak_gib": max(max(r["nvml_peak_rollout_gib"], r["nvml_peak_learner_gib"]) for r in records),
            "nvml_peak_with_init_gib": max(startup["nvml_peak_init_gib"],
                                           *(max(r["nvml_peak_rollout_gib"], r["nvml_peak_learner_gib"]) for r in records))}


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


def part_async(workdir: Path, steps: int, max_staleness: int, max_num_seqs: int | None, smoke: bool) -> dict:
    import dataclasses

    from benchmarks.common import run_driver

    if smoke:  # CPU: the hf engine, a 2-layer model, toy batches (distributed_bench's smoke config)
        from benchmarks.distributed_bench import SMOKE_SHAPE, bench_config

        path = checkpoint(workdir, SMOKE_SHAPE)
        config = bench_config(path, workdir / f"async-s{max_staleness}", lora=True, mode="colocate", smoke=True,
                              steps=steps, max_staleness=max_staleness)
        return run_driver(config)
    base = our_config(checkpoint(workdir), workdir, lora=True, max_num_seqs=max_num_seqs)
    config = dataclasses.replace(
        base, rollout=dataclasses.replace(base.rollout, max_staleness=max_staleness),
        run=dataclasses.replace(base.run, max_steps=steps, output_dir=str(workdir / f"async-s{max_staleness}")),
    )
    return run_driver(config, [NvmlPeak()])


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
    nvml = NvmlPeak()
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
            "nvml_peak_gib": nvml.take(), "mean_completion_length": lengths}


# -- driver ------------------------------------------------------------------------------------


def budgets(text: str) -> list[int | None]:
    """``--max-tokens-per-forward`` as budgets: 'auto' -> None (the config's default)."""
    return [None if b.strip() == "auto" else int(b) for b in text.split(",") if b.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["all", "rollout", "step", "sync_full", "trl", "single_card", "async"])
    parser.add_argument("--workdir", default="/tmp/colocate-bench")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trl-steps", type=int, default=3)
    parser.add_argument("--max-num-seqs", type=int, default=None, help="step: rollout.max_num_seqs (None: the batch)")
    parser.add_argument("--max-tokens-per-forward", default="auto",
                        help="step: learner token budgets (batch.max_tokens_per_forward), comma-separated, each run "
                             "for --steps steps in one process; 'auto' = the config's default, 0 = the plain loop")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="step: the dense bf16 peak the MFU divides by")
    parser.add_argument("--four-bit", action="store_true", help="single_card: a 4-bit (NF4) base")
    parser.add_argument("--prompts", type=int, default=2, help="single_card: prompts per step (x 8 generations)")
    parser.add_argument("--shape", default="qwen2.5-1.5b", choices=["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b",
                        "qwen2.5-7b"], help="single_card: the model shape (random weights)")
    parser.add_argument("--eager", action="store_true", help="single_card: rollout.enforce_eager (no CUDA graphs)")
    parser.add_argument("--no-compile", action="store_true",
                        help="single_card: rollout.compile=false (full decode graphs, no torch.compile)")
    parser.add_argument("--max-staleness", type=int, default=1, help="async: rollout.max_staleness")
    parser.add_argument("--smoke", action="store_true", help="async: on CPU (hf engine, a 2-layer model)")
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
            "step": lambda: part_step(workdir, args.steps, args.max_num_seqs, budgets(args.max_tokens_per_forward),
                                      args.peak_tflops),
            "sync_full": lambda: part_sync_full(workdir),
            "single_card": lambda: part_single_card(workdir, args.steps, args.four_bit, args.prompts, args.shape,
                                                    args.eager, not args.no_compile),
            "trl": lambda: part_trl(workdir, args.trl_util, args.trl_steps),
            "async": lambda: part_async(workdir, args.steps, args.max_staleness, args.max_num_seqs, args.smoke),
        }[args.part]()
        print("RESULT " + json.dumps(result), flush=True)
        return
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device}
    for part in args.parts.split(","):
        common = ["--workdir", str(workdir)]
        if part == "async":  # both schedules, same config, one process each
            for staleness in (0, 1):
                argv = ["async", "--max-staleness", str(staleness), "--steps", str(args.steps), *common,
                        *(["--smoke"] if args.smoke else [])]
                results[f"async@{staleness}"] = run_part(__file__, argv, 900, workdir / f"async@{staleness}.log")
        elif part == "trl":
            for util in args.trl_utils.split(","):
                argv = ["trl", "--trl-util", util, "--trl-steps", str(args.trl_steps), *common]
                results[f"trl@{util}"] = run_part(__file__, argv, 900, workdir / f"trl@{util}.log")
        else:
            extra = ["--max-tokens-per-forward", args.max_tokens_per_forward] if part == "step" else []
            results[part] = run_part(__file__, [part, "--steps", str(args.steps), *extra, *common], 900,
                                     workdir / f"{part}.log")
        print(json.dumps({part: results.get(part, {k: v for k, v in results.items() if k.startswith(("trl", "async"))})})[:3000],
              flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
