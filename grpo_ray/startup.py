"""Start-up checks of `python -m grpo_ray train`: each failure is one line naming the knob and the fix.

They run before any model weight is loaded or any Ray actor starts: the output directory is
writable, the model is a local checkpoint or reachable on the Hub, the dataset can be read and
has the named columns, the asked-for metric sinks and GGUF converter are installed. With no Hub
access a hub name fails at once (no retries, no network traceback) and says what to pass instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from grpo_ray.config import ConfigError, DataConfig, ExportConfig, ModelConfig


class StartupError(ConfigError):
    """A run that cannot start; the message is one line naming the cause and the fix (the CLI's
    ``user_errors`` turns it into ``PROG: error: ...`` and exit status 2)."""


@lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (False under ``HF_HUB_OFFLINE=1``)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
        return True
    except OSError:
        return False


def _looks_like_hub_id(name: str) -> bool:
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and not name.endswith((".json", ".jsonl"))


def check_writable(path: str) -> Path:
    """``run.output_dir`` can be created and written, proved without leaving anything behind: a
    file is created (and removed) in the nearest directory that exists."""
    out = Path(path).expanduser()
    existing = next(p for p in (out, *out.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        raise StartupError(f"run.output_dir={path!r} is not writable ({err.strerror or err}): pick another directory") from None
    return out


def check_model(model: ModelConfig, hint: str = "") -> None:
    """``model.name_or_path`` loads: the trainer's check, after a fast one for a hub id with no Hub
    in reach (no retries, no network traceback; says what to pass instead)."""
    from transformers import AutoConfig

    from grpo_ray.trainer import check_model_path

    name = model.name_or_path
    if name and not Path(name).expanduser().exists() and _looks_like_hub_id(name) and not hub_reachable():
        try:
            AutoConfig.from_pretrained(name, trust_remote_code=model.trust_remote_code, local_files_only=True)
        except (OSError, ValueError):
            raise StartupError(
                f"model.name_or_path={name!r} is not a local directory, not in the Hugging Face cache, and the Hub "
                f"cannot be reached from here: pass a local checkpoint directory with --model.name_or_path PATH{hint}"
            ) from None
    check_model_path(model)


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {first}"[:300]


def load_split(data: DataConfig, source: str, split: str, knob: str, hint: str = "") -> Any:
    """One split of a dataset (hub name, local directory or file) as a ``datasets.Dataset``."""
    from grpo_ray.data import load_prompt_dataset

    instead = f"pass a local directory or JSON/JSONL/CSV/Parquet file with --{knob} PATH{hint}"
    if not source:
        raise StartupError(f"{knob} is empty: {instead}")
    local = Path(source).expanduser()
    if not local.exists():
        if not _looks_like_hub_id(source):
            raise StartupError(f"{knob}={source!r}: no such file or directory; {instead}")
        if not hub_reachable():
            raise StartupError(f"{knob}={source!r} is not a local path and the Hub cannot be reached from here: {instead}")
    kwargs = {"name": data.subset} if data.subset and not local.exists() else {}
    try:
        return load_prompt_dataset(str(local) if local.exists() else source, split=split, **kwargs)
    except Exception as err:  # datasets wraps parse errors in several types; report the root cause
        cause = _root_cause(err)
        if "split" in cause.lower() and split in cause:
            raise StartupError(f"{knob}={source!r} has no split {split!r} ({cause}): set the split knob") from None
        raise StartupError(f"{knob}={source!r} cannot be read: {cause}") from None


def check_columns(dataset: Any, data: DataConfig, source: str) -> None:
    """The prompt column (and the answer column, when one is named) exist."""
    columns = list(dataset.column_names)
    for knob in ("prompt_column", "answer_column"):
        name = getattr(data, knob)
        if name is not None and name not in columns:
            raise StartupError(
                f"data.{knob}={name!r}: {source!r} has no such column (columns: {', '.join(columns)}); "
                f"set --data.{knob}"
            )
    if len(dataset) == 0:
        raise StartupError(f"{source!r} has no rows")


def find_gguf_converter(export: ExportConfig) -> Path | None:
    """llama.cpp's ``convert_hf_to_gguf.py``: in ``export.llama_cpp``, ``$LLAMA_CPP_DIR``, or on PATH."""
    root = export.llama_cpp or os.environ.get("LLAMA_CPP_DIR")
    if root:
        script = Path(root).expanduser() / "convert_hf_to_gguf.py"
        return script if script.is_file() else None
    found = shutil.which("convert_hf_to_gguf.py")
    return Path(found) if found else None


GGUF_MISSING = (
    "GGUF export needs llama.cpp's convert_hf_to_gguf.py (and `pip install gguf`): clone "
    "llama.cpp and pass --export.llama_cpp DIR (or set $LLAMA_CPP_DIR); the merged model is exported without it"
)
