"""Start-up of a run: every check once, in one order, before Ray starts; each failure is one line
naming the knob and the fix (the CLI's ``user_errors`` prints it as ``PROG: error: ...``).

One module owns start-up. :func:`prepare` is `python -m grpo_ray train`'s (and the recipes'):

    output dir writable -> metric sinks -> answer format -> eval judge -> reward functions resolve
    -> engine / learner backend / 4-bit packages -> output dir holds no run, or the resume
    checkpoint fits -> model loads -> data reads (columns, the eval's rows) -> the recipe's own
    files (its model checked like a given one) -> tokenizer and chat template -> prompts -> the
    columns the reward functions need

and :func:`preflight` is the subset a library user's ``GRPOTrainer(config, rows)`` runs. Both
return a :class:`Checked`, which the trainer takes instead of checking again. With no Hub
access a hub name fails at once (no retries, no network traceback) and says what to pass instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import socket
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from grpo_ray.checkpoint import check_resume_compatible, existing_run, read_trainer_state, resolve_resume
from grpo_ray.config import ConfigError, DataConfig, ExportConfig, ModelConfig, TrainConfig


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
    """``model.name_or_path`` names a local checkpoint directory, or a hub id that loads (a hub id
    with no Hub in reach and nothing cached fails at once and says what to pass instead)."""
    from transformers import AutoConfig

    name = model.name_or_path
    flag = f"model.name_or_path={name!r}"
    if not name:
        raise StartupError(f"model.name_or_path is empty: give a checkpoint directory or hub id (--model.name_or_path PATH){hint}")
    path = Path(name).expanduser()
    if not path.exists() and (name.startswith(("/", ".", "~")) or name.count("/") > 1):
        raise StartupError(f"{flag}: no such directory; give a checkpoint directory (one with config.json) or a hub id")
    if path.is_dir() and not (path / "config.json").is_file():
        raise StartupError(f"{flag}: the directory has no config.json; give the directory save_pretrained wrote")
    offline = not path.exists() and _looks_like_hub_id(name) and not hub_reachable()
    try:
        AutoConfig.from_pretrained(name, trust_remote_code=model.trust_remote_code, local_files_only=offline)
    except (OSError, ValueError) as err:
        if offline:
            raise StartupError(
                f"{flag} is not a local directory, not in the Hugging Face cache, and the Hub cannot be reached from "
                f"here: pass a local checkpoint directory with --model.name_or_path PATH{hint}"
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "a local directory" if path.is_dir() else "not a local directory, and as a hub id"
        raise StartupError(f"{flag} does not load ({where}: {first}); give a checkpoint directory or a reachable hub id") from None


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
    library_log = logging.getLogger("datasets")
    level = library_log.level
    library_log.setLevel(logging.CRITICAL)  # it logs a parse error before raising it: the user would read it twice
    try:
        return load_prompt_dataset(str(local) if local.exists() else source, split=split, **kwargs)
    except Exception as err:  # datasets wraps parse errors in several types; report the root cause
        cause = _root_cause(err)
        if "split" in cause.lower() and split in cause:
            raise StartupError(f"{knob}={source!r} has no split {split!r} ({cause}): set the split knob") from None
        bad = first_bad_json_line(local) if local.is_file() else None
        if bad is not None:
            raise StartupError(f"{knob}={source!r} cannot be read: {bad}; fix that line") from None
        raise StartupError(f"{knob}={source!r} cannot be read: {cause}") from None
    finally:
        library_log.setLevel(level)


def first_bad_json_line(path: Path) -> str | None:
    """Where a JSON/JSONL file stops parsing (``line 7: Expecting ',' delimiter (column 31)``), or
    None when it parses (or is not JSON); the datasets library's own error never names the line."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        return None
    text = path.read_text(errors="replace")
    try:
        json.loads(text)
        return None  # one JSON document
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("[") or path.suffix.lower() == ".json" and "\n" not in text.strip():
            return f"line {err.lineno}: {err.msg} (column {err.colno})"
    for number, line in enumerate(text.splitlines(), 1):  # JSON Lines: one object per line
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number}: {err.msg} (column {err.colno})"
    return None


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


