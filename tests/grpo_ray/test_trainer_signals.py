"""Ctrl-C and SIGTERM: the run finishes its cycle, saves a checkpoint, shuts every actor and its
own Ray cluster down, and ends with one line saying where the checkpoint is and how to resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo_ray.checkpoint import read_trainer_state

REPO = Path(__file__).resolve().parents[2]


def descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (Ray's GCS, raylet, workers, reward pools, ...)."""
    found, stack = set(), [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    children = {int(c) for c in f.read().split()}
            except OSError:
                continue
            stack += sorted(children - found)
            found |= children
    return found


def alive(pids: set[int]) -> set[int]:
    def running(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    return {pid for pid in pids if running(pid)}


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_signal_saves_a_checkpoint_and_leaves_no_process_behind(how, checkpoint, tmp_path):
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.train_tiny", str(checkpoint), str(out)], cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )
    try:
        deadline = time.monotonic() + 300
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        tree = descendants(proc.pid)
        if how == "ctrl-c":
            signum = signal.SIGINT
            os.killpg(proc.pid, signum)  # a terminal's Ctrl-C reaches the whole foreground group
        else:
            signum = signal.SIGTERM
            os.kill(proc.pid, signum)  # what `kill` or a cluster manager sends
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err[-3000:]
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    m = re.fullmatch(rf"{name}: stopped at step (\d+)/1000; checkpoint (\S+); "
                     r"resume with --run.resume latest \(or --run.resume (\S+)\)", last)
    assert m and m.group(2) == m.group(3), last
    step, checkpoint = int(m.group(1)), Path(m.group(2))
    assert checkpoint == out / f"checkpoint-{step}" and read_trainer_state(checkpoint)["state"]["step"] == step
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, step + 1))
    assert len(tree) >= 5  # Ray's own processes and the run's actors were there
    deadline = time.monotonic() + 30
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(tree), [open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:100] for p in alive(tree)]
