"""The run plot: `python -m grpo_ray.plot metrics.jsonl` writes a PNG with the four panels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_ray.plot import MISSING, panels, plot_run, read_log, series

ROOT = Path(__file__).resolve().parents[2]


def write_log(path: Path) -> Path:
    records = [{"step": 0, "eval/accuracy": 0.1}]
    records += [{"step": s, "reward": s / 10, "rewards/a": s / 20, "rewards/a_std": 0.1, "rewards/b": 1.0,
                 "kl": 0.01 * s, "completion_length": 30 + s} for s in range(1, 6)]
    records.append({"step": 5, "eval/accuracy": 0.3})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_panels_and_series(tmp_path):
    records = read_log(write_log(tmp_path / "m.jsonl"))
    assert panels(records)[0] == ("reward (total and per function)", ["reward", "rewards/a", "rewards/b"])
    assert series(records, "eval/accuracy") == ([0, 5], [0.1, 0.3])


def test_command_line_writes_a_png(tmp_path):
    log = write_log(tmp_path / "metrics.jsonl")
    done = subprocess.run([sys.executable, "-m", "grpo_ray.plot", str(log)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {tmp_path / 'metrics.png'}" in done.stdout


def test_without_matplotlib_the_message_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        plot_run([], tmp_path / "x.png")
    assert "pip install matplotlib" in MISSING
