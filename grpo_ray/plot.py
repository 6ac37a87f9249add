"""A PNG of a run from its metrics log: the total reward, the reward per function, eval accuracy
in %, completion length (from 0), and KL when the run computed it (grpo.beta > 0).

    python -m grpo_ray.plot outputs/gsm8k/metrics.jsonl            # writes outputs/gsm8k/metrics.png
    python -m grpo_ray.plot run.jsonl -o curves.png

matplotlib is an optional extra (``pip install matplotlib``); it is imported only here.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Panel:
    """One panel: its title, the keys drawn, and how its y axis reads."""

    title: str
    keys: list[str]
    percent: bool = False  # values are fractions shown as % (0-100)
    from_zero: bool = False  # the y axis starts at 0, so that noise is not drawn as swings
    band: str | None = None  # a key whose values are drawn as a +-band around the first key


def panels(records: list[dict[str, Any]]) -> list[Panel]:
    """What a user looks at first: the total reward, each reward function's mean, eval accuracy
    (in %), completion length, and KL only when the log has it (grpo.beta > 0)."""
    names = sorted({k for r in records for k in r if k.startswith("rewards/") and not k.endswith("_std")})
    out = [
        Panel("total reward (mean ± std over the batch)", ["reward"], band="reward_std"),
        Panel("reward per function (mean)", names),
        Panel("eval accuracy (greedy pass@1, %)", ["eval/accuracy"], percent=True, from_zero=True),
        Panel("completion length (tokens)", ["completion_length"], from_zero=True),
    ]
    if series(records, "kl")[0]:
        out.append(Panel("KL to the reference", ["kl"], from_zero=True))
    return out


def draw(records: list[dict[str, Any]], title: str = "") -> Any:
    """The figure of :func:`panels` (matplotlib, Agg); a panel with no data says so."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    chosen = panels(records)
    rows = math.ceil(len(chosen) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.5 * rows), constrained_layout=True, squeeze=False)
    for ax in axes.flat[len(chosen):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, chosen):
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        scale = 100.0 if panel.percent else 1.0
        drawn = []
        for key in panel.keys:
            steps, values = series(records, key)
            if not steps:
                continue
            values = [v * scale for v in values]
            drawn.extend(values)
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=key.removeprefix("rewards/"))
            if panel.band:
                band = dict(zip(*series(records, panel.band)))
                lo = [v - band.get(s, 0.0) for s, v in zip(steps, values)]
                hi = [v + band.get(s, 0.0) for s, v in zip(steps, values)]
                ax.fill_between(steps, lo, hi, alpha=0.2, label="± std")
        if not drawn:
            ax.text(0.5, 0.5, f"no {panel.keys[0] if panel.keys else 'reward function'} in this log", ha="center",
                    va="center", transform=ax.transAxes, color="gray")
        elif len(panel.keys) > 1 or panel.band:
            ax.legend(fontsize=7)
        if panel.percent:
            ax.yaxis.set_major_formatter(PercentFormatter(100))
            ax.set_ylim(0, 100)
        elif panel.from_zero and drawn:
            ax.set_ylim(0, max(drawn) * 1.1 or 1.0)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_run(records: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Draw :func:`panels` into ``out`` (PNG)."""
    fig = draw(records, title)
    import matplotlib.pyplot as plt

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
