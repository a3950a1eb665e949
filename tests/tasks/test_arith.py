"""The safe arithmetic evaluator: exact values, Python precedence, bounded on adversarial input."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from d1.tasks.arith import (
    ArithError,
    ArithLimitError,
    ArithSyntaxError,
    ArithZeroDivisionError,
    Limits,
    evaluate,
    latex_operators_to_ascii,
    safe_evaluate,
)


@pytest.mark.parametrize(
    "text, value",
    [
        ("55 - 53 + 49", 51),
        ("1+2*3", 7),
        ("(1+2)*3", 9),
        ("2*4-3", 5),
        ("100 - 10 - 1", 89),  # left-associative
        ("100 / 10 / 2", 5),
        ("8/(3-8/3)", 24),  # exact: floats give 23.999999999999996
        ("1/3 + 1/3 + 1/3", 1),
        ("10/4", Fraction(5, 2)),
        ("0.1 + 0.2", Fraction(3, 10)),
        ("5. + .5", Fraction(11, 2)),
        ("-3*-4", 12),
        ("2--3", 5),
        ("+-+3", -3),
        ("-(2+3)*2", -10),
        ("((((7))))", 7),
        ("\t 3 +\n 4 \f", 7),
        ("049 + 1", 50),  # leading zeros read as decimal (Python's eval refused them)
    ],
)
def test_values(text, value):
    assert evaluate(text) == value
    assert isinstance(evaluate(text), Fraction)


@pytest.mark.parametrize(
    "text, error",
    [
        ("1/0", ArithZeroDivisionError),
        ("4 / (2 - 2)", ArithZeroDivisionError),
        ("2**3", ArithSyntaxError),  # only + - * / are operators
        ("7//2", ArithSyntaxError),
        ("9**9**9", ArithSyntaxError),
        ("__import__('os').system('true')", ArithSyntaxError),
        ("3(4)", ArithSyntaxError),
        ("3 4", ArithSyntaxError),
        ("1 .5", ArithSyntaxError),
        ("1.2.3", ArithSyntaxError),
        ("()", ArithSyntaxError),
        ("", ArithSyntaxError),
        ("   ", ArithSyntaxError),
        ("1+", ArithSyntaxError),
        ("(1+2", ArithSyntaxError),
        ("1+2)", ArithSyntaxError),
        ("1e5", ArithSyntaxError),
        ("٣+1", ArithSyntaxError),  # non-ASCII digits, as Python's tokenizer
        ("\\times", ArithSyntaxError),
        ("9" * 101, ArithLimitError),
        ("(" * 201 + "1" + ")" * 201, ArithLimitError),
        ("-" * 201 + "1", ArithLimitError),
        ("*".join(["9" * 100] * 20), ArithLimitError),  # ~6600-bit product
        ("1/" * 600 + "1", ArithLimitError),  # more than 1000 tokens
    ],
)
def test_errors(text, error):
    with pytest.raises(error):
        evaluate(text)
    assert safe_evaluate(text) is None


def test_errors_are_value_errors_and_non_strings_are_rejected():
    assert issubclass(ArithError, ValueError)
    with pytest.raises(ArithSyntaxError):
        evaluate(12)  # type: ignore[arg-type]


def test_limits_are_configurable():
    assert evaluate("(" * 200 + "1" + ")" * 200) == 1
    assert safe_evaluate("((1))", Limits(max_depth=1)) is None
    assert evaluate("9" * 150, Limits(max_literal_digits=200)) == int("9" * 150)


def test_latex_operators():
    assert latex_operators_to_ascii(r"3 \times 4 \div 2 \cdot 5") == "3 * 4 / 2 * 5"
    assert evaluate(latex_operators_to_ascii(r"3 \times 4 \div 2 \cdot 5")) == 30


@pytest.mark.parametrize(
    "text",
    [
        "(" * 50_000 + "1" + ")" * 50_000,
        "9" * 100_000,
        "1" + "+1" * 49_999,
        "1/" * 49_000 + "0",
        "2**99999",
        " " * 99_990 + "1+2",
        "-" * 99_999 + "1",
        "__import__('os')" * 6_000,
    ],
)
def test_adversarial_input_is_fast(text):
    t0 = time.thread_time()
    safe_evaluate(text)
    assert time.thread_time() - t0 < 0.5  # generous; typical is a few ms


# --- property: agrees with direct Fraction arithmetic on random expression trees ---------

def _trees():
    leaf = st.integers(0, 1000).map(lambda n: (str(n), Fraction(n)))

    def combine(children):
        def node(args):
            op, (ls, lv), (rs, rv) = args
            if op == "/" and rv == 0:
                return ls, lv
            value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else 0}[op]
            return f"({ls} {op} {rs})", value

        return st.tuples(st.sampled_from("+-*/"), children, children).map(node)

    return st.recursive(leaf, combine, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_trees())
def test_matches_fraction_arithmetic(tree):
    text, value = tree
    assert evaluate(text, Limits(max_value_bits=100_000)) == value


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*/(). \n", max_size=60))
def test_never_raises_anything_but_arith_error(text):
    try:
        result = evaluate(text)
    except ArithError:
        return
    assert isinstance(result, Fraction)
