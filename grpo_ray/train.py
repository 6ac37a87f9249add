"""`python -m grpo_ray train`: a model, a dataset, reward functions and every knob -> a trained,
evaluated and exported model.

    python -m grpo_ray train --model.name_or_path PATH_OR_HUB_ID --data.dataset DATA \\
        --data.prompt_column question --reward.functions math [--<section>.<field> VALUE ...]

The steps, each driven by the config: start-up checks (one line naming the knob on failure) ->
prompts (chat template, data.format's system prompt, over-long prompts dropped and counted) ->
optional SFT warm-up -> GRPO with greedy pass@1 before training, every eval.steps steps and at
the end -> export (the final adapter or model, a merged model, GGUF) -> plot -> summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from grpo_ray.cli import parse_config, user_errors
from grpo_ray.config import TrainConfig
from grpo_ray.prompt_set import PromptSet, build_prompt_set
from grpo_ray.prompting import AnswerFormat, answer_format, tutorial_chat_template
from grpo_ray.startup import (
    GGUF_MISSING, StartupError, check_columns, check_model, check_writable, find_gguf_converter, load_split,
)
from grpo_ray.tracking import missing_sinks


def check_judge(config: TrainConfig) -> None:
    """``eval.judge`` resolves (the reward functions are the trainer's preflight's to check)."""
    from grpo_ray.rewards import RewardResolutionError, resolve

    try:
        resolve(config.eval.judge)
    except RewardResolutionError as err:
        raise StartupError(f"eval.judge: {str(err).splitlines()[0]}") from None


def install_chat_template(tokenizer: Any, config: TrainConfig, fmt: AnswerFormat) -> None:
    """Put the template data.chat_template names on the tokenizer (saved with every checkpoint)."""
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


def load_data(config: TrainConfig, hint: str) -> tuple[Any, Any]:
    """The training split (first ``data.max_rows`` rows) and the eval split (None when the eval is
    off), each checked for the named columns."""
    d = config.data
    train_data = load_split(d, d.dataset, d.train_split, "data.dataset", hint)
    check_columns(train_data, d, d.dataset)
    if d.max_rows is not None:
        train_data = train_data.select(range(min(d.max_rows, len(train_data))))
    eval_data = None
    if config.eval.limit != 0 and d.eval_split is not None and d.answer_column is not None:
        source = d.eval_dataset or d.dataset
        eval_data = load_split(d, source, d.eval_split, "data.eval_dataset" if d.eval_dataset else "data.dataset", hint)
        check_columns(eval_data, d, source)
    return train_data, eval_data


def prompt_sets(config: TrainConfig, data: tuple[Any, Any], tokenizer: Any, fmt: AnswerFormat) -> tuple[PromptSet, PromptSet]:
    """The training prompts and the eval questions (empty when the eval is off)."""
    limit = config.grpo.max_prompt_length
    train_set = build_prompt_set(data[0], config.data, tokenizer, fmt, limit)
    if not train_set.rows:
        raise StartupError(
            f"all {train_set.dropped} training prompts are longer than grpo.max_prompt_length={limit} tokens: raise it"
        )
    eval_set = PromptSet() if data[1] is None else build_prompt_set(data[1], config.data, tokenizer, fmt, limit, config.eval.limit)
    return train_set, eval_set


#: ``make(config) -> config``: what a recipe makes on the spot (a tiny model, generated problems),
#: written after every check that needs none of it, so a run that cannot start writes nothing.
Make = Callable[[TrainConfig], TrainConfig]


def train(config: TrainConfig, hint: str = "", make: Make | None = None) -> dict[str, Any]:
    """The whole run; raises :class:`~grpo_ray.config.ConfigError` (one line naming the knob)
    before any work or any file when the run cannot start."""
    from grpo_ray.modeling import load_tokenizer
    from grpo_ray.trainer import preflight

    started = time.perf_counter()
    out = check_writable(config.run.output_dir)
    problems = missing_sinks(config.run.report_to)
    if problems:
        raise StartupError(problems[0])
    try:
        fmt = answer_format(config.data.format)
    except ValueError as err:
        raise StartupError(str(err)) from None
    check_judge(config)
    warmup = out / "sft"
    # GRPO starts from the warm-up's checkpoint (what a resumed run's saved config says too).
    grpo_config = with_model(config, warmup) if config.sft.steps else config
    preflight(grpo_config, check_model=False)  # reward names, output-dir reuse, resume
    if config.model.name_or_path:
        check_model(config.model, hint)
    data = load_data(config, hint) if config.data.dataset else None
    converter = find_gguf_converter(config.export) if config.export.gguf else None
    if config.export.gguf and converter is None:
        print(f"warning: {GGUF_MISSING}", flush=True)
    if make is not None:
        made = make(config)
        if made.model.name_or_path != config.model.name_or_path:
            check_model(made.model, hint)
        config, data = made, data or load_data(made, hint)
        grpo_config = with_model(config, warmup) if config.sft.steps else config
    tokenizer = load_tokenizer(config.model)
    install_chat_template(tokenizer, config, fmt)
    train_set, eval_set = prompt_sets(config, data, tokenizer, fmt)
    preflight(grpo_config, train_set.rows, check_model=False)  # the columns the reward functions need
    print(
        f"data: {len(train_set.rows)} training prompts (longest {train_set.longest} tokens; {train_set.dropped} dropped "
        f"as longer than grpo.max_prompt_length={config.grpo.max_prompt_length}), {len(eval_set.rows)} eval questions",
        flush=True,
    )
    summary: dict[str, Any] = {"train_prompts": len(train_set.rows), "dropped_prompts": train_set.dropped,
                               "eval_questions": len(eval_set.rows)}
    if config.sft.steps and not (config.run.resume and (warmup / "config.json").is_file()):
        from grpo_ray.sft import supervised_warmup

        prompts = [r["prompt"] for r in train_set.rows]
        _, summary["sft"] = supervised_warmup(config, tokenizer, prompts, train_set.solutions, warmup)
        print(f"SFT warm-up: loss {summary['sft']['sft/loss_first']:.3f} -> {summary['sft']['sft/loss_last']:.3f}; "
              f"checkpoint {warmup}", flush=True)
    summary |= run_grpo(grpo_config, train_set, eval_set)
    summary["exports"] = export_all(grpo_config, out, tokenizer, converter)
    summary["plot"] = plot_if_possible(out)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    report(summary, out)
    return summary


def run_grpo(config: TrainConfig, train_set: PromptSet, eval_set: PromptSet) -> dict[str, Any]:
    from tqdm import tqdm

    from grpo_ray.evaluate import Evaluator
    from grpo_ray.trainer import GRPOTrainer

    trainer = GRPOTrainer(config, train_set.rows)
    try:
        evaluator = Evaluator(trainer, eval_set, config, write=tqdm.write)
        result = trainer.run(on_step=evaluator.on_step)
    finally:
        trainer.shutdown()
    accuracy = evaluator.accuracy
    return {
        "optimizer_steps": result.optimizer_steps,
        "accuracy": {str(k): v for k, v in accuracy.items()},
        "accuracy_before": accuracy.get(0),
        "accuracy_after": accuracy.get(result.optimizer_steps),
        "final_reward": result.history[-1]["reward"] if result.history else None,
    }


def export_all(config: TrainConfig, out: Path, tokenizer: Any, converter: Path | None) -> dict[str, str]:
    from grpo_ray.export import export_gguf, export_merged

    final = out / "final"
    exports = {"final": str(final)}
    if config.export.merged:
        exports["merged"] = str(export_merged(final, out / "merged", config.export.dtype, tokenizer))
    if config.export.gguf:
        if converter is None:
            print(f"GGUF: skipped. {GGUF_MISSING}", flush=True)
        else:
            gguf = out / f"model-{config.export.gguf}.gguf"
            exports["gguf"] = str(export_gguf(out / "merged", gguf, config.export.gguf, converter))
    return exports


def plot_if_possible(out: Path) -> str | None:
    from grpo_ray.plot import MISSING, plot_run, read_log

    try:
        return str(plot_run(read_log(out / "metrics.jsonl"), out / "metrics.png", title=str(out)))
    except SystemExit:
        print(f"plot: skipped, {MISSING}", flush=True)
        return None


def report(summary: dict[str, Any], out: Path) -> None:
    before, after = summary.get("accuracy_before"), summary.get("accuracy_after")
    if before is not None and after is not None:
        print(f"pass@1 on {summary['eval_questions']} eval questions: {before:.1%} before GRPO -> {after:.1%} after "
              f"({(after - before) * 100:+.1f} points)", flush=True)
    files = [f"{k} {v}" for k, v in summary["exports"].items()]
    files += [f"metrics {out / 'metrics.jsonl'}", f"summary {out / 'summary.json'}"]
    if summary.get("plot"):
        files.append(f"plot {summary['plot']}")
    print("wrote: " + "; ".join(files), flush=True)


def with_model(config: TrainConfig, path: str | Path) -> TrainConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, name_or_path=str(path)))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = parse_config(argv, description=__doc__)
    with user_errors("python -m grpo_ray train"):
        return train(config)


if __name__ == "__main__":
    main(sys.argv[1:])
