"""What the GPU benchmarks share: the benchmark model, prompts and config, NVML memory peaks,
and running one part in a fresh process.

The config is colocate_bench's measured case (``BENCHMARKS.md``): a random-weight
Qwen2.5-shaped model in bf16, LoRA r16 on every linear layer, 64 prompts x 8 generations x up
to 256 new tokens, micro-batch 16 x 32 accumulation steps (512 completions per optimizer
step, as TRL is run), beta 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPTS, GENERATIONS, NEW_TOKENS, PROMPT_WORDS = 64, 8, 256, 48
MICRO_BATCH, ACCUMULATION = 16, 32  # 512 completions per optimizer step, as TRL is run
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def visible_devices(env: dict[str, str] | None = None) -> list[str]:
    """This process's GPUs as NVML names them (an index or a ``GPU-``/``MIG-`` UUID), in CUDA's order.

    NVML numbers the machine's devices and ignores ``CUDA_VISIBLE_DEVICES``, so this process's
    ``cuda:0`` is NVML's device named by the variable's first entry; unset, every device counts.
    """
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        import pynvml

        pynvml.nvmlInit()
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def nvml_handle(device: str) -> Any:
    """NVML's handle of a device named as :func:`visible_devices` names it."""
    import pynvml  # nvidia-ml-py

    pynvml.nvmlInit()
    if device.startswith(("GPU-", "MIG-")):
        return pynvml.nvmlDeviceGetHandleByUUID(device)
    return pynvml.nvmlDeviceGetHandleByIndex(int(device))


class NvmlPeak:
    """A device's used memory as NVML sees it, sampled every 10 ms on a thread: the whole
    process (CUDA context, cuBLAS workspace, CUDA graph pool, vLLM's own allocations), which
    torch's counters miss. The part runs alone on the card, so device-used is this process.

    ``device``: an NVML index or UUID (:func:`visible_devices`); default this process's ``cuda:0``.
    """

    def __init__(self, device: str | None = None) -> None:
        import pynvml  # nvidia-ml-py

        self.device = device if device is not None else visible_devices()[0]
        self._handle = nvml_handle(self.device)
        self._info = pynvml.nvmlDeviceGetMemoryInfo
        self.baseline = self.now()
        self.peak = self.baseline
        threading.Thread(target=self._poll, daemon=True).start()

    def now(self) -> float:
        return self._info(self._handle).used / 2**30

    def _poll(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            time.sleep(0.01)

    def take(self) -> float:
        """Peak since the last take, above the device's use before this process touched it."""
        peak, self.peak = self.peak, self.now()
        return peak - self.baseline


def checkpoint(workdir: Path, shape: str = "qwen2.5-0.5b") -> Path:
    """A random-weight checkpoint of a real shape, made once per work directory."""
    from recipes.tiny_model import random_checkpoint

    path = workdir / shape
    if not (path / "config.json").is_file():
        import torch

        random_checkpoint(shape, path)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # it was built on the GPU: leave the memory to what is measured
    return path


def prompts(n: int = PROMPTS) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(f"w{rng.randrange(100, 150000)}" for _ in range(PROMPT_WORDS)) for _ in range(n)]


def our_config(path: Path, workdir: Path, *, lora: bool = True, max_num_seqs: int | None = None):
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
        rollout=RolloutConfig(backend="vllm", num_workers=1, max_num_seqs=max_num_seqs),
        reward=RewardConfig(functions=("tests.support.reward_fns:short_completion",)),
        run=RunConfig(output_dir=str(workdir / "run"), mode="colocate", max_steps=100),
    )


#: vLLM's own start-up log lines (vLLM 0.25) and the figure each gives, in seconds or GiB.
VLLM_STARTUP_LINES = {
    "weights_load_s": r"Model loading took .*? and ([0-9.]+) seconds",
    "compile_s": r"torch\.compile took ([0-9.]+) s in total",
    "graph_capture_s": r"Graph capturing finished in ([0-9.]+) secs",
    "graph_pool_gib": r"Graph capturing finished in [0-9.]+ secs, took (-?[0-9.]+) GiB",
    "engine_core_init_s": r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+)",
}


class VllmStartupLog:
    """Reads vLLM's start-up figures (weights load, torch.compile, graph capture and its pool,
    the engine core's init) from the ``vllm`` logger while it is attached: vLLM reports them
    only as log lines."""

    def __init__(self) -> None:
        import logging
        import re

        self.found: dict[str, float] = {}
        patterns = {k: re.compile(v) for k, v in VLLM_STARTUP_LINES.items()}
        found = self.found

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                message = record.getMessage()
                for key, pattern in patterns.items():
                    match = pattern.search(message)
                    if match:
                        found[key] = float(match.group(1))

        self._handler = Handler(level=logging.INFO)
        logging.getLogger("vllm").addHandler(self._handler)

    def close(self) -> dict[str, float]:
        import logging

        logging.getLogger("vllm").removeHandler(self._handler)
        return dict(self.found)


