"""A small, bounded, exact arithmetic evaluator for Countdown equations.

d1's reference code scores Countdown answers with Python's ``eval`` on model
output (after a character whitelist). That is unsafe and unbounded: ``eval``
also accepts ``**`` (``9**9**9`` never finishes) and ``//``. This module
replaces it with our own tokenizer and operator-precedence (shunting-yard)
evaluator, so nothing the model writes is ever executed.

Grammar (the operations the Countdown prompt allows)::

    expr    := term (("+" | "-") term)*
    term    := factor (("*" | "/") factor)*
    factor  := ("+" | "-") factor | NUMBER | "(" expr ")"
    NUMBER  := digits ["." digits*] | "." digits          (ASCII digits only)

``**`` and ``//`` are deliberately not supported (the prompt allows only
``+ - * /``; none of the published d1 baseline answers use them), so they are
syntax errors. Whitespace (``str.isspace``) separates tokens anywhere.

Values are exact :class:`fractions.Fraction` (decimal literals are read
exactly, division is exact), so a comparison like ``abs(v - target) < 1e-5``
has no floating-point surprises. The evaluator is iterative (no recursion),
and bounded by :class:`Limits`: token count, parenthesis/unary nesting, digits
per literal and the bit size of every intermediate value. Every failure is an
:class:`ArithError` subclass; :func:`safe_evaluate` turns it into ``None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction


class ArithError(ValueError):
    """The text is not an expression this module evaluates."""


class ArithSyntaxError(ArithError):
    """A character or token sequence outside the grammar."""


class ArithLimitError(ArithError):
    """The expression exceeds a :class:`Limits` bound (too long, deep or large)."""


class ArithZeroDivisionError(ArithError):
    """Division by zero."""


@dataclass(frozen=True)
class Limits:
    """Bounds that keep evaluation fast on adversarial input."""

    max_tokens: int = 1000  # a Countdown answer has ~10 tokens
    max_depth: int = 200  # open parentheses plus pending unary signs (CPython's parser allows 200)
    max_literal_digits: int = 100
    max_value_bits: int = 4096  # numerator and denominator of every intermediate value


DEFAULT_LIMITS = Limits()

# One token per match; ``bad`` catches the first character outside the grammar.
_TOKEN = re.compile(
    r"(?P<ws>\s+)|(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)|(?P<op>[-+*/()])|(?P<bad>.)",
    re.DOTALL,
)
_BINARY_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_UNARY_PRECEDENCE = 3  # binds tighter than any binary operator
_LATEX_OPERATORS = (("\\div", "/"), ("\\times", "*"), ("\\cdot", "*"))


def latex_operators_to_ascii(text: str) -> str:
    r"""Map ``\div`` to ``/`` and ``\times``/``\cdot`` to ``*`` (as d1's scorer does)."""
    for latex, ascii_op in _LATEX_OPERATORS:
        text = text.replace(latex, ascii_op)
    return text


def _tokens(text: str, limits: Limits) -> list[str]:
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "ws":
            continue
        if kind == "bad":
            raise ArithSyntaxError(f"unexpected character {m.group()!r} at {m.start()}")
        tok = m.group()
        if kind == "num" and sum(c.isdigit() for c in tok) > limits.max_literal_digits:
            raise ArithLimitError("number literal too long")
        out.append(tok)
        if len(out) > limits.max_tokens:
            raise ArithLimitError(f"more than {limits.max_tokens} tokens")
    return out


def _check_size(value: Fraction, limits: Limits) -> Fraction:
    if (
        value.numerator.bit_length() > limits.max_value_bits
        or value.denominator.bit_length() > limits.max_value_bits
    ):
        raise ArithLimitError("intermediate value too large")
    return value


def _apply(op: str, values: list[Fraction], limits: Limits) -> None:
    """Pop the operand(s) of ``op`` from ``values`` and push the result."""
    if op == "u-":
        values[-1] = -values[-1]
        return
    if op == "u+":
        return
    right = values.pop()
    left = values.pop()
    if op == "+":
        result = left + right
    elif op == "-":
        result = left - right
    elif op == "*":
        result = left * right
    else:
        if right == 0:
            raise ArithZeroDivisionError("division by zero")
        result = left / right
    values.append(_check_size(result, limits))


def _precedence(op: str) -> int:
    return _UNARY_PRECEDENCE if op in ("u-", "u+") else _BINARY_PRECEDENCE.get(op, 0)


def evaluate(text: str, limits: Limits = DEFAULT_LIMITS) -> Fraction:
    """Exact value of the arithmetic expression ``text``.

    Raises ArithSyntaxError, ArithLimitError or ArithZeroDivisionError (all
    ArithError, a ValueError). Runs in time linear in ``len(text)`` for any
    input, with the per-value work capped by ``limits.max_value_bits``.
    """
    if not isinstance(text, str):
        raise ArithSyntaxError("expression must be a string")
    values: list[Fraction] = []
    ops: list[str] = []  # operators and "(" awaiting their operands
    depth = 0  # "(" and unary signs on the stack
    expect_operand = True
    for tok in _tokens(text, limits):
        if expect_operand:
            if tok == "(" or tok in ("+", "-"):
                depth += 1
                if depth > limits.max_depth:
                    raise ArithLimitError(f"nesting deeper than {limits.max_depth}")
                ops.append("(" if tok == "(" else "u" + tok)
            elif tok[0].isdigit() or tok[0] == ".":
                values.append(Fraction(tok))
                expect_operand = False
            else:
                raise ArithSyntaxError(f"expected a number, got {tok!r}")
            continue
        if tok in _BINARY_PRECEDENCE:
            prec = _BINARY_PRECEDENCE[tok]
            while ops and ops[-1] != "(" and _precedence(ops[-1]) >= prec:
                op = ops.pop()
                depth -= op in ("u-", "u+")
                _apply(op, values, limits)
            ops.append(tok)
            expect_operand = True
        elif tok == ")":
            while ops and ops[-1] != "(":
                op = ops.pop()
                depth -= op in ("u-", "u+")
                _apply(op, values, limits)
            if not ops:
                raise ArithSyntaxError("unbalanced ')'")
            ops.pop()
            depth -= 1
        else:  # a number or "(" right after an operand: "3 4", "3(4)", "1.2.3"
            raise ArithSyntaxError(f"expected an operator, got {tok!r}")
    if expect_operand:
        raise ArithSyntaxError("expression is empty or ends with an operator")
    while ops:
        op = ops.pop()
        if op == "(":
            raise ArithSyntaxError("unbalanced '('")
        _apply(op, values, limits)
    return values[0]


def safe_evaluate(text: str, limits: Limits = DEFAULT_LIMITS) -> Fraction | None:
    """:func:`evaluate`, with None instead of an ArithError."""
    try:
        return evaluate(text, limits)
    except ArithError:
        return None
