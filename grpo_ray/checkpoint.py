"""Checkpoints on disk: atomic writes, rotation, finding the one to resume, and what may change on resume.

A checkpoint is a directory ``<run.output_dir>/checkpoint-N`` holding exactly N optimizer
steps: the model (or LoRA adapter) and tokenizer as ``save_pretrained`` writes them, so it
loads like any checkpoint, plus ``learner_state.pt`` (trainable weights, gradients,
optimizer, scheduler, RNG) and ``trainer_state.json`` (the driver's
:class:`~grpo_ray.trainer_state.TrainerState` and the run's config). ``final`` is a symlink
to the last one.

A checkpoint is written into ``.tmp-checkpoint-N-<random>``, every file and the directory
fsynced, then renamed into place and the parent directory fsynced: a process killed at any
moment leaves either the whole new checkpoint or none of it, never half of one, and the
previous checkpoints untouched. Leftover ``.tmp-*`` directories are removed at the next start.

Plain files and paths only: no Ray, no model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from grpo_ray.config import ConfigError, TrainConfig

TRAINER_STATE = "trainer_state.json"
LEARNER_STATE = "learner_state.pt"
FINAL = "final"
_NAME = re.compile(r"checkpoint-(\d+)")
_STALE_PREFIXES = (".tmp-", ".old-")

#: Knobs a resumed run must share with the checkpoint: the weights' shapes and meaning, and
#: the batch plan that decides which rows each optimizer step sees. (Everything else, e.g.
#: run.max_steps, may change on resume.)
RESUME_FIELDS = (
    "model.name_or_path",
    "lora.enabled",
    "lora.r",
    "lora.alpha",
    "lora.target_modules",
    "grpo.num_generations",
    "grpo.num_iterations",
    "batch.per_device_train_batch_size",
    "batch.gradient_accumulation_steps",
    "batch.steps_per_generation",
    "batch.num_processes",
    "optim.learning_rate",  # the restored scheduler keeps the saved base learning rate
)


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path``, then every directory, deepest first."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(root: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Create ``root/name`` as a whole: ``fill(tmp)`` writes the files into a temporary
    directory, which is fsynced and renamed into place. An existing ``root/name`` is replaced
    (moved aside first, removed after)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        fsync_tree(tmp)
        old = None
        if target.exists():
            old = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        os.rename(tmp, target)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def link_final(root: Path, name: str) -> Path:
    """Point ``root/final`` at ``root/name`` (a relative symlink, replaced atomically)."""
    root = Path(root)
    tmp = root / f".tmp-{FINAL}-{uuid.uuid4().hex[:8]}"
    os.symlink(name, tmp)
    os.replace(tmp, root / FINAL)
    fsync_dir(root)
    return root / FINAL


def remove_stale(root: Path) -> list[str]:
    """Remove what a killed save left behind (``.tmp-*``, ``.old-*``); returns the names removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for entry in root.iterdir():
        if entry.name.startswith(_STALE_PREFIXES):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def step_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete ``checkpoint-N`` directories under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = _NAME.fullmatch(entry.name)
        if m and (entry / TRAINER_STATE).is_file():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def rotate(root: Path, keep_last_n: int) -> list[Path]:
    """Delete all but the newest ``keep_last_n`` step checkpoints (0 keeps all); returns those deleted."""
    if keep_last_n <= 0:
        return []
    doomed = [path for _, path in step_checkpoints(root)[:-keep_last_n]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def read_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / TRAINER_STATE).read_text())


def existing_run(output_dir: Path) -> list[str]:
    """What in ``output_dir`` shows that a run already wrote there (empty: nothing)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    names = ("metrics.jsonl", "summary.json", FINAL)
    markers = [name for name in names if (out / name).exists() or (out / name).is_symlink()]
    return markers + [path.name for _, path in step_checkpoints(out)]


def resolve_resume(resume: str, output_dir: Path) -> Path:
    """The checkpoint directory ``run.resume`` names ('latest' = newest in ``output_dir``)."""
    if resume == "latest":
        found = step_checkpoints(output_dir)
        if not found:
            raise ConfigError(
                f"run.resume='latest' is invalid: {output_dir} holds no complete checkpoint; "
                "start a fresh run (drop --run.resume) or give a checkpoint directory"
            )
        return found[-1][1]
    path = Path(resume)
    if not path.exists():
        raise ConfigError(
            f"run.resume={resume!r} is invalid: no such directory; give 'latest' or an existing checkpoint-N "
            f"directory (those in {output_dir}: {', '.join(str(p) for _, p in step_checkpoints(output_dir)) or 'none'})"
        )
    if not (path / TRAINER_STATE).is_file() or not (path / LEARNER_STATE).is_file():
        raise ConfigError(
            f"run.resume={resume!r} is invalid: not a complete checkpoint directory (it needs "
            f"{TRAINER_STATE} and {LEARNER_STATE}); give 'latest' or a checkpoint-N directory"
        )
    return path.resolve()


def resume_signature(config: TrainConfig) -> dict[str, Any]:
    """The values of :data:`RESUME_FIELDS` (``batch.steps_per_generation`` as the value in effect)."""
    out = {}
    for dotted in RESUME_FIELDS:
        section, name = dotted.split(".")
        value = getattr(getattr(config, section), name)
        if dotted == "batch.steps_per_generation":
            value = config.batch.steps_per_generation_value
        out[dotted] = list(value) if isinstance(value, tuple) else value
    return out


def check_resume_compatible(saved: TrainConfig, config: TrainConfig, where: Path) -> None:
    """Refuse a resume whose config changes a field of :data:`RESUME_FIELDS`, naming each one."""
    old, new = resume_signature(saved), resume_signature(config)
    changed = [f"{k} (checkpoint {old[k]!r}, now {new[k]!r})" for k in RESUME_FIELDS if old[k] != new[k]]
    if changed:
        raise ConfigError(
            f"cannot resume from {where}: the config changes {'; '.join(changed)}; resuming needs the "
            "same values (set them back, or start a fresh run in a new run.output_dir)"
        )
