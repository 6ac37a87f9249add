"""From a dataset row to the text the model sees, and to the answer the SFT warm-up teaches.

Pure string work (the tokenizer is passed in, never imported). An *answer format* is what
``data.format`` names: the system prompt asking for it, the text that opens the model's turn
(the Qwen3 tutorial's ``<start_working_out>``), how a worked solution is written in it (the SFT
target), and the seed reward set that scores it:

* ``none``: no system prompt; a solution is ``reasoning\\n#### answer`` (GSM8K's own layout);
* ``qwen3``: the Qwen3 tutorial's tags (:data:`grpo_ray.rewards.qwen3.QWEN3`);
* ``gsm8k``: the ``<reasoning>``/``<answer>`` layout of the Unsloth GSM8K reward set;
* ``module:OBJECT``: your own :class:`~grpo_ray.rewards.qwen3.Qwen3Format` or
  :class:`~grpo_ray.rewards.gsm8k.XMLFormat`; its reward functions are named
  ``module:OBJECT.method``, so the reward workers import the same tags.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from grpo_ray.rewards.gsm8k import XMLFormat
from grpo_ray.rewards.qwen3 import Qwen3Format

QWEN3_REWARDS = ("match_format_exactly", "match_format_approximately", "check_answer", "check_numbers")
GSM8K_REWARDS = ("correctness", "integer", "strict_format", "soft_format", "xmlcount")
_REGISTERED = {  # method -> registry name, for the built-in formats
    "qwen3": {m: f"qwen3_{m}" for m in QWEN3_REWARDS},
    "gsm8k": {"correctness": "gsm8k_correctness", "integer": "gsm8k_int", "strict_format": "gsm8k_strict_format",
              "soft_format": "gsm8k_soft_format", "xmlcount": "gsm8k_xmlcount"},
}
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: 48/2 = <<48/2=24>>24


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    system_prompt: str | None
    generation_prefix: str  # opens the model's turn; the tutorial's template adds it
    solution: Callable[[str, str], str]  # (reasoning, answer) -> the completion the SFT warm-up teaches
    reward_functions: tuple[str, ...]  # the seed reward set of this format (reward.functions entries)


def answer_format(spec: str) -> AnswerFormat:
    """The :class:`AnswerFormat` ``data.format`` names; ValueError naming the knob otherwise."""
    if spec == "none":
        return AnswerFormat("none", None, "", lambda r, a: f"{r}\n#### {a}" if r else a, ())
    if spec in ("qwen3", "gsm8k"):
        from grpo_ray.rewards.gsm8k import GSM8K
        from grpo_ray.rewards.qwen3 import QWEN3

        obj, names = (QWEN3, _REGISTERED["qwen3"]) if spec == "qwen3" else (GSM8K, _REGISTERED["gsm8k"])
        return _from_object(spec, obj, lambda m: names[m])
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"data.format={spec!r}: {err}") from None
        return _from_object(spec, obj, lambda m: f"{spec}.{m}")
    raise ValueError(f"data.format={spec!r} is invalid: choose none, qwen3, gsm8k or 'module:OBJECT'")


def _from_object(spec: str, obj: Any, reward_name: Callable[[str], str]) -> AnswerFormat:
    if isinstance(obj, Qwen3Format):
        def solution(reasoning: str, answer: str) -> str:
            return f"{reasoning}{obj.reasoning_end}{obj.solution_start}{answer}{obj.solution_end}"

        methods, prefix = QWEN3_REWARDS, obj.reasoning_start
    elif isinstance(obj, XMLFormat):
        r, a = obj.reasoning_tag, obj.answer_tag

        def solution(reasoning: str, answer: str) -> str:
            # One line of reasoning: the set's format regexes (kept as published) do not cross newlines.
            return f"<{r}>\n{' '.join(reasoning.split())}\n</{r}>\n<{a}>\n{answer}\n</{a}>\n"

        methods, prefix = GSM8K_REWARDS, ""
    else:
        raise ValueError(f"data.format={spec!r} names a {type(obj).__name__}: give a Qwen3Format or XMLFormat")
    return AnswerFormat(spec, obj.system_prompt, prefix, solution, tuple(reward_name(m) for m in methods))


def split_solution(text: str) -> tuple[str, str]:
    """(reasoning, final answer) of a reference solution: GSM8K's ``... #### 72`` gives the steps
    without calculator annotations and ``72``; any other text is an answer with no reasoning."""
    text = str(text)
    if "####" not in text:
        return "", text.strip()
    steps, answer = text.rsplit("####", 1)
    return _CALCULATOR.sub("", steps).strip(), answer.strip()


def tutorial_chat_template(system_prompt: str | None, generation_prefix: str) -> str:
    """The Qwen3 tutorial's chat template: the system prompt + EOS (its own if the conversation has
    none), user turns as they are, assistant turns + EOS, and ``generation_prefix`` to open the
    model's turn."""
    default = json.dumps(system_prompt or "")  # a JSON string is a valid Jinja string literal
    return (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + eos_token }}"
        "{% set loop_messages = messages[1:] %}"
        f"{{% else %}}{{{{ {default} + eos_token if {default} else '' }}}}{{% set loop_messages = messages %}}{{% endif %}}"
        "{% for message in loop_messages %}{% if message['role'] == 'user' %}{{ message['content'] }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ {json.dumps(generation_prefix)} }}}}{{% endif %}}"
    )


def messages_of(prompt: Any, system_prompt: str | None) -> list[dict[str, str]]:
    """Chat messages of a prompt cell (a question string or a message list), with the system
    prompt first unless the cell brings its own."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], template: str, generation_prefix: str) -> str:
    """The prompt text: through the tokenizer's chat template (``template`` is ``model``,
    ``tutorial`` or a Jinja file, already installed on the tokenizer), or plain (``none``: the
    messages' contents joined by blank lines). ``generation_prefix`` ends it; the tutorial's
    template adds it itself."""
    if template == "none":
        return "\n\n".join(m["content"] for m in messages) + generation_prefix
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text if template == "tutorial" else text + generation_prefix
