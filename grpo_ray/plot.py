"""A PNG of a run from its metrics log: reward per function, eval accuracy, KL, completion length.

    python -m grpo_ray.plot outputs/gsm8k/metrics.jsonl            # writes outputs/gsm8k/metrics.png
    python -m grpo_ray.plot run.jsonl -o curves.png

matplotlib is an optional extra (``pip install matplotlib``); it is imported only here.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

MISSING = "the plot needs matplotlib, which is not installed: pip install matplotlib (or pip install -e '.[plot]')"


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the records that hold a finite number for it."""
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def panels(records: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(title, keys) of each panel: the total and per-function rewards, accuracy, KL, length."""
    names = sorted({k for r in records for k in r if k.startswith("rewards/") and not k.endswith("_std")})
    return [
        ("reward (total and per function)", ["reward", *names]),
        ("eval accuracy (greedy pass@1)", ["eval/accuracy"]),
        ("KL to the reference", ["kl"]),
        ("completion length (tokens)", ["completion_length"]),
    ]


def plot_run(records: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Draw the four panels into ``out`` (PNG); a panel with no data says so."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (name, keys) in zip(axes.flat, panels(records)):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("optimizer step")
        drawn = 0
        for key in keys:
            steps, values = series(records, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=key.removeprefix("rewards/"))
                drawn += 1
        if drawn == 0:
            note = " (grpo.beta = 0 computes none)" if keys[0] == "kl" else ""
            ax.text(0.5, 0.5, f"no {keys[0]} in this log{note}", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif len(keys) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m grpo_ray.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="a metrics.jsonl written by a run")
    parser.add_argument("-o", "--output", type=Path, help="PNG to write (default: beside the log, .png)")
    args = parser.parse_args(argv)
    if not args.log.is_file():
        parser.error(f"{args.log}: no such file")
    out = plot_run(read_log(args.log), args.output or args.log.with_suffix(".png"), title=str(args.log))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
