"""The arith recipe, shortened for CI: with a fixed seed, GRPO must raise accuracy and reward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from recipes.arith import exact_sum_reward, main

ROOT = Path(__file__).resolve().parents[2]


def test_exact_sum_reward():
    assert exact_sum_reward(["1+2="] * 3, ["3", " 3\n", "4"], answer=["3", "3", "3"]) == [1.0, 1.0, 0.0]


def test_short_grpo_phase_raises_accuracy_and_reward(tmp_path):
    out = tmp_path / "arith"
    try:
        summary = main(["--run.max_steps", "400", "--run.output_dir", str(out), "--run.logging_steps", "1"])
    finally:
        ray.shutdown()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[0]["eval/accuracy"] == summary["accuracy_before"]  # pre-GRPO eval
    steps = records[1:]
    assert [r["step"] for r in steps] == list(range(1, 401))
    assert steps[-1]["eval/accuracy"] == summary["accuracy_after"]
    first, last = steps[:50], steps[-50:]
    mean = lambda rows: sum(r["reward"] for r in rows) / len(rows)  # noqa: E731
    assert mean(last) > mean(first) + 0.1, (mean(first), mean(last))
    assert summary["accuracy_after"] > summary["accuracy_before"] + 0.1, summary
    assert (out / "final" / "model.safetensors").is_file()


def test_an_unknown_reward_fails_before_the_warm_up_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "arith"
    with pytest.raises(SystemExit) as info:
        main(["--reward.functions", "nosuchreward", "--run.output_dir", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "supervised warm-up" not in capsys.readouterr().out
    assert err.startswith("python -m recipes.arith: error: reward.functions: reward function 'nosuchreward' is not registered")
    assert not out.exists()


def test_a_second_run_into_the_same_output_dir_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "arith"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(SystemExit):
        main(["--run.output_dir", str(out)])
    assert "already holds a run (metrics.jsonl): continue it with --run.resume latest" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]  # no sft/, nothing overwritten


def test_a_missing_model_path_is_one_line_without_a_traceback(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "recipes.arith", "--model.name_or_path", "/nonexistent", "--run.output_dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "python -m recipes.arith: error: model.name_or_path='/nonexistent': no such directory; "
        "give a checkpoint directory (one with config.json) or a hub id"
    ]
