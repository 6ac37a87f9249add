"""Math answer verification: pull the final answer out of a completion and compare it to gold.

No ``eval``, no sympy: strings, :class:`fractions.Fraction` and a small bounded arithmetic
parser (:mod:`grpo_ray.rewards.math_expr`), so every call is bounded by the (capped) input
length. It aims at the verdicts of HuggingFace's ``math-verify`` on GSM8K/MATH-style answers:
numbers (exact for integers and fractions, to 6 decimals where a decimal is written),
arithmetic and LaTeX forms of one value (``2+3`` = ``5``, ``\\frac{\\sqrt{2}}{2}`` =
``\\sqrt{2}/2``), percentages, units, wrappers (``\\boxed{}``, ``$...$``, braces), tuples and
intervals (ordered) and sets (any order). It does no algebra on variables (``x+1`` vs ``1+x``
is unequal here). The agreement with math-verify, measured on a corpus, is in
``tests/grpo_ray/rewards/test_math.py``.
"""

from __future__ import annotations

import re
from fractions import Fraction

from grpo_ray.rewards.math_expr import evaluate, same_value, scaled
from grpo_ray.rewards.registry import completion_text, register

#: Longer answers are compared as plain strings only.
MAX_ANSWER_CHARS = 2_000
#: Tuples and sets with more items are not compared item by item.
_MAX_ITEMS = 50

_HASH = re.compile(r"####\s*([^\n]*)")
_SOLUTION = re.compile(r"<SOLUTION>(.*?)</SOLUTION>", re.DOTALL)
_ANSWER_IS = re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*([^\n]*)", re.IGNORECASE)
_NUMBER_TOKEN = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+")


def extract_answer(text: str | None) -> str | None:
    """The final answer of a solution text, or ``None``.

    Looked for in this order, the last occurrence of each winning: ``\\boxed{...}`` (or
    ``\\fbox``), ``#### N`` (GSM8K), ``<SOLUTION>...</SOLUTION>`` (the Qwen3 tutorial format),
    "The (final) answer is ...", and finally the last number in the text.
    """
    if not isinstance(text, str):
        return None
    text = text.replace("\u2212", "-")
    for find in (_last_boxed, _last_hash, _last_solution, _last_answer_is, _last_number):
        found = find(text)
        if found is not None and found.strip():
            return found.strip()
    return None


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + len("\\fbox" if text.startswith("\\fbox", start) else "\\boxed")
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] != "{":  # "\boxed 5"
        return re.match(r"[^\s$]*", text[i:]).group(0)
    return _braced(text, i)


def _braced(text: str, open_at: int) -> str | None:
    """Content of the balanced ``{...}`` group opening at ``open_at``."""
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : j]
    return None


def _last_hash(text: str) -> str | None:
    found = _HASH.findall(text)
    return found[-1] if found else None


def _last_solution(text: str) -> str | None:
    found = _SOLUTION.findall(text)
    return found[-1] if found else None


def _last_answer_is(text: str) -> str | None:
    found = _ANSWER_IS.findall(text)
    return re.sub(r"[.\s]+$", "", found[-1]) if found else None


def _last_number(text: str) -> str | None:
    found = _NUMBER_TOKEN.findall(text)
    return found[-1] if found else None


# --------------------------------------------------------------------------- normalisation

_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{")
_SPACING = re.compile(r"\\(?:left|right|displaystyle|[,;:! ])|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PERCENT = re.compile(r"\\?%|\s*percent\b")
_CURRENCY = re.compile(r"\\\$|\$|€|£|¥|\bUSD\b|\\(?:euro|pounds)\b")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d])")
_UNIT_TAIL = re.compile(r"^(-?[\d.,/]+(?:\\frac\{\d+\}\{\d+\})?)\s+[A-Za-z][A-Za-z\s./]*(?:\^\{?\d\}?)?$")
_ASSIGN = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?!=)")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF = re.compile(r"\\frac\{([^{}]*)\}(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt(\d+)")
_POW_BRACE = re.compile(r"\^\{(\w)\}")
_CHOICE = re.compile(r"^\(([A-Ea-e])\)$")


def _unwrap(text: str) -> str:
    """Replace each ``\\text{X}``-like wrapper by X (balanced braces)."""
    while (m := _WRAPPERS.search(text)) is not None:
        inner = _braced(text, m.end() - 1)
        if inner is None:
            return text[: m.start()] + text[m.end() :]
        text = text[: m.start()] + inner + text[m.end() + len(inner) + 1 :]
    return text


def normalize(answer: str) -> tuple[str, bool]:
    """A canonical string for ``answer`` and whether it carried a percent sign."""
    s = answer.strip().replace("\u2212", "-").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _unwrap(_strip_wrappers(s))
    s = _SPACING.sub("", s).replace("{,}", ",")
    s = _DEGREES.sub("", s)
    percent = _PERCENT.search(s) is not None
    s = _PERCENT.sub("", s)
    s = _strip_wrappers(_CURRENCY.sub("", s))
    s = _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    if (m := _UNIT_TAIL.match(s)) is not None:
        s = m.group(1)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = _POW_BRACE.sub(r"^\1", s)
    if (m := _CHOICE.match(s)) is not None:
        s = m.group(1).upper()
    return s, percent


def _strip_wrappers(s: str) -> str:
    """Peel ``$...$``, ``\\(...\\)``, ``\\[...\\]``, ``\\boxed{...}``/``\\fbox{...}`` and a bare
    ``{...}`` (one group, no top-level comma) off the whole answer, as often as they nest."""
    while True:
        s = s.strip()
        before = s
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : -len(right)]
                break
        else:
            for head in ("\\boxed", "\\fbox", ""):
                if s.startswith(head + "{") and _braced(s, len(head)) == s[len(head) + 1 : -1]:
                    inner = s[len(head) + 1 : -1]
                    if head or _split_items(inner) is None:
                        s = inner
                    break
        if s == before:
            return s


