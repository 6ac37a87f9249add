"""The run plot: `python -m grpo_ray.plot metrics.jsonl` writes a PNG of what a user looks at first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_ray.plot import MISSING, draw, panels, plot_run, read_log, series

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
    shown = panels(records)
    assert [p.keys for p in shown] == [["reward"], ["rewards/a", "rewards/b"], ["eval/accuracy"], ["completion_length"], ["kl"]]
    assert series(records, "eval/accuracy") == ([0, 5], [0.1, 0.3])


def test_what_the_figure_shows(tmp_path):
    records = [r for r in read_log(write_log(tmp_path / "m.jsonl"))]
    no_kl = [{k: v for k, v in r.items() if k != "kl"} for r in records]  # grpo.beta = 0 logs none
    fig = draw(no_kl)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in axes]
    assert len(axes) == 4 and not any("KL" in t for t in titles)  # no empty KL panel
    total, per_function, accuracy, length = axes
    assert [line.get_label() for line in total.get_lines()] == ["reward"]  # the total has a panel of its own
    assert [line.get_label() for line in per_function.get_lines()] == ["a", "b"]
    assert list(accuracy.get_lines()[0].get_ydata()) == pytest.approx([10.0, 30.0])  # % as the console prints
    assert accuracy.get_ylim() == (0, 100) and accuracy.yaxis.get_major_formatter()(30, 0) == "30%"
    assert length.get_ylim()[0] == 0  # from zero: 31 -> 35 tokens is not drawn as a swing
    for ax in axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())  # whole optimizer steps
    assert len([ax for ax in draw(records).axes if ax.get_visible()]) == 5  # KL when the log has it


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
