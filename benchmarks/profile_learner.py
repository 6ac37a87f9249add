"""Profile one colocated GRPO step, rollout then learner, under torch.profiler; the learner's MFU.

    python benchmarks/profile_learner.py --out DIR                       # GPU: colocate_bench's step config
    python benchmarks/profile_learner.py --out DIR --max-tokens-per-forward 32768
    PYTHONPATH=OLD_TREE python benchmarks/profile_learner.py --out DIR   # the same, on another tree's code
    python benchmarks/profile_learner.py --smoke --out DIR               # CPU: hf engine, 2-layer model

The worker is ``benchmarks/common.py``'s colocated step (vLLM engine, Qwen2.5-0.5B shape, LoRA
r16, 64 prompts x 8 generations x 256 tokens, micro-batch 16 x 32, gradient checkpointing,
bf16). After ``--warmup`` unprofiled steps and one timed step without the profiler, one step
runs under torch.profiler (CPU and CUDA activity, rollout and learner profiled apart). Written
into ``--out``:

* ``learner_cuda.txt``, ``learner_cpu.txt``, ``rollout_cuda.txt``, ``rollout_cpu.txt``:
  ``key_averages()`` tables sorted by self device time and by self CPU time;
* ``learner_trace.json.gz``: the chrome trace (chrome://tracing, ui.perfetto.dev) of the first
  ``--trace-seconds`` of the learner phase (a whole phase is hundreds of MB);
* ``summary.json``: seconds per phase (profiled and not), micro-steps, rows and tokens, the
  learner's FLOPs (:func:`learner_flops`) and its model-FLOPs utilisation against
  ``--peak-tflops``, kernel launches and host synchronisations counted by the profiler, GPU
  busy time, torch's peak memory in the learner phase, and which tree's code ran.

It uses only what grpo-ray had at commit ba8bf6e (``ColocatedWorker``, ``generate``,
``train_generation``, ``sync_weights``, ``benchmarks/common.py``), so one script profiles the
code before and after a change: this file puts its own repository at the END of ``sys.path``,
so a tree named by ``PYTHONPATH`` is the one imported (``summary.json`` names it).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: an older tree given there wins

#: Input and output features of each LoRA target, as functions of the model's shape.
LORA_TARGET_DIMS = {
    "q_proj": lambda s: (s.hidden, s.heads * s.head_dim),
    "k_proj": lambda s: (s.hidden, s.kv_heads * s.head_dim),
    "v_proj": lambda s: (s.hidden, s.kv_heads * s.head_dim),
    "o_proj": lambda s: (s.heads * s.head_dim, s.hidden),
    "gate_proj": lambda s: (s.hidden, s.intermediate),
    "up_proj": lambda s: (s.hidden, s.intermediate),
    "down_proj": lambda s: (s.intermediate, s.hidden),
}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """A Llama/Qwen2-style decoder: what its FLOPs depend on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int

    @staticmethod
    def of(hf_config) -> "ModelShape":
        heads = hf_config.num_attention_heads
        return ModelShape(
            hidden=hf_config.hidden_size, intermediate=hf_config.intermediate_size,
            layers=hf_config.num_hidden_layers, heads=heads,
            kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads, vocab=hf_config.vocab_size,
            head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
        )


def learner_flops(
    shape: ModelShape,
    rows: list[tuple[int, int]],
    *,
    lora_r: int | None,
    lora_targets: tuple[str, ...] = (),
    gradient_checkpointing: bool,
    iterations: int = 1,
    no_grad_passes: int = 0,
) -> dict[str, float]:
    """FLOPs of the learner on one generation batch: ``iterations`` (``num_iterations``)
    training passes over ``rows`` (``(prompt_tokens, completion_tokens)`` of each completion,
    real tokens, no padding) and ``no_grad_passes`` forward-only passes (old / reference
    logprobs).

    Per row, with ``L`` = prompt + completion tokens and ``C`` completion tokens (a multiply-add
    is 2 FLOPs; ``q = heads x head_dim``, ``kv = kv_heads x head_dim``)::

        linear    = 2 x W x L,   W = layers x (H q + 2 H kv + q H + 3 H I)   (the decoder's GEMMs)
        attention = 2 x layers x 2 x q x L (L + 1) / 2   (Q K^T and A V over the causal pairs)
        head      = 2 x V x H x C   (logits only where a completion token is scored)
        adapters  = 2 x layers x r x sum over LoRA targets of (in + out) x L

        forward   = sum over rows of (linear + attention + head + adapters)
        backward  = 2 x forward                                   full fine-tuning
                  = linear + head + 2 x attention + 2 x adapters  LoRA: frozen weights get no
                                                                  weight-gradient GEMM
        recompute = linear + attention + adapters  with gradient checkpointing (each decoder
                                                   layer's forward again in backward), else 0
        model     = iterations x (forward + backward) + no_grad_passes x forward
        executed  = model + iterations x recompute

    Model-FLOPs utilisation (MFU) divides ``model`` by time x peak; hardware FLOPs utilisation
    (HFU) divides ``executed``. Not counted: norms, rotary embeddings, softmax, elementwise
    work, the embedding lookup, and the loss kernel's own recomputation of logits in its
    backward (benchmarks/loss_bench.py counts those).
    """
    s = shape
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    weights = s.layers * (s.hidden * q + 2 * s.hidden * kv + q * s.hidden + 3 * s.hidden * s.intermediate)
    unknown = [t for t in lora_targets if t not in LORA_TARGET_DIMS]
    if unknown:
        raise ValueError(f"no shape known for LoRA targets {unknown}; known: {sorted(LORA_TARGET_DIMS)}")
    adapter_width = sum(sum(LORA_TARGET_DIMS[t](s)) for t in lora_targets) if lora_r else 0
    linear = attention = head = adapters = 0.0
    for prompt, completion in rows:
        length = prompt + completion
        linear += 2.0 * weights * length
        attention += 2.0 * s.layers * 2 * q * length * (length + 1) / 2
        head += 2.0 * s.vocab * s.hidden * completion
        adapters += 2.0 * s.layers * (lora_r or 0) * adapter_width * length
    forward = linear + attention + head + adapters
    backward = 2 * forward if not lora_r else linear + head + 2 * attention + 2 * adapters
    recompute = linear + attention + adapters if gradient_checkpointing else 0.0
    model = iterations * (forward + backward) + no_grad_passes * forward
    return {"forward": forward, "backward": backward, "recompute": recompute, "model": model,
            "executed": model + iterations * recompute}


