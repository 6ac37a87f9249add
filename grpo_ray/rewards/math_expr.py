"""The value of a numeric answer written as plain or LaTeX arithmetic, and when two values agree.

``evaluate("\\frac{\\sqrt{2}}{2}")`` and ``evaluate("\\sqrt2/2")`` give the same value;
``evaluate("2+3") == 5``; ``evaluate("x+1")`` is None (not a number). Rational values are kept
exactly (:class:`fractions.Fraction`), so integers beyond float precision stay distinct;
irrational ones (roots, powers with fractional exponents, pi) are computed to 50 significant
digits with :mod:`decimal`. A recursive-descent parser over a capped input: no ``eval``, no
sympy; bounded depth, exponents and digit counts, so every call is fast.

Grammar (after :func:`grpo_ray.rewards.math.normalize`, which removes spaces and wrappers)::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/' | \\times | \\cdot | \\div | implicit) unary)*
    unary  := ('-' | '+') unary | power
    power  := atom ('^' unary-atom)?
    atom   := number | '(' expr ')' | '{' expr '}' | \\frac{expr}{expr} | \\sqrt[n]{expr} | \\pi
              | integer \\frac{int}{int}     (a mixed number: 3\\frac{1}{2} = 3.5)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext
from fractions import Fraction
from math import isqrt

#: Largest |exponent| and most digits an exact value may reach before evaluation gives up.
MAX_EXPONENT = 400
MAX_DIGITS = 400
MAX_DEPTH = 40
#: Decimals compared when either side is written as a decimal approximation (math-verify's
#: ``float_rounding``): 1/3 equals 0.333333.
ROUND_DIGITS = 6
_PRECISION = 50
_PI = Decimal("3.14159265358979323846264338327950288419716939937510")
_CONTEXT = Context(prec=_PRECISION, Emax=100_000, Emin=-100_000, traps=[InvalidOperation, DivisionByZero, Overflow])
_TOKEN = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\\[A-Za-z]+|[-+*/^(){}\[\]]")
_COMMANDS = {"\\frac", "\\sqrt", "\\pi", "\\times", "\\cdot", "\\div"}
_STARTS_ATOM = ("(", "{", "\\frac", "\\sqrt", "\\pi")  # after a value: implicit multiplication


@dataclass(frozen=True)
class Value:
    approx: Decimal  # 50 significant digits
    exact: Fraction | None  # the exact value when it is rational
    rounded: bool = False  # written with a decimal fraction somewhere: compare to ROUND_DIGITS decimals

    @staticmethod
    def of(exact: Fraction, rounded: bool = False) -> "Value":
        _check_size(exact)
        return Value(Decimal(exact.numerator) / Decimal(exact.denominator), exact, rounded)


class _NotNumeric(Exception):
    """The text is not a bounded numeric expression."""


def _check_size(x: Fraction) -> None:
    if x.numerator.bit_length() > MAX_DIGITS * 3.33 or x.denominator.bit_length() > MAX_DIGITS * 3.33:
        raise _NotNumeric


def evaluate(text: str) -> Value | None:
    """The value of ``text``, or None when it is not a (bounded) numeric expression."""
    if not text or len(text) > 4 * MAX_DIGITS:
        return None
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != text or any(t.startswith("\\") and t not in _COMMANDS for t in tokens):
        return None  # letters, commas, '=' ...: not a number
    try:
        with localcontext(_CONTEXT):
            parser = _Parser(tokens)
            value = parser.expr()
            if parser.pos != len(tokens):
                return None
            return value
    except (_NotNumeric, ArithmeticError, RecursionError, ValueError):
        return None


def same_value(a: Value, b: Value) -> bool:
    """Equal values: exactly when both are rational and written exactly; to ROUND_DIGITS
    decimals when either is written as a decimal; else to 50 digits (irrational forms)."""
    with localcontext(_CONTEXT):
        try:
            if a.rounded or b.rounded:
                return _rounded(a) == _rounded(b)
            if a.exact is not None and b.exact is not None:
                return a.exact == b.exact
            scale = max(Decimal(1), abs(a.approx), abs(b.approx))
            return abs(a.approx - b.approx) <= scale * Decimal(10) ** (8 - _PRECISION)
        except ArithmeticError:
            return False


def scaled(v: Value, factor: Fraction) -> Value:
    """``v * factor`` (used for percentages)."""
    with localcontext(_CONTEXT):
        return _mul(v, Value.of(factor))


def _rounded(v: Value) -> Fraction:
    if v.exact is not None:
        return round(v.exact, ROUND_DIGITS)
    return Fraction(v.approx.quantize(Decimal(1).scaleb(-ROUND_DIGITS)))


def _add(a: Value, b: Value, sign: int = 1) -> Value:
    exact = a.exact + sign * b.exact if a.exact is not None and b.exact is not None else None
    if exact is not None:
        return Value.of(exact, a.rounded or b.rounded)
    return Value(a.approx + sign * b.approx, None, a.rounded or b.rounded)


def _mul(a: Value, b: Value) -> Value:
    if a.exact is not None and b.exact is not None:
        return Value.of(a.exact * b.exact, a.rounded or b.rounded)
    return Value(a.approx * b.approx, None, a.rounded or b.rounded)


def _div(a: Value, b: Value) -> Value:
    if b.approx == 0:
        raise _NotNumeric
    if a.exact is not None and b.exact is not None:
        return Value.of(a.exact / b.exact, a.rounded or b.rounded)
    return Value(a.approx / b.approx, None, a.rounded or b.rounded)


def _root(x: Fraction) -> Fraction | None:
    """The exact square root of a rational, when it is rational."""
    if x < 0:
        raise _NotNumeric
    num, den = isqrt(x.numerator), isqrt(x.denominator)
    return Fraction(num, den) if num * num == x.numerator and den * den == x.denominator else None


def _pow(base: Value, exponent: Value) -> Value:
    rounded = base.rounded or exponent.rounded
    e = exponent.exact
    if e is not None and e.denominator == 1 and base.exact is not None:
        k = int(e)
        if abs(k) > MAX_EXPONENT or (base.exact == 0 and k < 0):
            raise _NotNumeric
        size = max(base.exact.numerator.bit_length(), base.exact.denominator.bit_length())
        if size * abs(k) > MAX_DIGITS * 3.33:
            raise _NotNumeric
        return Value.of(base.exact**k, rounded)
    if abs(exponent.approx) > MAX_EXPONENT:
        raise _NotNumeric
    if e == Fraction(1, 2) and base.exact is not None and (r := _root(base.exact)) is not None:
        return Value.of(r, rounded)
    return Value(base.approx**exponent.approx, None, rounded)


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _NotNumeric
        self.pos += 1
        return token

    def expr(self) -> Value:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _NotNumeric
        value = self.term()
        while self.peek() in ("+", "-"):
            sign = 1 if self.take() == "+" else -1
            value = _add(value, self.term(), sign)
        self.depth -= 1
        return value

    def term(self) -> Value:
        value = self.unary()
        while True:
            token = self.peek()
            if token in ("*", "\\times", "\\cdot"):
                self.take()
                value = _mul(value, self.unary())
            elif token in ("/", "\\div"):
                self.take()
                value = _div(value, self.unary())
            elif token is not None and (token in _STARTS_ATOM or token[0].isdigit() or token[0] == "."):
                value = _mul(value, self.unary())  # implicit: 2\sqrt{3}, 2\pi, 3(4)
            else:
                return value

    def unary(self) -> Value:
        if self.peek() in ("-", "+"):
            sign = -1 if self.take() == "-" else 1
            value = self.unary()
            return _mul(Value.of(Fraction(sign)), value)
        return self.power()

    def power(self) -> Value:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.unary() if self.peek() in ("-", "+") else self.atom()
            return _pow(base, exponent)
        return base

    def atom(self) -> Value:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            value = _number(token)
            if self.peek() == "\\frac" and "." not in token and (mixed := self._mixed_fraction()) is not None:
                return Value.of(value.exact + mixed)  # 3\frac{1}{2}
            return value
        if token in ("(", "{"):
            value = self.expr()
            self.take(")" if token == "(" else "}")
            return value
        if token == "\\frac":
            return _div(self.group(), self.group())
        if token == "\\sqrt":
            degree = Value.of(Fraction(2))
            if self.peek() == "[":
                self.take()
                degree = self.expr()
                self.take("]")
            return _pow(self.group(), _div(Value.of(Fraction(1)), degree))
        if token == "\\pi":
            return Value(_PI, None)
        raise _NotNumeric

    def group(self) -> Value:
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def _mixed_fraction(self) -> Fraction | None:
        """``\\frac{a}{b}`` with integer a < b right after an integer: the fraction part of a mixed number."""
        t = self.tokens[self.pos : self.pos + 7]
        if len(t) == 7 and t[1] == "{" == t[4] and t[3] == "}" == t[6] and t[2].isdigit() and t[5].isdigit():
            num, den = int(t[2]), int(t[5])
            if 0 < num < den:
                self.pos += 7
                return Fraction(num, den)
        return None


def _number(token: str) -> Value:
    mantissa, _, exponent = token.lower().partition("e")
    if exponent and abs(int(exponent)) > MAX_EXPONENT:
        raise _NotNumeric
    if len(mantissa) > MAX_DIGITS:
        raise _NotNumeric
    fraction_digits = mantissa.partition(".")[2]
    return Value.of(Fraction(token), rounded=bool(fraction_digits))
