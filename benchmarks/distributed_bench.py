"""Distributed mode on two GPUs of one host: weight-sync time over NCCL, and the step time beside colocate mode.

    python benchmarks/distributed_bench.py all --out results.json      # every part, one process each (~15 min)
    python benchmarks/distributed_bench.py all --parts sync            # or step; --steps 3 is shorter
    python benchmarks/distributed_bench.py step --mode distributed --max-staleness 1   # one step part
    python benchmarks/distributed_bench.py all --smoke                 # CPU: every code path at toy sizes

Random-weight Qwen2.5-shaped models (``recipes.tiny_model.random_checkpoint``), bf16, placed
as a run places them (``grpo_ray.cluster.place_actors``, ``run.mode='distributed'``): the
learner on one GPU, one vLLM rollout worker on the other (``num_gpus=1`` each), weights sent
by ``CollectiveSync`` (learner rank 0 broadcasts over NCCL in ``rollout.sync_bucket_mb``
buckets). Every vLLM engine runs with ``rollout.enforce_eager=True`` (no CUDA graphs: a start
takes seconds, not ~100 s; decoding is slower). Each part runs in its own process with a
timeout; one that fails or hangs is recorded as an error and the rest go on.

* sync (one process per shape: qwen2.5-0.5b, qwen2.5-1.5b): for full weights, then LoRA r16
  on every linear layer (two engines: a LoRA engine takes adapters only), the time of one
  push (``time/sync_s``: learner -> NCCL -> every tensor loaded in the engine) after a first
  push that forms the group, median of ``--pushes``, the bytes moved and GB/s, and where a
  push's time goes (:data:`PUSH_STAGES`: the learner's export and send, the engine's receive
  and load, each timed inside its actor). Then correctness: the learner's weights are
  perturbed, the stale-weight probe (``rollout.sync_check``) shows the gap before the push,
  and after it the gap and the guard's verdict.
* step (one process per item of :data:`STEP_ITEMS`): the real driver (``GRPOTrainer``) on
  colocate_bench's config (64 prompts x 8 generations x up to 256 new tokens, LoRA r16,
  micro-batch 16 x 32 accumulation: one optimizer step per cycle, beta 0) for ``--steps``
  optimizer steps, in ``run.mode='distributed'`` (collective sync, the guard on; learner and
  engine on one GPU each) and ``'colocate'`` (one GPU), at ``rollout.max_staleness`` 0 (the
  synchronous loop: rollout, rewards, learner, sync in turn), 1 and 2 (the rollout of the next
  cycles runs while the learner trains); the 1.5B shape at 1, LoRA and full. Per item, the
  median over steps 2..N of the step (``time/cycle_s``), each phase's busy time (the engine's
  ``time/generate_s``, the learner's ``time/train_s``), the waits (``time/learner_wait_s``: the
  learner for a rollout; ``time/rollout_held_s``: the engine for the weights its rollout is due
  with), the overlap achieved (``async/overlap`` = time both were busy / step time) and the
  step against its longer phase; the staleness histogram over the steps.

``--smoke`` runs the same code on CPU: the hf engine, gloo, the 2-layer ``small`` shape in
float32, 16 completions of 8 tokens per step, no NVML.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    NvmlPeak, actor_gpus, checkpoint, nvml_handle, our_config, run_driver, run_part, visible_devices,
)

SHAPES = ("qwen2.5-0.5b", "qwen2.5-1.5b")
SMOKE_SHAPE = "small"
STEP_SHAPE = "qwen2.5-0.5b"
MODES = ("distributed", "colocate")
#: The step part's runs: (run.mode, rollout.max_staleness, shape, LoRA), in the order they run.
STEP_ITEMS = (
    ("distributed", 0, STEP_SHAPE, True), ("distributed", 1, STEP_SHAPE, True), ("distributed", 2, STEP_SHAPE, True),
    ("colocate", 0, STEP_SHAPE, True), ("colocate", 1, STEP_SHAPE, True),
    ("distributed", 1, "qwen2.5-1.5b", True), ("distributed", 1, "qwen2.5-1.5b", False),
)
SMOKE_STEP_ITEMS = (("distributed", 0, SMOKE_SHAPE, True), ("distributed", 1, SMOKE_SHAPE, True),
                    ("colocate", 1, SMOKE_SHAPE, True))
SYNC_TIMEOUT_S = 60.0
PART_TIMEOUT_S = {"sync": 300, "step": 480}


def step_name(mode: str, max_staleness: int, shape: str, lora: bool) -> str:
    """``distributed-s1``, ``distributed-s1-qwen2.5-1.5b-full``: a step item's key in the results."""
    extra = "" if shape in (STEP_SHAPE, SMOKE_SHAPE) else f"-{shape}"
    return f"{mode}-s{max_staleness}{extra}{'' if lora else '-full'}"