def trim_trace(events: list[dict], seconds: float) -> list[dict]:
    """The chrome-trace events of the first ``seconds`` (from the first timed event), with
    every metadata event."""
    timed = [e for e in events if "ts" in e and e.get("ph") != "M"]
    if not timed:
        return events
    start = min(float(e["ts"]) for e in timed)
    end = start + seconds * 1e6
    return [e for e in events if e.get("ph") == "M" or "ts" not in e or float(e["ts"]) <= end]


#: Profiler event names that launch GPU work, and that block the host on the device.
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def profile_counts(averages) -> dict[str, float]:
    """Kernel launches, host syncs, copies and device time from ``key_averages()`` (device time
    summed over the device's own events, as the profiler's table totals it)."""
    from torch.autograd import DeviceType

    calls = {e.key: e.count for e in averages}
    on_device = [e for e in averages if e.device_type != DeviceType.CPU and not e.is_user_annotation]
    return {
        "kernel_launches": sum(calls.get(k, 0) for k in LAUNCHES),
        "host_syncs": sum(calls.get(k, 0) for k in SYNCS),
        "memcpy_calls": calls.get("cudaMemcpyAsync", 0) + calls.get("cudaMemcpy", 0),
        "kernel_s": sum(e.self_device_time_total for e in on_device) / 1e6,
    }


