"""MATH-style answer equivalence: string normalisation, then exact comparison.

This is the normalisation of the MATH paper (Hendrycks et al. 2021,
``is_equiv``/``strip_string``), which d1 uses for MATH500 rewards and
evaluation. It is a *string* canonicaliser, not a symbolic checker: it removes
LaTeX noise (``\\left``, ``\\!``, ``$``, degrees, percent, trailing units),
rewrites ``\\dfrac``/``\\tfrac`` to ``\\frac``, adds braces to ``\\frac12`` and
``\\sqrt3``, turns ``a/b`` of plain integers into ``\\frac{a}{b}`` and maps the
literal ``0.5`` to ``\\frac{1}{2}``. ``"2"`` and ``"2.0"`` stay different, as
in the paper.

Where the common copies of that code (including d1's) raise and silently fall
back to comparing the raw strings, we apply the evident intent instead:

* ``a/b`` with non-integer parts: the copies catch only AssertionError around
  ``int()``, so e.g. ``x/2`` raised ValueError and the whole comparison became
  raw-string equality. Here the string is simply left unchanged.
* several ``\\text{ `` unit suffixes: an assertion required exactly one; here
  everything from the first one on is dropped.
* ``\\sqrt`` or ``\\frac`` at the very end, or directly followed by another
  command of the same name: the copies index past the end (IndexError) or give
  up on the whole string; here that one occurrence is left as it is.

Every step is a linear scan (``str.replace``/``split``/``join``); nothing here
raises on any ``str`` input.
"""

from __future__ import annotations

import re

# Plain replacements applied in order before the structural fixes.
_LITERAL_REWRITES: tuple[tuple[str, str], ...] = (
    ("\n", ""),
    ("\\!", ""),  # thin negative space
    ("\\\\", "\\"),
    ("tfrac", "frac"),
    ("dfrac", "frac"),
    ("\\left", ""),
    ("\\right", ""),
    ("^{\\circ}", ""),  # degrees
    ("^\\circ", ""),
    ("\\$", ""),  # escaped dollar signs
)

_UNIT_MARKER = "\\text{ "  # in MATH answers "\text{ cm}" style suffixes are units
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")


def _drop_units(s: str) -> str:
    """Keep what precedes the first ``\\text{ `` (a unit suffix)."""
    cut = s.find(_UNIT_MARKER)
    return s if cut < 0 else s[:cut]


def _brace_first_char(s: str, command: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``: wrap the character right after ``command``
    in braces unless it is already ``{``. Empty segments (command at the end or
    repeated) are left alone."""
    parts = s.split(command)
    if len(parts) == 1:
        return s
    out = [parts[0]]
    for seg in parts[1:]:
        out.append(command)
        if seg and seg[0] != "{":
            out.append("{" + seg[0] + "}" + seg[1:])
        else:
            out.append(seg)
    return "".join(out)


def _brace_frac_args(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``,
    ``\\frac{a}b`` is left as is (as in the paper: only a bare first argument
    triggers the fix). Runs after spaces are removed."""
    parts = s.split("\\frac")
    if len(parts) == 1:
        return s
    out = [parts[0]]
    for seg in parts[1:]:
        out.append("\\frac")
        if len(seg) < 2 or seg[0] == "{":
            out.append(seg)  # already braced, or too short to hold two arguments
        elif seg[1] == "{":
            out.append("{" + seg[0] + "}" + seg[1:])
        else:
            out.append("{" + seg[0] + "}{" + seg[1] + "}" + seg[2:])
    return "".join(out)


def _slash_to_frac(s: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}`` when both sides are canonical integers."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    num, den = parts
    if _CANONICAL_INT.fullmatch(num) and _CANONICAL_INT.fullmatch(den):
        return "\\frac{" + num + "}{" + den + "}"
    return s


def normalize_math_answer(answer: str) -> str:
    """MATH-paper canonical form of an answer string (see module docstring)."""
    s = answer
    for old, new in _LITERAL_REWRITES:
        s = s.replace(old, new)
    s = _drop_units(s)
    s = s.replace("\\%", "")
    # ".5" means "0.5" after a space, a brace, or at the start
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    # "x = 5" / "k=5" -> "5": a short left-hand side names the variable
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _brace_first_char(s, "\\sqrt")
    s = s.replace(" ", "")
    s = _brace_frac_args(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_to_frac(s)


def is_equiv(candidate: str | None, reference: str | None) -> bool:
    """True when both answers have the same MATH normal form.

    None (no answer extracted) is never equivalent to anything, not even None:
    a reward must not be granted for a missing answer.
    """
    if not isinstance(candidate, str) or not isinstance(reference, str):
        return False
    return normalize_math_answer(candidate) == normalize_math_answer(reference)
