"""Map YAML files and command-line flags onto :class:`~grpo_ray.config.TrainConfig`.

One way only: ``--config run.yaml`` loads a file shaped like the config (``grpo: {beta: 0.04}``),
then ``--<section>.<field> VALUE`` flags override it (``--grpo.beta 0.04``). Values are read as
YAML scalars, so ``none``/``null``, ``true``, numbers and ``[a, b]`` lists all work; a tuple
field also takes ``a,b``. Nothing here invents a knob: the flags are generated from the
dataclasses, and the dataclasses validate the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

import yaml

from grpo_ray.config import SECTIONS, ConfigError, TrainConfig


def _field_kind(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(section: str, name: str, kind: Any, value: Any) -> Any:
    """Turn a YAML-parsed value into the field's declared type, or explain why it cannot be."""
    args = typing.get_args(kind)
    optional = type(None) in args
    if optional and isinstance(value, str) and value.lower() == "none":
        value = None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{section}.{name}=None is invalid: this field needs a value")
    if optional:
        kind = next(a for a in args if a is not type(None))
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item_kind, _) = typing.get_args(kind)
        if isinstance(value, str):
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(section, name, item_kind, v) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads "1e-6" (no dot) as a string; accept it as the float it means.
        try:
            return float(value)
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind in (int, float, bool, str) and type(value) is not kind:
        article = "an" if kind is int else "a"
        raise ConfigError(f"{section}.{name}={value!r} is invalid: expected {article} {kind.__name__}")
    return value