def _split_items(s: str) -> list[str] | None:
    """``s`` split on top-level commas, or None when it has none."""
    items, depth, current = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return items if len(items) > 1 else None


def _split_tuple(s: str) -> tuple[str, list[str], str] | None:
    """``(a,b)`` / ``[a,b)`` / ``\\{a,b\\}`` -> (open, [a, b], close); a bare ``a,b`` -> ("", [a, b], "")."""
    s = s.replace("\\{", "{").replace("\\}", "}")
    if len(s) >= 2 and s[0] in "([{" and s[-1] in ")]}":
        items = _split_items(s[1:-1])
        if items is not None:
            return s[0], items, s[-1]
    items = _split_items(s)
    return ("", items, "") if items is not None else None


def math_equal(prediction: str | None, gold: str | None) -> bool:
    """Whether ``prediction`` states the same answer as ``gold`` (see the module docstring).
    Two empty answers are not equal: an empty answer states nothing."""
    if prediction is None or gold is None:
        return False
    prediction, gold = str(prediction), str(gold)
    if not prediction.strip() or not gold.strip():
        return False
    if prediction.strip() == gold.strip():
        return True
    if len(prediction) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    return _equal(*normalize(prediction), *normalize(gold))


def _equal(p: str, p_pct: bool, g: str, g_pct: bool, depth: int = 0) -> bool:
    if "=" not in g:
        p = _ASSIGN.sub("", p)
    if "=" not in p:
        g = _ASSIGN.sub("", g)
    if p == g or (p.isalpha() and p.lower() == g.lower()):  # "Yes" / "yes"
        return bool(p)
    pv, gv = evaluate(p), evaluate(g)
    if pv is not None and gv is not None:
        if same_value(pv, gv):
            return True
        hundredth = Fraction(1, 100)
        return (p_pct or g_pct) and (same_value(scaled(pv, hundredth), gv) or same_value(pv, scaled(gv, hundredth)))
    pt, gt = _split_tuple(p), _split_tuple(g)
    if not pt or not gt or depth > 3 or len(pt[1]) != len(gt[1]) or len(pt[1]) > _MAX_ITEMS:
        return False
    same = lambda a, b: _equal(*normalize(a), *normalize(b), depth + 1)  # noqa: E731
    unordered = {pt[0], gt[0]} <= {"{", ""} and {pt[2], gt[2]} <= {"}", ""}  # sets, or bare lists
    if unordered:
        rest = list(gt[1])
        for item in pt[1]:
            match = next((i for i, other in enumerate(rest) if same(item, other)), None)
            if match is None:
                return False
            rest.pop(match)
        return True
    return pt[0] == gt[0] and pt[2] == gt[2] and all(same(a, b) for a, b in zip(pt[1], gt[1]))


def gold_answer(gold: object) -> str | None:
    """The reference answer of a dataset row: the ``#### N`` or ``\\boxed{}`` part of a worked
    solution, else the value itself."""
    if gold is None:
        return None
    text = str(gold)
    if "####" in text or "\\boxed" in text or "\\fbox" in text:
        return extract_answer(text)
    return text.strip() or None


def math_reward(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 when the completion's final answer equals the row's ``answer``, else 0.0; None where there is no answer."""
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer):
        reference = gold_answer(gold)
        if reference is None:
            scores.append(None)
            continue
        scores.append(1.0 if math_equal(extract_answer(completion_text(completion)), reference) else 0.0)
    return scores


register("math", math_reward)
