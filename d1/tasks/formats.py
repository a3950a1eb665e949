"""Shared parsing of the d1 output format: ``<reasoning>``/``<answer>`` tags and ``\\boxed{}``.

All helpers are linear-time in the input and never raise on arbitrary text.
"""

from __future__ import annotations

import re

def extract_xml_answer(text: str) -> str:
    """d1's ``extract_xml_answer``: text after the last ``<answer>`` and before the
    next ``</answer>``, stripped. With no tags at all this is the whole text."""
    answer = text.split("<answer>")[-1]
    return answer.split("</answer>")[0].strip()


def answer_blocks(text: str) -> list[str]:
    """Contents of the ``<answer>...</answer>`` blocks, unstripped, exactly as
    ``re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)`` finds them, but in
    linear time (the lazy regex is quadratic on many unclosed ``<answer>`` tags)."""
    blocks, pos = [], 0
    while True:
        start = text.find("<answer>", pos)
        if start < 0:
            return blocks
        end = text.find("</answer>", start + len("<answer>"))
        if end < 0:
            return blocks
        blocks.append(text[start + len("<answer>") : end])
        pos = end + len("</answer>")


def first_answer_block(text: str) -> str | None:
    """Content of the first complete ``<answer>...</answer>`` block, stripped; None if none."""
    start = text.find("<answer>")
    end = text.find("</answer>", start + len("<answer>")) if start >= 0 else -1
    return text[start + len("<answer>") : end].strip() if end >= 0 else None


def last_answer_block(text: str) -> str | None:
    """Content of the last block :func:`answer_blocks` finds, stripped; None if none."""
    blocks = answer_blocks(text)
    return blocks[-1].strip() if blocks else None


def last_boxed_only_string(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, as in the
    MATH paper's code; ``\\boxed 5`` (space form) returns up to the next ``$``.
    None when there is none or its braces never close."""
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    if text.startswith("\\boxed ", idx):
        return "\\boxed " + text[idx + len("\\boxed ") :].split("$")[0]
    depth = 0
    for i in range(idx, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[idx : i + 1]
    return None


def remove_boxed(s: str | None) -> str | None:
    """Inner text of ``\\boxed{...}``/``\\fbox{...}``/``\\boxed ...``; None if ``s`` is not one."""
    if s is None:
        return None
    if s.startswith("\\boxed "):
        return s[len("\\boxed ") :]
    for left in ("\\boxed{", "\\fbox{"):
        if s.startswith(left) and s.endswith("}"):
            return s[len(left) : -1]
    return None