# -- the checks of the trainer's own prerequisites -----------------------------------------------


def check_judge(config: TrainConfig) -> None:
    """``eval.judge`` resolves."""
    from grpo_ray.rewards import RewardResolutionError, resolve

    try:
        resolve(config.eval.judge)
    except RewardResolutionError as err:
        raise StartupError(f"eval.judge: {str(err).splitlines()[0]}") from None


def check_reward_names(config: TrainConfig) -> list[Callable[..., Any]]:
    """Every ``reward.functions`` entry resolves; returns the functions (for the column check)."""
    from grpo_ray.rewards import RewardResolutionError, resolve

    if not config.reward.functions:
        raise StartupError("reward.functions is empty: name at least one reward function (--reward.functions NAME)")
    functions = []
    for spec in config.reward.functions:
        try:
            functions.append(resolve(spec))
        except RewardResolutionError as err:
            raise RewardResolutionError(f"reward.functions: {err}") from None
    return functions


def check_reward_columns(config: TrainConfig, functions: Sequence[Callable[..., Any]], rows: Sequence[dict[str, Any]]) -> None:
    """The training rows have every column the reward functions ask for by name."""
    from grpo_ray.rewards.registry import required_columns

    if not len(rows):
        return
    have = set(rows[0])
    for spec, fn in zip(config.reward.functions, functions):
        missing = [c for c in required_columns(fn) if c not in have]
        if missing:
            raise StartupError(
                f"reward function {spec!r} needs dataset column(s) {missing}, which the training rows lack "
                f"(they have {sorted(have)}): add the column, or drop that function from reward.functions"
            )


def check_packages(config: TrainConfig) -> None:
    """The packages the config's engine, learner backend and 4-bit base need are there: vLLM (the
    supported version), DeepSpeed (imported here: the learners import it on their nodes), bitsandbytes."""
    from importlib.util import find_spec

    if config.rollout.backend == "vllm":
        from actors.engines.vllm_engine import require_supported_vllm

        try:
            require_supported_vllm()
        except RuntimeError as err:
            raise StartupError(str(err)) from None
    backend = config.batch.train_backend
    if backend != "plain":
        try:
            import deepspeed  # noqa: F401
        except ImportError as err:
            raise StartupError(
                f"batch.train_backend={backend!r} needs DeepSpeed, which does not import here ({err}): "
                "pip install -e '.[gpu]' (or set batch.train_backend='plain')"
            ) from None
    if config.model.load_in_4bit and find_spec("bitsandbytes") is None:
        raise StartupError(
            "model.load_in_4bit=true needs bitsandbytes, which is not installed: pip install -e '.[gpu]' "
            "(or set model.load_in_4bit=false)"
        )


def check_output_dir(config: TrainConfig) -> Path | None:
    """A fresh run needs an output directory without a run in it; a resumed one a checkpoint
    whose config it matches. Returns the checkpoint to resume from (or None)."""
    from grpo_ray.cli import config_from_dict

    out = Path(config.run.output_dir)
    if config.run.resume is None:
        found = existing_run(out)
        if found:
            raise StartupError(
                f"run.output_dir={str(out)!r} already holds a run ({', '.join(found[:4])}): continue it with "
                "--run.resume latest, or give a new --run.output_dir (or delete that directory)"
            )
        return None
    path = resolve_resume(config.run.resume, out)
    check_resume_compatible(config_from_dict(read_trainer_state(path)["config"]), config, path)
    return path


@dataclass(frozen=True)
class Checked:
    """What start-up proved about a config, handed to ``GRPOTrainer`` so that it checks nothing again."""

    config: TrainConfig
    resume_from: Path | None  # the checkpoint run.resume names, None for a fresh run


