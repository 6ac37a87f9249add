"""Where metrics go: ``metrics.jsonl`` always, one console line per step, wandb/tensorboard on request."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

CONSOLE_KEYS = (
    ("reward", "reward {:.3f}"),
    ("reward_std", "±{:.3f}"),
    ("kl", "kl {:.4f}"),
    ("clip_ratio/region_mean", "clip {:.3f}"),
    ("completion_length", "len {:.1f}"),
    ("truncated_fraction", "trunc {:.2f}"),
    ("loss", "loss {:+.4f}"),
    ("grad_norm", "gnorm {:.3f}"),
)


def console_line(step: int, metrics: dict[str, Any]) -> str:
    parts = [f"step {step:>4}"]
    for key, fmt in CONSOLE_KEYS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not math.isnan(value):
            parts.append(fmt.format(value))
    return " | ".join(parts)


class MetricsLog:
    """Appends one JSON object per logged step to ``<output_dir>/metrics.jsonl``.

    ``resume_step``: a resumed run first drops the records after that step (they were logged
    by the interrupted run after its last checkpoint and are about to be redone), so the log
    holds each step once.
    """

    def __init__(
        self,
        output_dir: str,
        report_to: tuple[str, ...] = (),
        run_config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines(keepends=True) if _step_of(line) <= resume_step]
            tmp = self.path.with_name(".tmp-metrics.jsonl")
            tmp.write_text("".join(kept))
            tmp.replace(self.path)
        self.file = self.path.open("a")
        self.sinks: list[Any] = []
        if "wandb" in report_to:
            import wandb

            self.sinks.append(("wandb", wandb.init(config=run_config, dir=str(self.dir))))
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.sinks.append(("tensorboard", SummaryWriter(str(self.dir / "tensorboard"))))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        for kind, sink in self.sinks:
            if kind == "wandb":
                sink.log(numeric, step=step)
            else:
                for k, v in numeric.items():
                    sink.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        for kind, sink in self.sinks:
            sink.finish() if kind == "wandb" else sink.close()


def _step_of(line: str) -> float:
    """The step of one metrics.jsonl line; a torn last line (a killed write) counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