def _unknown(where: str, key: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
    return ConfigError(f"unknown config key {where}{key!r}{hint}")


def config_from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Build a TrainConfig from ``{section: {field: value}}`` on top of ``base``."""
    base = base or TrainConfig()
    if not isinstance(data, dict):
        raise ConfigError("a config file must be a mapping of sections, e.g. 'grpo: {beta: 0.04}'")
    built = {}
    for section, cls in SECTIONS.items():
        current = getattr(base, section)
        overrides = data.get(section) or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"config section {section!r} must be a mapping of field: value")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in overrides:
            if key not in names:
                raise _unknown(f"in section {section!r}: ", key, names)
        values = {k: _coerce(section, k, _field_kind(cls, k), v) for k, v in overrides.items()}
        built[section] = dataclasses.replace(current, **values)
    for section in data:
        if section not in SECTIONS:
            raise _unknown("section ", section, list(SECTIONS))
    return TrainConfig(**built)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The YAML-ready form of a config (tuples as lists)."""

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {s: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, s)).items()} for s in SECTIONS}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``PROG: error: ...``, no usage block) and a "did you mean"
    for a misspelled flag."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, unknown = self.parse_known_args(negative_values_joined(list(sys.argv[1:] if args is None else args)), namespace)
        if unknown:
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            first = next((u for u in unknown if u.startswith("-")), unknown[0])
            close = difflib.get_close_matches(first.split("=", 1)[0], flags, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; {self.prog} --help lists every flag"
            self.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        return parsed


NEGATIVE_NUMBER = re.compile(r"^-(\d|\.\d|inf\b|nan\b)", re.IGNORECASE)


def negative_values_joined(argv: list[str]) -> list[str]:
    """``--optim.learning_rate -1e-3`` -> ``--optim.learning_rate=-1e-3``: argparse would read a
    value starting with '-' as a flag (it only knows plain ``-3`` and ``-0.5`` as numbers)."""
    out: list[str] = []
    for token in argv:
        if out and NEGATIVE_NUMBER.match(token) and out[-1].startswith("--") and "." in out[-1] and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


#: ``add(parser)``: a recipe's own flags (``--tiny``...), added to its parser so --help lists them.
RecipeFlags = Callable[[argparse.ArgumentParser], None]


def build_parser(
    description: str, base: TrainConfig, prog: str | None = None, recipe_flags: RecipeFlags | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one ``--section.field`` flag per knob, defaults taken from ``base``."""
    parser = Parser(
        prog=prog,
        description=description,
        allow_abbrev=False,
        usage="%(prog)s [-h] [--config FILE] [--print-config] [--<section>.<field> VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Values are YAML scalars: --grpo.epsilon_high 0.28, --grpo.delta none, --optim.learning_rate -1e-3, "
        "--reward.functions a,b. Flags override --config, which overrides the defaults.",
    )
    parser.add_argument("--config", type=Path, help="YAML file shaped like the config: 'grpo: {beta: 0.04}'.")
    parser.add_argument("--print-config", action="store_true", help="Print the resolved config as YAML and exit.")
    if recipe_flags is not None:
        recipe_flags(parser.add_argument_group("recipe", "This recipe's own flags (the knobs follow)."))
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(section, (cls.__doc__ or "").strip())
        current = getattr(base, section)
        for f in dataclasses.fields(cls):
            default = getattr(current, f.name)
            group.add_argument(
                f"--{section}.{f.name}",
                dest=f"{section}.{f.name}",
                metavar="VALUE",
                default=argparse.SUPPRESS,
                help=f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%"),
            )
    return parser


def parse_config(
    argv: Sequence[str] | None = None,
    *,
    base: TrainConfig | None = None,
    description: str = "Train a model with GRPO on a Ray cluster.",
    prog: str | None = None,
) -> TrainConfig:
    """Defaults (``base``) <- ``--config`` YAML <- ``--section.field`` flags -> a validated TrainConfig.

    Exits with one ``PROG: error: ...`` line (the ConfigError message) on an invalid value, so the
    user sees which field is wrong and how to fix it before anything is loaded.
    """
    return parse_command(argv, base=base, description=description, prog=prog)[1]


#: ``preset(recipe_args, base) -> base``: the defaults a recipe's flags pick (``--tiny``'s sizes).
Preset = Callable[[argparse.Namespace, TrainConfig], TrainConfig]


def parse_command(
    argv: Sequence[str] | None = None,
    *,
    base: TrainConfig | None = None,
    description: str = "Train a model with GRPO on a Ray cluster.",
    prog: str | None = None,
    recipe_flags: RecipeFlags | None = None,
    preset: Preset | None = None,
) -> tuple[argparse.Namespace, TrainConfig]:
    """A recipe's command line: its own flags (``recipe_flags``, listed by --help), the defaults
    they pick (``preset``), then ``--config`` and the knobs on top. Returns (the recipe's flags, config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    base = base or TrainConfig()
    recipe_args = argparse.Namespace()
    if recipe_flags is not None:  # a first pass reads the recipe's flags, which pick the defaults --help shows
        first = Parser(prog=prog, add_help=False, allow_abbrev=False)
        recipe_flags(first)
        recipe_args, _ = first.parse_known_args(negative_values_joined(argv))
        if preset is not None:
            try:
                base = preset(recipe_args, base)
            except ConfigError as err:
                first.error(str(err))
    parser = build_parser(description, base, prog, recipe_flags)
    args = vars(parser.parse_args(argv))
    for name in vars(recipe_args):
        args.pop(name, None)
    try:
        config = base
        path = args.pop("config", None)
        if path is not None:
            if not path.is_file():
                raise ConfigError(f"--config {path}: no such file")
            fix = "fix the file (a mapping like 'grpo: {beta: 0.04}')"
            data = _load_yaml(path.read_text(), f"--config {path}", fix)
            config = config_from_dict(data or {}, config)
        show = args.pop("print_config", False)
        overrides: dict[str, dict[str, Any]] = {}
        for dotted, raw in args.items():
            section, name = dotted.split(".", 1)
            fix = "quote it, or write a list as [1, 2] or 1,2"
            overrides.setdefault(section, {})[name] = _load_yaml(raw, f"--{dotted} {raw!r}", fix) if raw != "" else ""
        config = config_from_dict(overrides, config)
    except ConfigError as err:
        parser.error(str(err))
    if show:
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        raise SystemExit(0)
    return recipe_args, config


def _load_yaml(text: str, where: str, fix: str) -> Any:
    """``yaml.safe_load``, with a parse error turned into one ConfigError line naming ``where``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and start is not None:
            problem += f" ({context} at line {start.line + 1}, column {start.column + 1})"
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}; {fix}") from None


#: What a command-line run is doing, for the line a Ctrl-C prints (set by :func:`stage`).
_STAGE = {"now": "start-up"}


def stage(what: str) -> None:
    """Name what the run does from now on ("the SFT warm-up"), for the line Ctrl-C prints."""
    _STAGE["now"] = what


@contextmanager
def user_errors(prog: str, output_dir: str | Path | None = None) -> Iterator[None]:
    """For command-line entry points: every way a run ends early is one line on stderr.

    - :class:`ConfigError` (a start-up check: reward names, dataset columns, model path, output
      directory, resume): ``PROG: error: ...`` like a bad flag, exit status 2.
    - Ctrl-C before the GRPO loop (which saves a checkpoint and prints its own line):
      ``PROG: interrupted during <stage>; ...``, exit status 130.
    - Any other exception (a reward function breaking its contract, an actor that died):
      ``PROG: error: <message>; full traceback in <output_dir>/error.log``, exit status 1.

    Ray, when this process started or joined it, is shut down first, so nothing the run
    started is left running."""
    try:
        yield
    except ConfigError as err:
        _stop_ray()
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        _stop_ray()
        print(f"{prog}: interrupted during {_STAGE['now']}; stopped every process it started", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception as err:  # noqa: BLE001 - the one line here, the traceback in the log
        _stop_ray()
        log = _write_traceback(err, output_dir)
        first = (str(err).strip().splitlines() or [""])[0]
        message = first if first else type(err).__name__
        print(f"{prog}: error: {message}; full traceback in {log}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _stop_ray() -> None:
    """Shut down this process's Ray connection (and the local cluster it started), if any."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _write_traceback(err: BaseException, output_dir: str | Path | None) -> Path:
    """``<output_dir>/error.log`` (or a file in the temp directory when there is no output dir yet)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(err))
    directory = Path(output_dir) if output_dir is not None and Path(output_dir).is_dir() else None
    if directory is None:
        handle, name = tempfile.mkstemp(prefix="grpo-ray-error-", suffix=".log")
        os.close(handle)
        path = Path(name)
    else:
        path = directory / "error.log"
    path.write_text(text)
    return path


def knob_table_markdown() -> str:
    """The README's knob table, generated from the dataclasses (a test keeps README current)."""
    lines = ["| knob | default | meaning |", "| --- | --- | --- |"]
    for section, cls in SECTIONS.items():
        instance = cls()
        for f in dataclasses.fields(cls):
            value = getattr(instance, f.name)
            shown = "None" if value is None else repr(value) if isinstance(value, str) else str(value)
            meaning = f.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{section}.{f.name}` | `{shown}` | {meaning} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m grpo_ray.cli``: ``--knob-table`` prints the README's knob table; otherwise the
    usual flags (``--help``, ``--config``, ``--print-config``) are parsed and the resolved config
    is printed as YAML."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--knob-table" in argv:
        print(knob_table_markdown())
        return
    config = parse_config(argv, prog="python -m grpo_ray.cli")
    print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")


if __name__ == "__main__":
    main()
