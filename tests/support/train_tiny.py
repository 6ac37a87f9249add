"""A tiny GRPO run as a program of its own, for tests that signal or kill it:

    python -m tests.support.train_tiny MODEL_DIR OUTPUT_DIR [MAX_STEPS]

It starts its own local Ray cluster (like a user's run), trains with a slow reward so a step
takes a moment, and saves a checkpoint every cycle (2 optimizer steps).
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpo_ray.trainer import GRPOTrainer
from tests.support.tiny import tiny_config

ROWS = [{"prompt": p} for p in ["1+2=", "33+4=", "5+", "ab", "7=", "12+12=", "9+9", "a+b="]]


def main() -> None:
    model, out = Path(sys.argv[1]), Path(sys.argv[2])
    max_steps = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    config = tiny_config(
        model, out,
        rollout={"num_workers": 1},
        reward={"functions": ("tests.support.reward_fns:slow_short_completion",), "num_workers": 1},
        run={"max_steps": max_steps, "save_steps": 2},
    )
    trainer = GRPOTrainer(config, ROWS)
    try:
        trainer.run()
    finally:
        trainer.shutdown()


if __name__ == "__main__":
    main()
