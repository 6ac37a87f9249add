"""Placement: which actor runs where. Modes are placements, not forks of the loop.

One placement group reserves a bundle per actor; the same code runs on a laptop, one GPU box
or many nodes, since Ray decides where each bundle lands. ``run.mode`` picks the shape:

- distributed: ``batch.num_processes`` learner ranks (one torch.distributed group, seen by
  the driver as one learner: :class:`~actors.learner_group.LearnerGroup`),
  ``rollout.num_workers`` rollout workers and the reward workers, each its own actor;
  weights travel through the object store or a broadcast group (:mod:`grpo_ray.weight_sync`).
  Each role's bundle asks for its custom resources (``batch.learner_resources``,
  ``rollout.resources``, ``reward.resources``), which is how roles are pinned to nodes.
- colocate: one :class:`~actors.colocated_worker.ColocatedWorker` holds the learner and the
  engine (one GPU, one copy of the base weights) and plays both roles for the driver. With
  ``rollout.max_staleness > 0`` its rollout role runs in a concurrency group of its own
  (:data:`ROLLOUT_GROUP`), so generation overlaps training in the one process.

``run.ray_address`` (or ``$RAY_ADDRESS``) joins a running cluster (``auto`` = the one ``ray
start`` made on this node) and ships the project's packages to its nodes through Ray's
``runtime_env`` (``py_modules``); otherwise a local one is started with enough logical CPUs
for the bundles.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from grpo_ray.config import TrainConfig, resource_dict

log = logging.getLogger("grpo_ray")

PLACEMENT_TIMEOUT_S = 120.0

#: The project's top-level packages, shipped to the nodes of a cluster the run joins.
PACKAGES = ("grpo_ray", "actors", "kernels", "recipes")
SHIP_EXCLUDES = ["__pycache__", "*.pyc", "outputs", ".git", ".wheelhouse"]

#: The colocated worker's concurrency group (one thread) for its rollout role, when asynchronous.
ROLLOUT_GROUP = "rollout"


@dataclass
class Actors:
    learner: Any
    rollout_workers: list[Any]  # in colocate mode: [learner], the same actor
    reward_workers: list[Any]
    placement_group: Any
    colocated: bool = False
    learner_ranks: list[Any] = field(default_factory=list)  # the actors behind ``learner`` (one, or N ranks)
    rollout_group: str | None = None  # the colocated worker's rollout concurrency group (asynchronous)

    def rollout_call(self, worker: Any, method: str) -> Any:
        """``worker.<method>`` of a rollout worker, sent to the rollout group where there is one.

        Such a call (an asynchronous colocated worker's) names the weight version it runs with;
        a distributed rollout worker runs its calls in order, with the weights last pushed."""
        bound = getattr(worker, method)
        return bound.options(concurrency_group=self.rollout_group) if self.rollout_group else bound

    def unique(self) -> list[Any]:
        """Every actor once (the colocated worker plays two roles)."""
        rollout = [] if self.colocated else self.rollout_workers
        return [*(self.learner_ranks or [self.learner]), *rollout, *self.reward_workers]


def resolve_mode(config: TrainConfig) -> str:
    """``run.mode`` with ``auto`` decided: colocate on a machine with exactly one GPU, one engine and
    one plain learner (DeepSpeed re-lays the weights out, so it cannot share the engine's)."""
    if config.run.mode != "auto":
        return config.run.mode
    import torch

    b = config.batch
    single = config.rollout.num_workers == 1 and b.num_processes == 1 and b.train_backend == "plain"
    return "colocate" if torch.cuda.device_count() == 1 and single else "distributed"


def uses_gpu(config: TrainConfig) -> bool:
    return config.rollout.backend == "vllm" or config.rollout.num_gpus_per_worker > 0


def bundles(config: TrainConfig) -> list[dict[str, float]]:
    """Resources per actor: [learner ranks (or the colocated worker)..., rollout workers..., reward workers...]."""
    r = config.rollout
    learner = ({"CPU": 1.0, "GPU": 1.0} if uses_gpu(config) else {"CPU": 1.0}) | resource_dict(config.batch.learner_resources)
    gpus = r.num_gpus_per_worker or (1.0 if r.backend == "vllm" else 0.0)
    rollout = {"CPU": r.num_cpus_per_worker} | ({"GPU": gpus} if gpus else {}) | resource_dict(r.resources)
    reward = {"CPU": float(config.reward.processes_per_worker)} | resource_dict(config.reward.resources)
    engines = [] if resolve_mode(config) == "colocate" else [rollout] * r.num_workers
    return [learner] * config.batch.num_processes + engines + [reward] * config.reward.num_workers


def runtime_env(shipped: bool) -> dict[str, Any]:
    """Environment of every actor on a cluster the run joins, with the project's packages
    (``shipped``) for its other nodes. A local cluster gets none: its actors inherit the
    driver's environment (:func:`connect`), which lets Ray hand them the worker processes it
    started in advance (a job-level ``runtime_env`` would make it start new ones)."""
    from grpo_ray.tracking import WORKER_ENV

    env: dict[str, Any] = {"env_vars": dict(WORKER_ENV)}
    if shipped:
        root = Path(__file__).resolve().parent.parent
        env["py_modules"] = [str(root / name) for name in PACKAGES]
        env["excludes"] = SHIP_EXCLUDES
    return env


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` added (unless already set) for the duration; the processes
    started meanwhile (Ray's, and so its workers) keep them."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def connect(config: TrainConfig) -> None:
    """Join ``run.ray_address`` (or ``$RAY_ADDRESS``), else start a local cluster with one logical
    CPU per core of this machine (:func:`fit_to_cluster` then shares them among the actors).

    Joining is explicit on purpose: ``address="auto"`` would also find a short-lived local
    cluster that another process on this machine happens to run.
    """
    import ray

    from grpo_ray.tracking import WORKER_ENV

    if ray.is_initialized():
        return
    address = config.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env(shipped=True), logging_level=logging.WARNING)
        log.info("joined the Ray cluster at %s", address)
        return
    num_cpus = os.cpu_count() or 1
    env = dict(WORKER_ENV)
    if not uses_gpu(config) and not _has_cuda():
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed (imported by save_pretrained) would warn that it found no GPU
    with _environment(env):  # never a neighbour's cluster: address="local"
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    log.info("Ray: started a local cluster with %d logical CPUs (the cores of this machine)", num_cpus)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def fit_to_cluster(specs: list[dict[str, float]]) -> list[dict[str, float]]:
    """The bundles, with every CPU request scaled down so that they fit when the cluster is one
    node with fewer CPUs than they ask for in total (a 2-core box running a learner, a rollout
    worker and a reward worker: the actors share the cores, as the OS would have them anyway)."""
    import ray

    needed = sum(b.get("CPU", 0.0) for b in specs)
    have = ray.cluster_resources().get("CPU", 0.0)
    if len(ray.nodes()) != 1 or needed <= have or needed == 0:
        return specs
    scale = have / needed
    return [b | ({"CPU": b["CPU"] * scale} if "CPU" in b else {}) for b in specs]


def place_actors(config: TrainConfig) -> Actors:
    """Reserve the bundles, then start one actor in each."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from actors.colocated_worker import ColocatedWorker
    from actors.learner import Learner
    from actors.learner_group import LearnerGroup
    from actors.reward_worker import RewardWorker
    from actors.rollout_worker import RolloutWorker
    from actors.train_backends import EVERY_RANK

    specs = fit_to_cluster(bundles(config))
    if uses_gpu(config) and ray.cluster_resources().get("GPU", 0) < sum(b.get("GPU", 0) for b in specs):
        raise RuntimeError(
            f"rollout.backend={config.rollout.backend!r} (run.mode={resolve_mode(config)!r}) needs "
            f"{sum(b.get('GPU', 0) for b in specs):g} GPU(s) and the Ray cluster has "
            f"{ray.cluster_resources().get('GPU', 0):g}: run on a GPU machine, or use rollout.backend='hf' "
            "with rollout.num_gpus_per_worker=0"
        )
    pg = placement_group(specs, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise RuntimeError(
            f"the Ray cluster cannot host the run's actors within {PLACEMENT_TIMEOUT_S:.0f}s: they need "
            f"{specs} and the cluster has {ray.cluster_resources()}; lower rollout.num_workers, "
            "reward.num_workers or the per-worker CPUs/GPUs"
        )

    def start(cls: type, index: int, *args: Any, restarts: int = 0, groups: dict[str, int] | None = None) -> Any:
        spec = specs[index]
        return (
            (ray.remote(concurrency_groups=groups)(cls) if groups else ray.remote(cls))
            .options(
                num_cpus=spec.get("CPU", 0.0),
                num_gpus=spec.get("GPU", 0.0),
                resources={k: v for k, v in spec.items() if k not in ("CPU", "GPU")},
                max_restarts=restarts,  # the driver retries the calls a restart interrupted
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
            )
            .remote(*args)
        )

    restarts = config.run.max_worker_restarts  # workers hold no state the driver cannot give back; the learner does
    first_reward = len(specs) - config.reward.num_workers
    reward = [
        start(RewardWorker, first_reward + i, config.reward, restarts=restarts) for i in range(config.reward.num_workers)
    ]
    if resolve_mode(config) == "colocate":
        group = ROLLOUT_GROUP if config.rollout.max_staleness else None
        worker = start(  # holds the learner: no restarts
            ColocatedWorker, 0, config, max(1, int(specs[0]["CPU"])), groups={group: 1} if group else None
        )
        return Actors(worker, [worker], reward, pg, colocated=True, rollout_group=group)
    n = config.batch.num_processes
    ranks = [start(Learner, rank, config, max(1, int(specs[rank]["CPU"])), None, rank) for rank in range(n)]
    rollout = [start(RolloutWorker, n + i, config, i, restarts=restarts) for i in range(config.rollout.num_workers)]
    if n == 1 and config.batch.train_backend == "plain":  # DeepSpeed builds its engine on a group, even of one
        return Actors(ranks[0], rollout, reward, pg, learner_ranks=ranks)
    group = LearnerGroup(ranks, EVERY_RANK[config.batch.train_backend])
    group.form()
    return Actors(group, rollout, reward, pg, learner_ranks=ranks)
