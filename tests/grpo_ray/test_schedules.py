"""grpo_ray.schedules gives transformers' get_scheduler values without importing it (start-up)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo_ray.schedules import make_scheduler

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup, total", [(0, 10), (3, 10), (10, 10), (2, 1)])
def test_same_learning_rates_and_state_as_transformers(kind, warmup, total):
    from transformers import get_scheduler

    def lrs(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        sched = make(kind, opt, num_warmup_steps=warmup, num_training_steps=total)
        out = []
        for _ in range(total + 2):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out, sched.state_dict()

    (ours, state), (theirs, their_state) = lrs(make_scheduler), lrs(get_scheduler)
    assert ours == theirs  # exactly: the same formulas
    assert state.keys() == their_state.keys() and state["last_epoch"] == their_state["last_epoch"]


def test_a_learner_starts_without_importing_peft_or_bitsandbytes(checkpoint):
    code = (
        "import sys; from tests.support.tiny import tiny_config; from actors.learner import Learner; "
        f"Learner(tiny_config({str(checkpoint)!r}, '/tmp/unused', lora={{'enabled': False}})); "
        "print(sorted(m for m in ('peft', 'bitsandbytes', 'transformers.optimization') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"  # transformers.get_scheduler imported all three (seconds)
