"""A reward function living in another Ray actor, found by name: ``"actor://NAMESPACE/NAME"``.

Starts a local Ray cluster, a named ``LengthJudge`` actor in namespace ``rewards`` (in a real
run it may be a GPU reward model on another node, started by another job), and a
``RewardWorker`` whose config names it next to the built-in math verifier.
Run:  python examples/remote_reward_actor.py
"""

from __future__ import annotations

import os
import sys

import ray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actors.reward_worker import RewardWorker  # noqa: E402
from grpo_ray.config import RewardConfig  # noqa: E402


@ray.remote
class LengthJudge:
    """Scores shorter completions higher; any actor with ``score(prompts, completions, **columns)`` works."""

    def score(self, prompts, completions, **columns):
        return [1.0 / (1.0 + len(c)) for c in completions]


def main() -> None:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": repo}})
    judge = LengthJudge.options(name="judge", namespace="rewards").remote()
    config = RewardConfig(functions=("math", "actor://rewards/judge"), processes_per_worker=1, timeout_s=30.0)
    worker = ray.remote(RewardWorker).remote(config)
    scores = ray.get(worker.score.remote(["What is 6 x 3?"] * 2, ["\\boxed{18}", "It is 17"], {"answer": ["18", "18"]}))
    print(dict(zip(ray.get(worker.names.remote()), zip(*scores))))
    ray.get(worker.close.remote())
    del judge
    ray.shutdown()


if __name__ == "__main__":
    main()