def preflight(config: TrainConfig, rows: Sequence[dict[str, Any]] | None = None, *, model: bool = True) -> Checked:
    """The trainer's prerequisites, in start-up's order: reward functions, packages, output
    directory or resume checkpoint, the model (unless ``model`` is false: a model this run makes
    first), and the columns the reward functions need (when ``rows`` are given)."""
    functions = check_reward_names(config)
    check_packages(config)
    resume_from = check_output_dir(config)
    if model:
        check_model(config.model)
    if rows is not None:
        check_reward_columns(config, functions, rows)
    return Checked(config, resume_from)


# -- prompts and data ----------------------------------------------------------------------------


def install_chat_template(tokenizer: Any, config: TrainConfig, fmt: Any) -> None:
    """Put the template data.chat_template names on the tokenizer (saved with every checkpoint)."""
    from grpo_ray.prompting import tutorial_chat_template

    choice = config.data.chat_template
    if choice == "tutorial":
        system = config.data.system_prompt if config.data.system_prompt is not None else fmt.system_prompt
        tokenizer.chat_template = tutorial_chat_template(system, fmt.generation_prefix)
    elif choice == "model":
        if not getattr(tokenizer, "chat_template", None):
            raise StartupError(
                f"data.chat_template='model' but the tokenizer of {config.model.name_or_path!r} has no chat template: "
                "use tutorial, none, or the path of a Jinja file"
            )
    elif choice != "none":
        path = Path(choice).expanduser()
        if not path.is_file():
            raise StartupError(f"data.chat_template={choice!r}: no such template file (or use model, tutorial, none)")
        tokenizer.chat_template = path.read_text()


@dataclass
class Data:
    train: Any  # datasets.Dataset
    eval: Any  # datasets.Dataset, or None when the eval is off
    note: str = ""  # how the eval rows were found, for the data line ("" = its own split)


def eval_wanted(config: TrainConfig) -> bool:
    d = config.data
    return config.eval.limit != 0 and d.eval_split is not None and d.answer_column is not None


def load_data(config: TrainConfig, hint: str = "") -> Data:
    """The training rows (first ``data.max_rows``) and the eval rows, each checked for the named
    columns. A single-file dataset has no splits: when the eval would read that same file, a
    seeded ``data.eval_holdout`` share of its rows is held out of training for it (or, at 0, the
    run is refused), so the eval never scores the training rows."""
    d = config.data
    train = load_split(d, d.dataset, d.train_split, "data.dataset", hint)
    check_columns(train, d, d.dataset)
    data = Data(train, None)
    if eval_wanted(config):
        source = d.eval_dataset or d.dataset
        if _same_single_file(source, d.dataset):
            data = hold_out(train, config)
        else:
            knob = "data.eval_dataset" if d.eval_dataset else "data.dataset"
            data.eval = load_split(d, source, d.eval_split, knob, hint)
            check_columns(data.eval, d, source)
    if d.max_rows is not None:
        data.train = data.train.select(range(min(d.max_rows, len(data.train))))
    return data


def _same_single_file(source: str, dataset: str) -> bool:
    a, b = Path(source).expanduser(), Path(dataset).expanduser()
    return a.is_file() and b.is_file() and a.resolve() == b.resolve()


def hold_out(rows: Any, config: TrainConfig) -> Data:
    """Split one file's rows into training and eval rows (see :func:`load_data`)."""
    d = config.data
    n = len(rows)
    if d.eval_holdout == 0:
        raise StartupError(
            f"data.dataset={d.dataset!r} is one file, which has no {d.eval_split!r} split: the eval would score the "
            "training rows; set data.eval_dataset FILE, data.eval_split none, or data.eval_holdout > 0"
        )
    count = max(1, round(d.eval_holdout * n))
    if config.eval.limit is not None:
        count = min(count, config.eval.limit)
    if count >= n:
        raise StartupError(
            f"data.dataset={d.dataset!r} has {n} row(s): too few to hold {count} out for the eval and train on the "
            "rest; add rows, or set data.eval_split none"
        )
    picked = set(random.Random(config.run.seed).sample(range(n), count))
    train = rows.select([i for i in range(n) if i not in picked])
    held = rows.select(sorted(picked))
    note = (f" ({count} of the file's {n} rows held out of training for the eval: one file has no "
            f"{d.eval_split!r} split; data.eval_holdout={d.eval_holdout:g})")
    return Data(train, held, note)


