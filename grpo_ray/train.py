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

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from grpo_ray.cli import parse_config, stage, user_errors
from grpo_ray.config import TrainConfig
from grpo_ray.prompt_set import PromptSet
from grpo_ray.startup import GGUF_MISSING, Checked, Make, Prepared, prepare, warmup_dir
from grpo_ray.tracking import quiet_console

log = logging.getLogger("grpo_ray")


def train(config: TrainConfig, hint: str = "", make: Make | None = None) -> dict[str, Any]:
    """The whole run; raises :class:`~grpo_ray.config.ConfigError` (one line naming the knob)
    before any work or any file when the run cannot start."""
    started = time.perf_counter()
    stage("the start-up checks")
    ready = prepare(config, hint, make)
    config, train_set, eval_set = ready.config, ready.train_set, ready.eval_set
    out = Path(config.run.output_dir)
    if config.export.gguf and ready.converter is None:
        log.warning(GGUF_MISSING)
    print(
        f"data: {len(train_set.rows)} training prompts (longest {train_set.longest} tokens; {train_set.dropped} dropped "
        f"as longer than grpo.max_prompt_length={config.grpo.max_prompt_length}), {len(eval_set.rows)} eval questions"
        f"{ready.data_note}",
        flush=True,
    )
    summary: dict[str, Any] = {"train_prompts": len(train_set.rows), "dropped_prompts": train_set.dropped,
                               "eval_questions": len(eval_set.rows)}
    warmup = warmup_dir(config)
    started_ray = False
    try:
        if config.sft.steps and not (config.run.resume and (warmup / "config.json").is_file()):
            stage("the SFT warm-up (nothing saved yet)")
            summary["sft"], started_ray = warm_up_beside_ray(ready, warmup)
            print(f"SFT warm-up: loss {summary['sft']['sft/loss_first']:.3f} -> {summary['sft']['sft/loss_last']:.3f}; "
                  f"checkpoint {warmup}", flush=True)
        summary |= run_grpo(ready.checked, train_set, eval_set)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    grpo_config = ready.checked.config
    stage("the export (the final checkpoint is saved)")
    summary["exports"] = export_all(grpo_config, out, ready.tokenizer, ready.converter)
    summary["plot"] = plot_if_possible(out)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    report(summary, out)
    return summary


def warm_up_beside_ray(ready: Prepared, warmup: Path) -> tuple[dict[str, float], bool]:
    """The SFT warm-up on a thread while this one starts Ray (or joins it; GRPO's actors then
    start at once): Ray's start is mostly waiting on the processes it launches, which now
    happens during the warm-up. Returns the warm-up's summary and whether Ray was started here
    (the caller shuts it down). Ctrl-C stops the warm-up at its next step, nothing saved."""
    import threading

    import ray

    from grpo_ray.cluster import connect
    from grpo_ray.sft import supervised_warmup

    config = ready.config
    prompts = [r["prompt"] for r in ready.train_set.rows]
    stop, outcome = threading.Event(), {}

    def work() -> None:
        try:
            outcome["summary"] = supervised_warmup(config, ready.tokenizer, prompts, ready.train_set.solutions, warmup, stop)[1]
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err

    thread = threading.Thread(target=work, name="sft-warm-up", daemon=True)
    thread.start()
    started = not ray.is_initialized()
    try:
        connect(ready.checked.config)
        while thread.is_alive():
            thread.join(0.2)  # in short waits, so that Ctrl-C reaches this thread
    except BaseException:
        stop.set()
        thread.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["summary"], started


def run_grpo(checked: Checked, train_set: PromptSet, eval_set: PromptSet) -> dict[str, Any]:
    from tqdm import tqdm

    from grpo_ray.evaluate import Evaluator
    from grpo_ray.trainer import GRPOTrainer

    config = checked.config
    stage("the start of Ray and the actors (nothing saved yet)")
    trainer = GRPOTrainer(config, train_set.rows, checked=checked)
    stage("GRPO (stopped at once by the second Ctrl-C, without a checkpoint)")
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
            log.warning("GGUF: skipped. %s", GGUF_MISSING)
        else:
            gguf = out / f"model-{config.export.gguf}.gguf"
            exports["gguf"] = str(export_gguf(out / "merged", gguf, config.export.gguf, converter))
    return exports


def plot_if_possible(out: Path) -> str | None:
    from grpo_ray.plot import MISSING, plot_run, read_log

    try:
        return str(plot_run(read_log(out / "metrics.jsonl"), out / "metrics.png", title=str(out)))
    except SystemExit:
        log.warning("plot: skipped, %s", MISSING)
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


PROG = "python -m grpo_ray train"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    quiet_console()
    config = parse_config(argv, description=__doc__, prog=PROG)
    with user_errors(PROG, config.run.output_dir):
        return train(config)


if __name__ == "__main__":
    main(sys.argv[1:])
