"""grpo_ray.checkpoint: atomic writes (kill -9 mid-save), rotation, finding the checkpoint to
resume from, and refusing a resume whose config changes what the checkpoint depends on."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from grpo_ray.checkpoint import (
    LEARNER_STATE, TRAINER_STATE, check_resume_compatible, existing_run, link_final, remove_stale, resolve_resume,
    rotate, step_checkpoints, write_atomic,
)
from grpo_ray.config import ConfigError, TrainConfig
from tests.support.tiny import tiny_checkpoint, tiny_config

REPO = Path(__file__).resolve().parents[2]


def fake_checkpoint(root: Path, step: int) -> Path:
    def fill(tmp: Path) -> None:
        (tmp / TRAINER_STATE).write_text(json.dumps({"state": {"step": step}}))
        (tmp / LEARNER_STATE).write_bytes(b"x")

    return write_atomic(root, f"checkpoint-{step}", fill)


def test_write_atomic_replaces_as_a_whole_and_cleans_up_after_a_failure(tmp_path):
    fake_checkpoint(tmp_path, 1)
    assert step_checkpoints(tmp_path) == [(1, tmp_path / "checkpoint-1")]

    def fails(tmp: Path) -> None:
        (tmp / "half").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path, "checkpoint-1", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # untouched, no leftovers
    write_atomic(tmp_path, "checkpoint-1", lambda tmp: (tmp / TRAINER_STATE).write_text("{}"))
    assert sorted(p.name for p in (tmp_path / "checkpoint-1").iterdir()) == [TRAINER_STATE]  # replaced whole


def test_rotation_final_link_stale_leftovers_and_existing_runs(tmp_path):
    assert existing_run(tmp_path / "nothing") == [] and existing_run(tmp_path) == []
    for step in (2, 4, 6, 8):
        fake_checkpoint(tmp_path, step)
    assert [p.name for p in rotate(tmp_path, 2)] == ["checkpoint-2", "checkpoint-4"]
    assert rotate(tmp_path, 0) == []
    link_final(tmp_path, "checkpoint-8")
    assert (tmp_path / "final").resolve() == (tmp_path / "checkpoint-8").resolve()
    (tmp_path / ".tmp-checkpoint-10-abcd").mkdir()
    (tmp_path / "checkpoint-12").mkdir()  # no trainer state: not a checkpoint
    assert remove_stale(tmp_path) == [".tmp-checkpoint-10-abcd"]
    assert [s for s, _ in step_checkpoints(tmp_path)] == [6, 8]
    assert existing_run(tmp_path) == ["final", "checkpoint-6", "checkpoint-8"]
    assert resolve_resume("latest", tmp_path) == tmp_path / "checkpoint-8"
    assert resolve_resume(str(tmp_path / "checkpoint-6"), tmp_path) == (tmp_path / "checkpoint-6").resolve()


def test_resume_targets_that_are_not_checkpoints_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="run.resume='latest' is invalid: .* holds no complete checkpoint"):
        resolve_resume("latest", tmp_path)
    with pytest.raises(ConfigError, match="not a complete checkpoint directory"):
        resolve_resume(str(tmp_path), tmp_path)


@pytest.mark.parametrize("section, field, value", [
    ("model", "name_or_path", "/other/model"),
    ("lora", "r", 8),
    ("grpo", "num_generations", 4),
    ("batch", "per_device_train_batch_size", 32),
    ("batch", "steps_per_generation", 2),
    ("optim", "learning_rate", 1e-5),
])
def test_resume_breaking_changes_are_refused_naming_the_field(tmp_path, section, field, value):
    saved = TrainConfig()
    changed = dataclasses.replace(saved, **{section: dataclasses.replace(getattr(saved, section), **{field: value})})
    with pytest.raises(ConfigError, match=rf"the config changes {section}\.{field} \(checkpoint .*, now {value!r}\)"):
        check_resume_compatible(saved, changed, tmp_path)


def test_changes_that_keep_resume_exact_or_harmless_are_allowed(tmp_path):
    saved = TrainConfig()
    later = dataclasses.replace(saved, run=dataclasses.replace(saved.run, max_steps=500, save_steps=10, keep_last_n=3))
    check_resume_compatible(saved, later, tmp_path)
    same_plan = dataclasses.replace(saved, batch=dataclasses.replace(saved.batch, steps_per_generation=1))
    check_resume_compatible(saved, same_plan, tmp_path)  # None means gradient_accumulation_steps (1)


KILLED_MID_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from actors.learner import Learner
    from grpo_ray.checkpoint import TRAINER_STATE, write_atomic
    from tests.support.tiny import tiny_config

    root = Path(sys.argv[2])
    learner = Learner(tiny_config(Path(sys.argv[1]), root))

    def save(tmp):
        learner.save_state(str(tmp))
        (tmp / TRAINER_STATE).write_text("{}")

    write_atomic(root, "checkpoint-1", save)
    print("saved", flush=True)
    for p in learner.params:  # move the weights, then die halfway through saving them
        p.data.add_(1.0)
    learner.version = 2

    def killed(tmp):
        learner.save_state(str(tmp))
        os.kill(os.getpid(), signal.SIGKILL)

    write_atomic(root, "checkpoint-2", killed)
""")


def test_kill_9_mid_save_leaves_the_previous_checkpoint_intact_and_loadable(tmp_path):
    from actors.learner import Learner

    model = tiny_checkpoint(tmp_path / "tiny")
    root = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(model), str(root)], cwd=REPO,
                           capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert child.returncode == -9 and "saved" in child.stdout, child.stderr
    assert [s for s, _ in step_checkpoints(root)] == [1] and not (root / "checkpoint-2").exists()
    assert [name.startswith(".tmp-checkpoint-2-") for name in remove_stale(root)] == [True]
    learner = Learner(tiny_config(model, root))
    before = {n: p.detach().clone() for n, p in learner.policy.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in learner.params:
            p.add_(3.0)
    assert learner.load_state(str(root / "checkpoint-1")) == 0
    after = {n: p for n, p in learner.policy.named_parameters() if p.requires_grad}
    assert all(torch.equal(before[n], after[n]) for n in before)
