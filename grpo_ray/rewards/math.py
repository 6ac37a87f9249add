"""Math answer verification: pull the final answer out of a completion and compare it to gold.

Pure string and :class:`fractions.Fraction` arithmetic: no ``eval``, no sympy, no LaTeX
parser, so every call is bounded by the (capped) input length and runs in microseconds. It
aims at the verdicts of HuggingFace's ``math-verify`` on GSM8K/MATH-style answers (numbers,
fractions, percentages, units, LaTeX wrappers, tuples); it does not prove symbolic
equivalence (``\\sqrt{8}`` vs ``2\\sqrt{2}`` is unequal here). The agreement measured on a
case table is in ``tests/grpo_ray/rewards/test_math.py``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from math import isqrt

from grpo_ray.rewards.registry import completion_text, register

#: Longer answers are compared as plain strings only.
MAX_ANSWER_CHARS = 2_000
#: Numbers with more digits, or a larger decimal exponent, are not converted to Fraction.
_MAX_DIGITS = 400
_MAX_EXPONENT = 400
#: Two numeric answers are equal when they agree to this many decimals (math-verify's
#: ``float_rounding`` default) or within this relative tolerance.
ROUND_DIGITS = 6
REL_TOL = 1e-6

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
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    if s.startswith("\\boxed{") and s.endswith("}"):
        s = s[len("\\boxed{") : -1]
    s = _unwrap(s)
    s = _SPACING.sub("", s).replace("{,}", ",")
    s = _DEGREES.sub("", s)
    percent = _PERCENT.search(s) is not None
    s = _PERCENT.sub("", s)
    s = _CURRENCY.sub("", s).strip()
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


_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d+))?")
_SLASH = re.compile(r"([-+]?[\d.]+)/([-+]?[\d.]+)")
_FRAC = re.compile(r"(-?)\\frac\{([-+]?[\d.]+)\}\{([-+]?[\d.]+)\}")
_SCI = re.compile(r"([-+]?[\d.]+)(?:\\times|\\cdot|\*)10\^\{?([-+]?\d+)\}?")
_POWER = re.compile(r"(-?)(\d+)\^\{?(\d+)\}?")  # -2^2 is -(2^2)
_SQRT = re.compile(r"\\sqrt\{(\d+)\}")


def to_number(s: str) -> Fraction | None:
    """The exact value of a normalised numeric answer, or None: a decimal, a/b, \\frac{a}{b},
    a\\times10^{b}, an integer power n^k, or the square root of a perfect square."""
    if len(s) > _MAX_DIGITS:
        return None
    if m := _DECIMAL.fullmatch(s):
        if m.group(1) is not None and abs(int(m.group(1))) > _MAX_EXPONENT:
            return None
        return Fraction(s)
    if m := _SLASH.fullmatch(s) or _FRAC.fullmatch(s):
        sign = -1 if m.re is _FRAC and m.group(1) else 1
        num, den = (m.group(1), m.group(2)) if m.re is _SLASH else (m.group(2), m.group(3))
        if not (_DECIMAL.fullmatch(num) and _DECIMAL.fullmatch(den)) or Fraction(den) == 0:
            return None
        return sign * Fraction(num) / Fraction(den)
    if (m := _SCI.fullmatch(s)) and _DECIMAL.fullmatch(m.group(1)) and abs(int(m.group(2))) <= _MAX_EXPONENT:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    if (m := _POWER.fullmatch(s)) and len(m.group(2)) * int(m.group(3)) <= _MAX_DIGITS:
        return (-1 if m.group(1) else 1) * Fraction(int(m.group(2)) ** int(m.group(3)))
    if (m := _SQRT.fullmatch(s)) and isqrt(int(m.group(1))) ** 2 == int(m.group(1)):
        return Fraction(isqrt(int(m.group(1))))
    return None


def _close(a: Fraction, b: Fraction) -> bool:
    """Equal, equal to ``ROUND_DIGITS`` decimals (as math-verify rounds), or within ``REL_TOL``."""
    if a == b or round(a, ROUND_DIGITS) == round(b, ROUND_DIGITS):
        return True
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def _split_tuple(s: str) -> tuple[str, list[str], str] | None:
    """``(a,b)`` / ``[a,b)`` / ``\\{a,b\\}`` -> (open, [a, b], close), splitting on top-level commas."""
    s = s.replace("\\{", "{").replace("\\}", "}")
    if len(s) < 2 or s[0] not in "([{" or s[-1] not in ")]}":
        return None
    items, depth, current = [], 0, ""
    for ch in s[1:-1]:
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
    return (s[0], items, s[-1]) if len(items) > 1 else None


def math_equal(prediction: str | None, gold: str | None) -> bool:
    """Whether ``prediction`` states the same answer as ``gold`` (see the module docstring)."""
    if prediction is None or gold is None:
        return False
    prediction, gold = str(prediction), str(gold)
    if prediction.strip() == gold.strip():
        return True
    if len(prediction) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    return _equal(*normalize(prediction), *normalize(gold))


def _equal(p: str, p_pct: bool, g: str, g_pct: bool) -> bool:
    if "=" not in g:
        p = _ASSIGN.sub("", p)
    if "=" not in p:
        g = _ASSIGN.sub("", g)
    if p == g:
        return True
    pv, gv = to_number(p), to_number(g)
    if pv is not None and gv is not None:
        if _close(pv, gv):
            return True
        return (p_pct or g_pct) and (_close(pv / 100, gv) or _close(pv, gv / 100))
    pt, gt = _split_tuple(p), _split_tuple(g)
    if pt and gt and pt[0] == gt[0] and pt[2] == gt[2] and len(pt[1]) == len(gt[1]):
        return all(_equal(*normalize(a), *normalize(b)) for a, b in zip(pt[1], gt[1]))
    return False


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