def write_tables(prof, out: Path, phase: str, rows: int) -> dict[str, float]:
    averages = prof.key_averages()
    (out / f"{phase}_cuda.txt").write_text(averages.table(sort_by="self_device_time_total", row_limit=rows))
    (out / f"{phase}_cpu.txt").write_text(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    return profile_counts(averages)


# -- the run -------------------------------------------------------------------------------------


def profile_config(workdir: Path, smoke: bool, max_tokens_per_forward: int | None):
    from benchmarks.common import checkpoint, our_config

    config = our_config(checkpoint(workdir, "small" if smoke else "qwen2.5-0.5b"), workdir, lora=True)
    if smoke:  # every code path on CPU at toy sizes: hf engine, float32, 8 prompts x 4 x 8 tokens
        config = dataclasses.replace(
            config,
            rollout=dataclasses.replace(config.rollout, backend="hf", num_gpus_per_worker=0.0),
            model=dataclasses.replace(config.model, dtype="float32"),
            grpo=dataclasses.replace(config.grpo, num_generations=4, max_completion_length=8),
            batch=dataclasses.replace(config.batch, per_device_train_batch_size=8, gradient_accumulation_steps=4),
        )
    if max_tokens_per_forward is not None:
        if not any(f.name == "max_tokens_per_forward" for f in dataclasses.fields(config.batch)):
            raise SystemExit("--max-tokens-per-forward: this tree's BatchConfig has no max_tokens_per_forward")
        config = dataclasses.replace(
            config, batch=dataclasses.replace(config.batch, max_tokens_per_forward=max_tokens_per_forward)
        )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the tables, trace and summary.json")
    parser.add_argument("--workdir", default="/tmp/colocate-bench",
                        help="checkpoint and run directory (shared with colocate_bench)")
    parser.add_argument("--smoke", action="store_true", help="CPU: hf engine, 2-layer model, toy batch")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled steps first (compile, allocator, autotuning)")
    parser.add_argument("--max-tokens-per-forward", type=int, default=None,
                        help="batch.max_tokens_per_forward (trees that have it); default: the config's (auto)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the device's dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--trace-seconds", type=float, default=1.0,
                        help="learner seconds kept in the chrome trace; 0: no trace (exporting a whole phase's "
                             "events first takes a minute or two on the old, launch-bound learner)")
    parser.add_argument("--rows", type=int, default=60, help="rows of each key_averages table")
    args = parser.parse_args()
    out, workdir = Path(args.out), Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoConfig

    import actors.colocated_worker
    from actors.colocated_worker import ColocatedWorker
    from benchmarks.common import GENERATIONS, length_reward, prompts
    from grpo_ray.advantages import compute_advantages

    cuda = torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    config = profile_config(workdir, args.smoke, args.max_tokens_per_forward)
    g = config.grpo.num_generations
    texts = prompts(8) if args.smoke else prompts()
    started = time.perf_counter()
    worker = ColocatedWorker(config)
    worker.sync_weights()
    init_s = time.perf_counter() - started

    def rollout(cycle: int):
        batch = worker.generate(texts, num_generations=g, seed=cycle)
        batch.rewards = torch.tensor(length_reward(batch.completions)).unsqueeze(1)
        batch.advantages = compute_advantages(batch.rewards, g)
        return batch

    def timed(fn, *a, **kw):
        sync()
        t = time.perf_counter()
        result = fn(*a, **kw)
        sync()
        return result, time.perf_counter() - t

    cycle = 0
    for _ in range(args.warmup):
        worker.train_generation(rollout(cycle), cycle)
        worker.sync_weights()
        cycle += 1
    batch, rollout_plain_s = timed(rollout, cycle)  # one step without the profiler: the honest times
    _, learner_plain_s = timed(worker.train_generation, batch, cycle)
    worker.sync_weights()
    cycle += 1

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as rollout_prof:
        batch, rollout_s = timed(rollout, cycle)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with profile(activities=activities) as learner_prof:
        metrics, learner_s = timed(worker.train_generation, batch, cycle)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    worker.sync_weights()

    rollout_counts = write_tables(rollout_prof, out, "rollout", args.rows)
    learner_counts = write_tables(learner_prof, out, "learner", args.rows)
    if args.trace_seconds > 0:
        raw = out / "learner_trace.json"
        learner_prof.export_chrome_trace(str(raw))
        trace = json.loads(raw.read_text())
        trace["traceEvents"] = trim_trace(trace.get("traceEvents", []), args.trace_seconds)
        with gzip.open(out / "learner_trace.json.gz", "wt") as f:
            json.dump(trace, f)
        raw.unlink()

    c = config
    lengths = list(zip(batch.prompt_mask.sum(1).tolist(), batch.completion_mask.sum(1).tolist()))
    shape = ModelShape.of(AutoConfig.from_pretrained(c.model.name_or_path))
    needs_old = c.batch.gradient_accumulation_steps % (c.batch.steps_per_generation_value * c.grpo.num_iterations) != 0
    flops = learner_flops(
        shape, lengths, lora_r=c.lora.r if c.lora.enabled else None,
        lora_targets=c.lora.target_modules if c.lora.enabled else (),
        gradient_checkpointing=c.model.gradient_checkpointing, iterations=c.grpo.num_iterations,
        no_grad_passes=int(needs_old) + int(c.grpo.beta > 0),
    )
    peak = args.peak_tflops * 1e12
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tree": str(Path(actors.colocated_worker.__file__).resolve().parents[1]),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "max_tokens_per_forward": getattr(c.batch, "max_tokens_per_forward", "absent (the tree predates it)"),
        "per_device_train_batch_size": c.batch.per_device_train_batch_size,
        "gradient_accumulation_steps": c.batch.gradient_accumulation_steps,
        "init_s": init_s,
        "rollout_s": rollout_plain_s, "learner_s": learner_plain_s,
        "rollout_s_profiled": rollout_s, "learner_s_profiled": learner_s,
        "micro_steps": c.batch.steps_per_generation_value * c.grpo.num_iterations,
        "optimizer_steps": sum(1 for m in metrics if not m.get("partial_window")),
        "rows": len(lengths), "prompt_tokens": sum(p for p, _ in lengths),
        "completion_tokens": sum(t for _, t in lengths),
        "tflop": {k: v / 1e12 for k, v in flops.items()},
        "peak_tflops": args.peak_tflops,
        "learner_model_tflops_per_s": flops["model"] / learner_plain_s / 1e12,
        "learner_mfu": flops["model"] / (learner_plain_s * peak),
        "learner_hfu": flops["executed"] / (learner_plain_s * peak),
        "learner_profile": learner_counts | {"gpu_busy_fraction": learner_counts["kernel_s"] / learner_s},
        "rollout_profile": rollout_counts,
        "torch_peak_learner_gib": peak_gib,
        "loss": [m.get("loss") for m in metrics],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("RESULT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