def bench_config(
    path: Path, out: Path, *, lora: bool, mode: str, smoke: bool, steps: int = 100, sync_check: bool = True,
    max_num_seqs: int | None = None, max_staleness: int = 0,
):
    """colocate_bench's config in ``mode`` with eager vLLM and the collective sync; CPU-sized with ``smoke``."""
    base = our_config(path, out.parent, lora=lora)
    r, g, b = base.rollout, base.grpo, base.batch
    rollout = dataclasses.replace(
        r, enforce_eager=True, sync_backend="collective", sync_check=sync_check, sync_timeout_s=SYNC_TIMEOUT_S,
        max_num_seqs=max_num_seqs, max_staleness=max_staleness,
    )
    model = base.model
    if smoke:
        rollout = dataclasses.replace(rollout, backend="hf", num_gpus_per_worker=0.0)
        model = dataclasses.replace(model, dtype="float32", gradient_checkpointing=False)
        g = dataclasses.replace(g, num_generations=4, max_completion_length=8)
        b = dataclasses.replace(b, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    return dataclasses.replace(
        base, rollout=rollout, model=model, grpo=g, batch=b,
        run=dataclasses.replace(base.run, mode=mode, max_steps=steps, output_dir=str(out)),
    )


# -- functions run inside the actors (``__ray_call__``) ------------------------------------------


#: Where a push's time goes: (actor, label, object on the actor, attribute) timed in place. The
#: rest of a push's time is the driver's Ray calls and the wait of whichever side is first.
PUSH_STAGES = (
    ("learner", "export", "backend", "full_weights"),  # the tensors to send, found on the learner
    ("learner", "send", "collective", "send"),  # header + buckets over the group, until sent
    ("engine", "receive", "collective", "receive"),  # header + buckets, until received
    ("engine", "engine_load", "engine", "update_weights"),  # the engine takes them (GPU work waited for)
)


def _time_stages(actor: Any, role: str) -> None:
    """Wrap this actor's :data:`PUSH_STAGES` to record each call's seconds (GPU work waited for)."""
    import importlib

    import torch

    actor.bench_times = {}
    for who, label, path, attr in PUSH_STAGES:
        if who != role:
            continue
        owner = importlib.import_module("grpo_ray.collective") if path == "collective" else getattr(actor, path)
        inner = getattr(owner, attr)
        times = actor.bench_times.setdefault(label, [])

        def timed(*args: Any, _inner: Any = inner, _times: list[float] = times, **kwargs: Any) -> Any:
            started = time.perf_counter()
            out = _inner(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            _times.append(time.perf_counter() - started)
            return out

        setattr(owner, attr, timed)


def _stage_times(actor: Any) -> dict[str, list[float]]:
    return actor.bench_times


def _perturb(learner: Any, lora: bool) -> None:
    """Move the learner's weights so the engine's stale copy shows: random LoRA B matrices (zero
    at the start), or noise of half the initialiser's std on the embeddings (full weights). Mild,
    so the logits keep their scale and the synced gap stays kernel rounding."""
    import torch

    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in learner.policy.named_parameters():
            if lora and ".lora_B." in name:
                p.copy_(torch.randn_like(p) * 0.05)
            elif not lora and name.endswith(("lm_head.weight", "embed_tokens.weight")):
                p.add_(torch.randn_like(p) * 0.01)


# -- parts ---------------------------------------------------------------------------------------


def _gap(sync: Any) -> float:
    import ray

    expected = ray.get(sync.learner.policy_logprobs.remote(sync.probe))
    seen = ray.get(sync.rollout_workers[0].sampler_logprobs.remote(sync.probe))
    return float((seen - expected).abs().mean())


def measure_sync(config: Any, pushes: int) -> dict[str, Any]:
    """One learner and one rollout worker placed as a run places them; push timings and the probe."""
    import ray

    from grpo_ray.cluster import connect, place_actors
    from grpo_ray.weight_sync import StaleWeightsError, make_weight_sync

    connect(config)
    started = time.perf_counter()
    actors = place_actors(config)
    try:
        ray.get([a.__ray_ready__.remote() for a in actors.unique()])
        init_s = time.perf_counter() - started
        learner, worker = actors.learner, actors.rollout_workers[0]
        sync = make_weight_sync(config, actors)
        gpus = {"learner": ray.get(learner.__ray_call__.remote(actor_gpus)),
                "engine": ray.get(worker.__ray_call__.remote(actor_gpus))}
        print(f"    actors up in {init_s:.1f}s on CUDA_VISIBLE_DEVICES {gpus}, sync backend {sync.backend}", flush=True)
        ray.get([learner.__ray_call__.remote(_time_stages, "learner"), worker.__ray_call__.remote(_time_stages, "engine")])
        t = time.perf_counter()
        sync.push()
        first_s = time.perf_counter() - t  # forms the group (NCCL connects) and sends
        times = []
        for _ in range(pushes):
            sync.push()
            times.append(sync.timings["time/sync_s"])
        stages = {**ray.get(learner.__ray_call__.remote(_stage_times)), **ray.get(worker.__ray_call__.remote(_stage_times))}
        # the first push's calls left out (it formed the group; weight_specs also exported once)
        stages = {label: statistics.median(t[-pushes:]) for label, t in stages.items()}
        nbytes = sum(s.nbytes for s in sync.specs)
        median = statistics.median(times)
        ray.get(learner.__ray_call__.remote(_perturb, config.lora.enabled))
        stale = _gap(sync)
        version = sync.push()
        t = time.perf_counter()
        try:
            sync.check(version)
            verdict = "passed"
        except StaleWeightsError as err:
            verdict = f"failed: {err}"
        check_s = time.perf_counter() - t
        return {
            "sync_s": median, "all_s": times, "first_push_s": first_s, "engine_load_s": stages["engine_load"],
            "stages_s": stages,
            "bytes": nbytes, "tensors": len(sync.specs), "gb_per_s": nbytes / median / 1e9,
            "bucket_mb": config.rollout.sync_bucket_mb, "backend": sync.backend, "actors_init_s": init_s,
            "cuda_visible_devices": gpus, "probe_gap_stale": stale, "probe_gap_synced": _gap(sync),
            "tolerance": sync.tolerance, "sync_check": verdict, "sync_check_s": check_s,
        }
    finally:
        try:
            ray.get([w.close.remote() for w in actors.reward_workers], timeout=30)
        finally:
            for actor in actors.unique():
                ray.kill(actor)
            ray.util.remove_placement_group(actors.placement_group)


def part_sync(workdir: Path, shape: str, smoke: bool, pushes: int) -> dict[str, Any]:
    path = checkpoint(workdir, shape)
    out: dict[str, Any] = {}
    for kind in ("full", "lora"):
        print(f"  sync {shape} {kind}: placing the learner and the rollout worker", flush=True)
        config = bench_config(path, workdir / f"sync-{shape}-{kind}", lora=kind == "lora", mode="distributed",
                              smoke=smoke, sync_check=False, max_num_seqs=16)  # a small engine: it only loads weights
        try:
            out[kind] = measure_sync(config, pushes)
        except Exception as err:  # noqa: BLE001 - recorded; the other kind still runs
            out[kind] = {"error": f"{type(err).__name__}: {err}"[:3000]}
        print("  " + json.dumps({kind: out[kind]})[:1500], flush=True)
    return out


def part_step(
    workdir: Path, mode: str, smoke: bool, steps: int, max_staleness: int = 0, shape: str | None = None,
    lora: bool = True,
) -> dict[str, Any]:
    shape = shape or (SMOKE_SHAPE if smoke else STEP_SHAPE)
    path = checkpoint(workdir, shape)
    out = workdir / f"step-{step_name(mode, max_staleness, shape, lora)}"
    config = bench_config(path, out, lora=lora, mode=mode, smoke=smoke, steps=steps, max_staleness=max_staleness)
    nvml = [] if smoke else [NvmlPeak(d) for d in visible_devices()]
    return {"shape": shape, **run_driver(config, nvml)}


# -- driver --------------------------------------------------------------------------------------


def device_name(smoke: bool) -> str:
    if smoke:
        return "cpu (smoke)"
    import pynvml

    names = [pynvml.nvmlDeviceGetName(nvml_handle(d)) for d in visible_devices()]
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    return f"{len(names)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The figures side by side: sync seconds per (shape, kind), step seconds per mode."""
    table: dict[str, Any] = {}
    for shape, kinds in results.get("sync", {}).items():
        if "error" in kinds:
            table[f"sync {shape}"] = "error"
            continue
        for kind, r in kinds.items():
            table[f"sync {shape} {kind}"] = "error" if "error" in r else {
                "s": round(r["sync_s"], 4), "GB/s": round(r["gb_per_s"], 2), "MB": round(r["bytes"] / 1e6, 1),
                "guard": r["sync_check"][:6], "gap_stale": round(r["probe_gap_stale"], 4),
                "gap_synced": round(r["probe_gap_synced"], 4),
                **{f"{label}_ms": round(1e3 * v, 1) for label, v in r["stages_s"].items()},
            }
    for name, r in results.get("step", {}).items():
        table[f"step {name}"] = "error" if "error" in r else {
            **{k.split("/")[1]: round(v, 2) for k, v in r["median"].items()},
            "step/longer_phase": round(r["step_over_longer_phase"], 2), "staleness": r["staleness_histogram"],
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", default="all", choices=["all", "sync", "step"])
    parser.add_argument("--parts", default="sync,step")
    parser.add_argument("--shape", help="sync: the model shape (one process each)")
    parser.add_argument("--mode", choices=MODES, help="step: the placement (one process each)")
    parser.add_argument("--max-staleness", type=int, default=0, help="step: rollout.max_staleness")
    parser.add_argument("--step-shape", default=None, help="step: the model shape (default: qwen2.5-0.5b, smoke: small)")
    parser.add_argument("--full", action="store_true", help="step: full fine-tuning instead of LoRA")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="CPU: hf engine, gloo, a 2-layer model, tiny batches")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or ("/tmp/distributed-bench-smoke" if args.smoke else "/tmp/distributed-bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.part == "sync":
        print("RESULT " + json.dumps(part_sync(workdir, args.shape, args.smoke, args.pushes)), flush=True)
        return
    if args.part == "step":
        result = part_step(workdir, args.mode, args.smoke, args.steps, args.max_staleness, args.step_shape, not args.full)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device_name(args.smoke),
        "smoke": args.smoke, "enforce_eager": True, "steps": args.steps, "pushes": args.pushes,
    }
    common = ["--workdir", str(workdir), *(["--smoke"] if args.smoke else [])]
    started = time.perf_counter()
    for part in args.parts.split(","):
        results[part] = {}
        items = ([SMOKE_SHAPE] if args.smoke else SHAPES) if part == "sync" else (SMOKE_STEP_ITEMS if args.smoke else STEP_ITEMS)
        for entry in items:
            if part == "sync":
                item, flag = entry, ["--shape", entry, "--pushes", str(args.pushes)]
            else:
                mode, staleness, shape, lora = entry
                item = step_name(mode, staleness, shape, lora)
                flag = ["--mode", mode, "--max-staleness", str(staleness), "--step-shape", shape, "--steps", str(args.steps),
                        *([] if lora else ["--full"])]
            t = time.perf_counter()
            print(f"{part} {item}: running (timeout {PART_TIMEOUT_S[part]}s)", flush=True)
            results[part][item] = run_part(__file__, [part, *flag, *common], PART_TIMEOUT_S[part], workdir / f"{part}-{item}.log")
            print(f"{part} {item}: done in {time.perf_counter() - t:.0f}s"
                  + (f" with error {results[part][item]['error']}" if "error" in results[part][item] else ""), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))
    results["total_s"] = time.perf_counter() - started
    results["summary"] = summary(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1), flush=True)
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
