"""Where metrics go: ``metrics.jsonl`` always, one console line per step, and on request
TensorBoard, wandb or SwanLab (``run.report_to``), each imported only when asked for.

The console of a command-line run (:func:`quiet_console`) shows the plan, the progress bars,
the metric lines, grpo_ray's warnings and where the outputs are; the libraries' chatter (model
card notices, weight-loading bars, accelerator probes, deprecation notices) is turned off, in
the driver and, through :data:`WORKER_ENV`, in every actor.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

CONSOLE_KEYS = (
    ("reward", "reward {:.3f}"),
    ("reward_std", "±{:.3f}"),
    ("eval/accuracy", "acc {:.1%}"),
    ("kl", "kl {:.4f}"),
    ("clip_ratio/region_mean", "clip {:.3f}"),
    ("completion_length", "len {:.1f}"),
    ("truncated_fraction", "trunc {:.2f}"),
    ("loss", "loss {:+.4f}"),
    ("grad_norm", "gnorm {:.3f}"),
    ("tokens_per_s", "{:.0f} tok/s"),
    ("time/generate_s", "gen {:.1f}s"),
    ("time/train_s", "train {:.1f}s"),
)

#: run.report_to name -> (module to import, pip package).
SINK_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "swanlab": ("swanlab", "swanlab")}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def console_line(step: int, metrics: dict[str, Any]) -> str:
    """``step 12 | reward 1.250 | ±0.410 | gsm8k_int 0.50±0.00 | acc 31.0% | ...``: the known keys
    in a fixed order, with each reward function's mean±std after the total."""
    parts = [f"step {step:>4}"]
    for key, fmt in CONSOLE_KEYS:
        value = metrics.get(key)
        if _number(value):
            parts.append(fmt.format(value))
        if key == "reward_std":
            for name, mean in metrics.items():
                if name.startswith("rewards/") and not name.endswith("_std") and _number(mean):
                    std = metrics.get(f"{name}_std")
                    parts.append(f"{name[8:]} {mean:.2f}" + (f"±{std:.2f}" if _number(std) else ""))
    return " | ".join(parts)


#: Environment of the actors' processes (set where Ray starts them; see grpo_ray.cluster): no
#: tokenizer thread pools, no weight-loading or shard-writing bars, transformers' warnings only.
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore::FutureWarning",
}

#: A stretch of text repeated at least this many times, over at least this many characters, is
#: shown once with a count on the console (samples.jsonl keeps the text whole).
REPEAT_MIN, REPEAT_MIN_CHARS = 4, 24


def squeeze_repeats(text: str) -> str:
    """``<S><S><S>...`` (53 times) -> ``<S> [x53]``: a unit of 1 to 40 characters repeated
    :data:`REPEAT_MIN` times or more in a row, over :data:`REPEAT_MIN_CHARS` characters or more, is
    shown once with its count (what a barely trained model emits). Numbers and short runs stay."""
    pattern = re.compile(r"(.{1,40}?)\1{%d,}" % (REPEAT_MIN - 1), re.S)

    def one(m: re.Match) -> str:
        run, unit = m.group(0), m.group(1)
        return run if len(run) < REPEAT_MIN_CHARS else f"{unit} [x{len(run) // len(unit)}]"

    return pattern.sub(one, text)


class _BarSafeHandler(logging.Handler):
    """Log records written above the progress bars (``tqdm.write``) instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


class _ConsoleFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def quiet_console(level: int = logging.INFO) -> None:
    """Set up a command-line run's console (see the module docstring); call once, early."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    log = logging.getLogger("grpo_ray")
    if not any(isinstance(h, _BarSafeHandler) for h in log.handlers):
        handler = _BarSafeHandler()
        handler.setFormatter(_ConsoleFormat())
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    for name, quiet in (("ray", logging.WARNING), ("ray._private.authentication", logging.ERROR)):
        logging.getLogger(name).setLevel(quiet)  # Ray's "started a local instance", its token-auth notice
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed (which save_pretrained imports) would warn it found no GPU
    try:  # each library resets its loggers when imported: import first, then quiet them
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # "Repo card metadata block was not found"
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def missing_sinks(report_to: tuple[str, ...]) -> list[str]:
    """A message for every sink in ``report_to`` whose package is not installed."""
    out = []
    for sink in report_to:
        module, package = SINK_PACKAGES[sink]
        if importlib.util.find_spec(module) is None:
            out.append(f"run.report_to names {sink!r} but the {package} package is not installed: pip install {package}")
    return out


class MetricsLog:
    """Appends one JSON object per logged step to ``<output_dir>/metrics.jsonl`` and forwards the
    numbers to the sinks named in ``report_to``.

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
        problems = missing_sinks(report_to)
        if problems:
            raise RuntimeError("; ".join(problems))
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
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.sinks.append(("tensorboard", SummaryWriter(str(self.dir / "tensorboard"))))
        if "wandb" in report_to:
            import wandb

            self.sinks.append(("wandb", wandb.init(config=run_config, dir=str(self.dir))))
        if "swanlab" in report_to:
            import swanlab

            self.sinks.append(("swanlab", swanlab.init(project="grpo-ray", config=run_config, logdir=str(self.dir / "swanlab"))))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        for kind, sink in self.sinks:
            if kind == "tensorboard":
                for k, v in numeric.items():
                    sink.add_scalar(k, v, step)
            else:
                sink.log(numeric, step=step)

    def close(self) -> None:
        self.file.close()
        for kind, sink in self.sinks:
            sink.close() if kind == "tensorboard" else sink.finish()


def _step_of(line: str) -> float:
    """The step of one metrics.jsonl line; a torn last line (a killed write) counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
