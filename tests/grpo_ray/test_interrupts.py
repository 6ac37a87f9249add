"""Ctrl-C before the GRPO loop, and a run that fails inside it, through real subprocesses: one
line on stderr, and nothing the run started left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m recipes.gsm8k"


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    """The command in a session of its own, so that a Ctrl-C can go to its whole process group
    (what a terminal sends), its output read as it comes."""
    return subprocess.Popen(
        [sys.executable, "-u", "-m", *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        errors="replace", env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True,
    )


def ctrl_c_when(proc: subprocess.Popen, ready, timeout_s: float = 300) -> tuple[str, str, list[int]]:
    """Send SIGINT to the process group once ``ready(stdout, stderr, descendants)`` holds; returns
    (stdout, stderr, the descendants seen just before)."""
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, b=b: b.extend(iter(lambda: s.read(1), "")), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout_s
    tree: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            tree = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        if ready("".join(out), "".join(err), tree):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the moment to interrupt it:\n" + "".join(err)[-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    for r in readers:
        r.join(timeout=10)
    return "".join(out), "".join(err), tree


def left_running(pids: list[int], grace_s: float = 60) -> list[str]:
    """The processes of ``pids`` still alive after ``grace_s`` (Ray's dashboard agent notices its
    raylet is gone by polling: on a loaded 2-core box that took more than 15 s once)."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for pid in pids:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive


def last_line_only(err: str, expected_start: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert lines and lines[-1].startswith(expected_start), err[-3000:]
    assert sum(line.startswith(PROG) for line in lines) == 1, err[-3000:]
    return lines[-1]


def test_ctrl_c_during_the_sft_warm_up(tmp_path):
    proc = start(["recipes.gsm8k", "--tiny", "--sft.steps", "100000"], tmp_path)
    _, err, tree = ctrl_c_when(proc, lambda out, err, tree: "SFT warm-up:" in err and "loss=" in err)
    assert proc.returncode == 130
    line = last_line_only(err, f"{PROG}: interrupted during the SFT warm-up")
    assert "stopped every process it started" in line
    assert left_running(tree) == []


def test_ctrl_c_while_the_actors_start(tmp_path):
    proc = start(["recipes.gsm8k", "--tiny", "--sft.steps", "0"], tmp_path)
    # Ray is up and its workers are being started for the actors (several processes below the run)
    _, err, tree = ctrl_c_when(proc, lambda out, err, tree: "generation cycle:" in out and len(tree) >= 4)
    assert proc.returncode == 130
    last_line_only(err, f"{PROG}: interrupted during the start of Ray and the actors")
    assert tree and left_running(tree) == []


def test_a_reward_function_breaking_its_contract_is_one_line_with_the_traceback_logged(checkpoint, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(4)))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "grpo_ray", "train", "--model.name_or_path", str(checkpoint), "--data.dataset", str(data),
         "--data.prompt_column", "question", "--data.chat_template", "none", "--data.eval_split", "none",
         "--reward.functions", "tests.support.reward_fns:one_score_short", "--grpo.num_generations", "4",
         "--grpo.max_completion_length", "4", "--batch.per_device_train_batch_size", "8", "--run.max_steps", "1",
         "--run.output_dir", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert run.returncode == 1
    lines = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("GRPO")]
    assert "Traceback" not in run.stderr and "RayTaskError" not in run.stderr, run.stderr[-3000:]
    assert lines[-1] == (
        "python -m grpo_ray train: error: an actor failed after step 0: RewardContractError: reward function "
        "'tests.support.reward_fns:one_score_short' returned 7 scores for 8 completions; a reward function must "
        "return one float (or None) per completion. No checkpoint was saved (run.save_steps sets how often one is); "
        f"full traceback in {out / 'error.log'}"
    ), run.stderr[-3000:]
    assert "Traceback" in (out / "error.log").read_text() and "RewardContractError" in (out / "error.log").read_text()