# -- the whole of start-up -----------------------------------------------------------------------


#: ``make(config) -> config``: what a recipe makes on the spot (a tiny model, generated problems),
#: called after every check that needs none of it, so a run that cannot start writes nothing.
Make = Callable[[TrainConfig], TrainConfig]


@dataclass
class Prepared:
    """Everything start-up produced: the run's config (after the recipe's make), what GRPO starts
    from (checked), the tokenizer with its chat template, the answer format and the prompts."""

    config: TrainConfig
    checked: Checked  # GRPO's config: with sft.steps, the warm-up's checkpoint as its model
    tokenizer: Any
    fmt: Any  # grpo_ray.prompting.AnswerFormat
    train_set: Any  # grpo_ray.prompt_set.PromptSet
    eval_set: Any
    converter: Path | None  # llama.cpp's converter, when export.gguf asks for one and it is found
    data_note: str = ""


def with_model(config: TrainConfig, path: str | Path) -> TrainConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, name_or_path=str(path)))


def warmup_dir(config: TrainConfig) -> Path:
    """Where the SFT warm-up's checkpoint goes (GRPO starts from it)."""
    return Path(config.run.output_dir) / "sft"


def grpo_config(config: TrainConfig) -> TrainConfig:
    """The config GRPO runs with: the warm-up's checkpoint as its model when there is a warm-up
    (what a resumed run's saved config says too)."""
    return with_model(config, warmup_dir(config)) if config.sft.steps else config


def prepare(config: TrainConfig, hint: str = "", make: Make | None = None) -> Prepared:
    """Every start-up check, once, in the order of the module docstring; raises
    :class:`StartupError` (one line naming the knob) before any file is written or Ray starts."""
    from grpo_ray.modeling import load_tokenizer
    from grpo_ray.prompt_set import PromptSet, build_prompt_set
    from grpo_ray.prompting import answer_format
    from grpo_ray.tracking import missing_sinks

    check_writable(config.run.output_dir)
    problems = missing_sinks(config.run.report_to)
    if problems:
        raise StartupError(problems[0])
    try:
        fmt = answer_format(config.data.format)
    except ValueError as err:
        raise StartupError(str(err)) from None
    check_judge(config)
    functions = check_reward_names(config)
    check_packages(config)
    resume_from = check_output_dir(grpo_config(config))
    if config.model.name_or_path:
        check_model(config.model, hint)
    data = load_data(config, hint) if config.data.dataset else None
    converter = find_gguf_converter(config.export) if config.export.gguf else None
    if make is not None:
        made = make(config)
        if made.model.name_or_path != config.model.name_or_path:
            check_model(made.model, hint)
        config, data = made, data or load_data(made, hint)
    if data is None:
        data = load_data(config, hint)  # says that data.dataset is empty
    tokenizer = load_tokenizer(config.model)
    install_chat_template(tokenizer, config, fmt)
    limit = config.grpo.max_prompt_length
    train_set = build_prompt_set(data.train, config.data, tokenizer, fmt, limit)
    if not train_set.rows:
        raise StartupError(
            f"all {train_set.dropped} training prompts are longer than grpo.max_prompt_length={limit} tokens: raise it"
        )
    eval_set = PromptSet() if data.eval is None else build_prompt_set(data.eval, config.data, tokenizer, fmt, limit, config.eval.limit)
    check_reward_columns(config, functions, train_set.rows)
    checked = Checked(grpo_config(config), resume_from)
    return Prepared(config, checked, tokenizer, fmt, train_set, eval_set, converter, data.note)
