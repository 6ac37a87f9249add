"""Placement: which actor runs where. Modes are placements, not forks of the loop.

One placement group reserves a bundle per actor (learner, rollout workers, reward workers);
the same code runs on a laptop, one GPU box or many nodes, since Ray decides where each
bundle lands. ``run.ray_address`` (or ``$RAY_ADDRESS``) joins a running cluster (``auto`` =
the one ``ray start`` made on this node); otherwise a local one is started with enough
logical CPUs for the bundles.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from grpo_ray.config import TrainConfig

log = logging.getLogger("grpo_ray")

PLACEMENT_TIMEOUT_S = 120.0


@dataclass
class Actors:
    learner: Any
    rollout_workers: list[Any]
    reward_workers: list[Any]
    placement_group: Any


def bundles(config: TrainConfig) -> list[dict[str, float]]:
    """Resources per actor: [learner, rollout workers..., reward workers...]."""
    r = config.rollout
    learner = {"CPU": 1.0, "GPU": 1.0} if config.rollout.num_gpus_per_worker > 0 else {"CPU": 1.0}
    rollout = {"CPU": r.num_cpus_per_worker} | ({"GPU": r.num_gpus_per_worker} if r.num_gpus_per_worker else {})
    reward = {"CPU": float(config.reward.processes_per_worker)}
    return [learner] + [rollout] * r.num_workers + [reward] * config.reward.num_workers


def connect(config: TrainConfig) -> None:
    """Join ``run.ray_address`` (or ``$RAY_ADDRESS``), else start a local cluster that fits the bundles.

    Joining is explicit on purpose: ``address="auto"`` would also find a short-lived local
    cluster that another process on this machine happens to run.
    """
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    address = config.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=env)
        log.info("joined the Ray cluster at %s", address)
        return
    needed = sum(b.get("CPU", 0.0) for b in bundles(config))
    num_cpus = max(os.cpu_count() or 1, int(needed + 0.999))
    ray.init(num_cpus=num_cpus, runtime_env=env, include_dashboard=False)
    log.info("started a local Ray cluster with %d logical CPUs", num_cpus)


def place_actors(config: TrainConfig) -> Actors:
    """Reserve the bundles, then start one actor in each."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from actors.learner import Learner
    from actors.reward_worker import RewardWorker
    from actors.rollout_worker import RolloutWorker

    specs = bundles(config)
    pg = placement_group(specs, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise RuntimeError(
            f"the Ray cluster cannot host the run's actors within {PLACEMENT_TIMEOUT_S:.0f}s: they need "
            f"{specs} and the cluster has {ray.cluster_resources()}; lower rollout.num_workers, "
            "reward.num_workers or the per-worker CPUs/GPUs"
        )

    def start(cls: type, index: int, *args: Any, restarts: int = 0) -> Any:
        spec = specs[index]
        return (
            ray.remote(cls)
            .options(
                num_cpus=spec.get("CPU", 0.0),
                num_gpus=spec.get("GPU", 0.0),
                max_restarts=restarts,  # the driver retries the calls a restart interrupted
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
            )
            .remote(*args)
        )

    n_roll = config.rollout.num_workers
    restarts = config.run.max_worker_restarts  # workers hold no state the driver cannot give back; the learner does
    learner = start(Learner, 0, config, int(specs[0]["CPU"]))
    rollout = [start(RolloutWorker, 1 + i, config, i, restarts=restarts) for i in range(n_roll)]
    reward = [
        start(RewardWorker, 1 + n_roll + i, config.reward, restarts=restarts) for i in range(config.reward.num_workers)
    ]
    return Actors(learner, rollout, reward, pg)
