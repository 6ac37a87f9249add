"""Distributed mode on a real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``).

Three worker nodes, each offering a custom resource that one role asks for: the rollout worker
on one, two learner ranks (one gloo group) on another, the reward worker on a third. The run
joins the cluster by address (so the project's packages travel through ``runtime_env``), syncs
weights by broadcast from learner rank 0, and must log the same per-step losses as a
single-process run with the same seed and global batch.
"""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from grpo_ray.trainer import GRPOTrainer
from tests.support.tiny import tiny_config

ROWS = [{"prompt": p} for p in ["1+2=", "33+4=", "5+", "ab", "7=", "12+12=", "9+9", "a+b="]]


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1, resources={"rollout_node": 1})
    c.add_node(num_cpus=2, resources={"learner_node": 2})
    c.add_node(num_cpus=2, resources={"reward_node": 1})
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def _shipped_packages(actor) -> list[str]:
    """The project's packages found in the py_modules the runtime_env unpacked for this actor."""
    import pathlib
    import sys

    found = [p for e in sys.path if "runtime_resources" in e and "py_modules" in e for p in pathlib.Path(e).iterdir()]
    return sorted(p.name for p in found if (p / "__init__.py").is_file())


def _train(config, inspect=None):
    trainer = GRPOTrainer(config, ROWS)
    try:
        seen = inspect(trainer) if inspect else None
        result = trainer.run()
        versions = ray.get([w.weight_version.remote() for w in trainer.actors.rollout_workers])
    finally:
        trainer.shutdown()
    return result.history, versions, seen


def test_two_learner_ranks_on_their_own_node_match_one_process(cluster, checkpoint, tmp_path):
    common = dict(run={"max_steps": 3, "ray_address": cluster.address, "mode": "distributed"})
    # one optimizer step per cycle (gradient_accumulation_steps = steps_per_generation): 16 completions
    single = tiny_config(
        checkpoint, tmp_path / "single", **common, rollout={"num_workers": 1}, reward={"num_workers": 1},
        batch={"per_device_train_batch_size": 8, "steps_per_generation": 2, "gradient_accumulation_steps": 2},
    )
    ranked = tiny_config(
        checkpoint, tmp_path / "ranked", **common,
        batch={
            "per_device_train_batch_size": 4, "steps_per_generation": 2, "gradient_accumulation_steps": 2,
            "num_processes": 2, "learner_resources": ("learner_node=1",),
        },
        rollout={"num_workers": 1, "resources": ("rollout_node=1",), "sync_backend": "collective"},
        reward={"num_workers": 1, "resources": ("reward_node=1",)},
    )
    def placement(trainer):
        a = trainer.actors
        nodes.update({
            name: n["NodeID"] for n in ray.nodes() if n["Alive"]
            for name in ("rollout_node", "learner_node", "reward_node") if name in n["Resources"]
        })
        return {
            "learner ranks": {_node_of(r) for r in a.learner_ranks},
            "rollout": {_node_of(w) for w in a.rollout_workers},
            "reward": {_node_of(w) for w in a.reward_workers},
            "shipped": ray.get(a.learner_ranks[1].__ray_call__.remote(_shipped_packages)),
        }

    nodes: dict[str, str] = {}
    def placement_and_specs(trainer):
        return placement(trainer) | {"synced": [s.name for s in trainer.weight_sync.specs]}

    history, versions, seen = _train(ranked, placement_and_specs)
    assert seen["synced"] and all("lora_" in name for name in seen["synced"])  # LoRA on: only adapter tensors
    assert seen["learner ranks"] == {nodes["learner_node"]} and len(nodes) == 3
    assert seen["rollout"] == {nodes["rollout_node"]} and seen["reward"] == {nodes["reward_node"]}
    assert seen["shipped"] == ["actors", "grpo_ray", "kernels", "recipes"]  # unpacked on the learners' node
    assert versions == [3]
    assert [r["weight_version_sampled"] for r in history] == [0, 1, 2]
    assert all(r["time/sync_check_s"] > 0 for r in history)  # the stale-weight guard passed after each sync
    reference, reference_versions, _ = _train(single)
    assert reference_versions == [3]
    for mine, ref in zip(history, reference, strict=True):
        assert mine["reward"] == ref["reward"]  # same samples (same rollout seeds)
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-4, abs=1e-6)
        assert mine["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert len({round(r["loss"], 6) for r in reference}) > 1  # the steps differ: a real comparison
