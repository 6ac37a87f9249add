"""The pure GRPO path (config, advantages, loss, batching, checkpoints, guards, rewards, the async
schedule and off-policy rule) imports neither Ray nor a model stack."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import sys
import grpo_ray.loss, grpo_ray.advantages, grpo_ray.batching, grpo_ray.config, grpo_ray.cli, grpo_ray.collective
import grpo_ray.entropy_control
import grpo_ray.checkpoint, grpo_ray.trainer_state, grpo_ray.guards, grpo_ray.rewards.math, grpo_ray.rewards.pool
import grpo_ray.staleness, grpo_ray.off_policy
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "vllm", "transformers", "trl", "deepspeed"))
print(",".join(heavy))
"""


def test_pure_path_imports_no_ray():
    result = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"the pure GRPO path imported: {result.stdout.strip()}"