def length_reward(completions: list, **_) -> list[float]:
    """A cheap verifiable-style reward: shorter is better (what both trainers score)."""
    return [-len(c if isinstance(c, str) else c[0]["content"]) / 1000.0 for c in completions]


def run_part(script: str | Path, argv: list[str], timeout: float, log: Path | None = None) -> dict[str, Any]:
    """``script argv`` in a fresh process; its result is the last ``RESULT {json}`` line it prints.

    Its other stdout lines are echoed as they come (progress); stderr goes to ``log`` (or is
    dropped) and its tail joins an error. A part that outlives ``timeout`` is killed with its
    whole process group (a Ray cluster it started goes with it: Ray ties its processes' fate to
    their driver) and reported as an error, so the next part finds the GPUs free.
    """
    err = open(log, "w") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, str(script), *argv], stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not line.startswith("RESULT "):
                print("  | " + line.rstrip(), flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        timed_out = True
    finally:
        if log is not None:
            err.close()
    reader.join(timeout=10)
    results = [x for x in lines if x.startswith("RESULT ")]
    if timed_out or proc.returncode or not results:
        tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
        why = f"timed out after {timeout:.0f}s" if timed_out else f"exit {proc.returncode}"
        return {"error": why, "stdout_tail": "".join(lines)[-2000:], "stderr_tail": tail}
    return json.loads(results[-1][len("RESULT "):])


#: Per-step figures of a driver run (metrics.jsonl) that the step benchmarks report.
DRIVER_KEYS = (
    "time/cycle_s", "time/rollout_s", "time/generate_s", "time/rewards_s", "time/learner_s", "time/train_s",
    "time/sync_s", "time/sync_check_s", "time/learner_wait_s", "time/rollout_held_s", "time/overlap_s",
    "async/overlap", "async/staleness",
)


def actor_gpus(actor: Any) -> str | None:
    """Run in an actor (``actor.__ray_call__.remote(actor_gpus)``): the GPUs it was given."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def run_driver(config: Any, nvml: list[Any] = ()) -> dict[str, Any]:
    """The real driver (``GRPOTrainer``) for ``config.run.max_steps`` steps on the benchmark prompts,
    then its per-step figures: the median over steps 2..N of :data:`DRIVER_KEYS` (the step
    ``time/cycle_s``; each phase's busy time, the engine's ``time/generate_s`` and the learner's
    ``time/train_s``; the waits; ``async/overlap`` = time both were busy / step time), the step
    against its longer phase, and the staleness histogram (completions per staleness, all steps)."""
    import shutil
    import statistics

    import ray

    from grpo_ray.trainer import GRPOTrainer

    out = Path(config.run.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    rows = [{"prompt": p} for p in prompts(config.batch.effective_batch_size // config.grpo.num_generations)]
    started = time.perf_counter()
    trainer = GRPOTrainer(config, rows)
    try:
        init_s = time.perf_counter() - started
        roles = {"learner": trainer.actors.learner, "engine": trainer.actors.rollout_workers[0]}
        gpus = {role: ray.get(a.__ray_call__.remote(actor_gpus)) for role, a in roles.items()}
        print(f"  driver {config.run.mode} max_staleness={config.rollout.max_staleness}: actors up in {init_s:.1f}s "
              f"on CUDA_VISIBLE_DEVICES {gpus}", flush=True)
        trainer.run()
    finally:
        trainer.shutdown()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r["step"] >= 1]
    later = records[1:] or records
    median = {k: statistics.median(r[k] for r in later) for k in DRIVER_KEYS if all(k in r for r in later)}
    longer = max(median["time/generate_s"], median["time/train_s"])
    histogram = {k.rsplit("/", 1)[1]: sum(r[k] for r in records) for k in records[0] if k.startswith("async/staleness_hist/")}
    return {
        "mode": config.run.mode, "max_staleness": config.rollout.max_staleness, "lora": config.lora.enabled,
        "init_s": init_s, "cuda_visible_devices": gpus, "median_of_steps": [r["step"] for r in later],
        "median": median, "step_over_longer_phase": median["time/cycle_s"] / longer if longer else None,
        "staleness_histogram": histogram,
        "steps": [{"step": r["step"], **{k: r.get(k) for k in DRIVER_KEYS}, "completion_length": r["completion_length"],
                   "weight_version_sampled": r["weight_version_sampled"]} for r in records],
        "nvml_peak_gib": {p.device: p.take() for p in nvml},
    }
