"""Collective weight sync on a real local Ray cluster: a rollout worker killed or stalled during a
sync is named within rollout.sync_timeout_s (never a hang), and a worker Ray restarted rejoins."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from grpo_ray.trainer import GRPOTrainer
from grpo_ray.weight_sync import CollectiveSync, WeightSyncError
from tests.support.tiny import tiny_config

ROWS = [{"prompt": p} for p in ["1+2=", "33+4=", "5+", "ab", "7=", "12+12=", "9+9", "a+b="]]
TIMEOUT_S = 4.0


def _trainer(checkpoint, tmp_path, restarts: int, lora: bool = True) -> GRPOTrainer:
    config = tiny_config(
        checkpoint, tmp_path / "run", rollout={"num_workers": 2, "sync_backend": "collective", "sync_timeout_s": TIMEOUT_S},
        reward={"num_workers": 1}, run={"max_worker_restarts": restarts}, lora={"enabled": lora},
    )
    return GRPOTrainer(config, ROWS)


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


@pytest.mark.parametrize("fault, needle", [(signal.SIGKILL, "rollout worker 1 died"), (signal.SIGSTOP, "rollout worker 1 did not finish")])
def test_a_killed_or_stalled_worker_is_named_within_the_timeout(cluster, checkpoint, tmp_path, fault, needle):
    trainer = _trainer(checkpoint, tmp_path, restarts=0)
    pid = _pid(trainer.actors.rollout_workers[1])
    try:
        os.kill(pid, fault)
        started = time.monotonic()
        with pytest.raises(WeightSyncError, match=needle) as info:
            trainer.sync_weights()
        assert time.monotonic() - started < TIMEOUT_S + 3
        assert "rollout worker 0" not in str(info.value).split(";")[0]  # the culprit comes first
    finally:
        if fault == signal.SIGSTOP:
            os.kill(pid, signal.SIGCONT)
        trainer.shutdown()


def test_full_weights_reach_a_restarted_worker_through_a_new_group(cluster, checkpoint, tmp_path):
    """Full fine-tuning sends every weight (LoRA runs only the adapters: test_cluster_multinode);
    a worker Ray restarted is re-synced and the group formed again, and the run goes on."""
    trainer = _trainer(checkpoint, tmp_path, restarts=1, lora=False)
    try:
        assert isinstance(trainer.weight_sync, CollectiveSync)
        names = [s.name for s in trainer.weight_sync.specs]
        assert not any("lora_" in n for n in names) and any(n.endswith("embed_tokens.weight") for n in names)
        os.kill(_pid(trainer.actors.rollout_workers[1]), signal.SIGKILL)
        result = trainer.run()  # the rollout call fails, Ray restarts the worker, it is re-synced, the group re-formed
        versions = ray.get([w.weight_version.remote() for w in trainer.actors.rollout_workers])
    finally:
        trainer.shutdown()
    assert result.optimizer_steps == 3 and versions == [3, 3]
    assert result.history[-1]["total/worker_restarts"] == 1
    assert [r["weight_version_sampled"] for r in result.history] == [0, 0, 2]
    assert all(r["time/sync_check_s"] > 0 for r in result.history)  # the engines hold the learner's weights
