"""Soak: the arith recipe's GRPO phase while rollout and reward workers are killed (kill -9) at random.

    python benchmarks/soak.py [--steps 400] [--kill-every 1 4] [--seed 0] [--out soak.json]

The recipe's warm-up checkpoint, data and config (recipes/arith.py: 1 rollout and 1 reward
worker, 256 completions and 2 optimizer steps per cycle), with ``run.max_steps=--steps``,
``save_steps=20``, ``keep_last_n=2`` and ``max_worker_restarts=1000`` (the default, 10 per
worker, would end a soak this long on purpose). A thread kills a random rollout or reward worker
process every U(--kill-every) seconds while the run trains. Then the same config runs again
without kills (the reference). Reported: steps completed and whether each appears exactly once
in metrics.jsonl, whether every step's loss, reward and gradient norm equal the reference's
bit for bit, kills injected, restarts the trainer counted, wall times, and the driver's
resident memory (VmRSS, sampled every 0.25 s) after step 20, at the end, its peak, and the
least-squares slope over the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAME = ("loss", "reward", "grad_norm", "reward_std", "completion_length", "learning_rate", "weight_version")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def run(config, train, *, kill_every: tuple[float, float] | None, seed: int) -> dict:
    import ray

    from grpo_ray.trainer import GRPOTrainer

    out = Path(config.run.output_dir)
    trainer = GRPOTrainer(config, train)
    done = threading.Event()
    kills: list[dict] = []
    memory: list[tuple[float, int, float]] = []

    def killer() -> None:
        rng = random.Random(seed)
        targets = [("rollout", h) for h in trainer.actors.rollout_workers] + [("reward", h) for h in trainer.actors.reward_workers]
        while not done.wait(rng.uniform(*kill_every)):
            kind, handle = rng.choice(targets)
            try:
                pid = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
                os.kill(pid, signal.SIGKILL)
            except Exception as err:  # noqa: BLE001 - restarting: try another one next round
                print(f"  (no kill: {kind} worker unavailable: {type(err).__name__})", flush=True)
                continue
            kills.append({"kind": kind, "at_step": steps_logged(out), "t": time.monotonic()})

    def sampler() -> None:
        while not done.wait(0.25):
            memory.append((time.monotonic(), steps_logged(out), rss_mib()))

    threads = [threading.Thread(target=sampler, daemon=True)]
    if kill_every is not None:
        threads.append(threading.Thread(target=killer, daemon=True))
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        result = trainer.run()
    finally:
        done.set()
        trainer.shutdown()
    wall = time.monotonic() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "records": records, "kills": kills, "memory": memory, "steps": result.optimizer_steps}


def slope_per_100_steps(points: list[tuple[float, int, float]]) -> float:
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    from recipes.arith import DEFAULTS, NUM_TRAIN, make_problems, supervised_warmup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="grpo-soak-"))
    train = make_problems(NUM_TRAIN, seed=1)
    model = supervised_warmup(tmp / "sft", train, seed=0)

    def config(name: str):
        run_cfg = dataclasses.replace(DEFAULTS.run, output_dir=str(tmp / name), max_steps=args.steps, save_steps=20,
                                      keep_last_n=2, logging_steps=1, max_worker_restarts=1000)
        return dataclasses.replace(DEFAULTS, model=dataclasses.replace(DEFAULTS.model, name_or_path=str(model)), run=run_cfg)

    soak = run(config("soak"), train, kill_every=tuple(args.kill_every), seed=args.seed)
    reference = run(config("reference"), train, kill_every=None, seed=args.seed)

    steps = [r["step"] for r in soak["records"]]
    identical = len(soak["records"]) == len(reference["records"]) and all(
        {k: a[k] for k in SAME} == {k: b[k] for k in SAME} for a, b in zip(soak["records"], reference["records"])
    )
    settled = [m for m in soak["memory"] if m[1] >= 20] or soak["memory"]
    figures = {
        "steps_requested": args.steps,
        "steps_completed": soak["steps"],
        "each_step_once": steps == list(range(1, args.steps + 1)),
        "identical_to_kill_free_run": identical,
        "kills": len(soak["kills"]),
        "kills_rollout": sum(k["kind"] == "rollout" for k in soak["kills"]),
        "kills_reward": sum(k["kind"] == "reward" for k in soak["kills"]),
        "restarts_counted": soak["records"][-1]["total/worker_restarts"],
        "wall_s": round(soak["wall_s"], 1),
        "reference_wall_s": round(reference["wall_s"], 1),
        "driver_rss_mib_after_step_20": round(settled[0][2], 1),
        "driver_rss_mib_end": round(soak["memory"][-1][2], 1),
        "driver_rss_mib_peak": round(max(m[2] for m in soak["memory"]), 1),
        "driver_rss_slope_mib_per_100_steps": round(slope_per_100_steps(settled), 2),
        "reference_rss_mib_end": round(reference["memory"][-1][2], 1),
    }
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
