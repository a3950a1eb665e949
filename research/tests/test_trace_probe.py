"""research/trace_probe.py: the first-result probe against hand-written stand-in models."""

from __future__ import annotations

import re

import pytest
import torch

from d1.tasks import get_task
from research.tests.loader import load_script


@pytest.fixture(scope="module")
def probe():
    return load_script("trace_probe")


@pytest.fixture(scope="module")
def examples():
    return get_task("countdown").generate(12, seed=7, exclude=[], num_numbers=3, number_range=[1, 20])


@pytest.fixture(scope="module")
def tokenizer(examples):
    from d1.models.tokenizer import train_tokenizer

    texts = [ex.question for ex in examples] + [ex.solution for ex in examples]
    tok = train_tokenizer(texts * 4, vocab_size=400, split_words=False, number_digits=3)
    assert tok.convert_tokens_to_ids("<|mdm_mask|>") == MASK
    return tok


MASK = 5  # <|mdm_mask|> of the trained tokenizer (checked in the fixture)


class Stub:
    """Logits putting all mass on one token per masked position, chosen by ``rule(text_before, visible_after)``."""

    def __init__(self, tokenizer, rule):
        self.tokenizer, self.rule = tokenizer, rule

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids[0].tolist()
        logits = torch.zeros(1, len(ids), len(self.tokenizer) + 8)
        for j, token in enumerate(ids):
            if token == MASK:
                before = self.tokenizer.decode([t for t in ids[:j] if t != MASK])
                logits[0, j, self.rule(before, [t for t in ids[j + 1:] if t != MASK])] = 1.0
        return logits


def _number_token(tokenizer, value: int) -> int:
    ids = tokenizer(str(value), add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else MASK


def test_a_model_that_computes_scores_in_both_contexts(probe, tokenizer, examples):
    def compute(before: str, _after: list[int]) -> int:
        match = re.search(r"(\d+) ([-+*/]) (\d+) = $", before)
        if match is None:
            return MASK
        a, op, b = int(match[1]), match[2], int(match[3])
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b and a % b == 0 else -1}[op]
        return _number_token(tokenizer, value)

    hits = probe.probe_first_result(Stub(tokenizer, compute), tokenizer, examples, mask_id=MASK)
    assert len(hits["rest gold"]) == len(examples)
    assert sum(hits["rest gold"]) == sum(hits["rest masked"]) == len(examples)


def test_a_model_that_copies_scores_only_with_the_rest_shown(probe, tokenizer, examples):
    def copy_from_line_two(before: str, after: list[int]) -> int:
        # The first number of the visible text after the masked token that is a result of line 1:
        # stand-in for "copy the value from line 2", which needs line 2 shown.
        numbers = [t for t in after if re.fullmatch(r"\d+", tokenizer.decode([t]).strip())]
        return numbers[0] if numbers else MASK

    hits = probe.probe_first_result(Stub(tokenizer, copy_from_line_two), tokenizer, examples, mask_id=MASK)
    assert sum(hits["rest masked"]) == 0
    # line 2 uses the value of line 1; it is the first number after it when line 2 starts with it
    starts_with_it = sum(int(ex.solution.split("\n")[2].split(" ")[0] == ex.solution.split("\n")[1].split(" = ")[1])
                         for ex in examples)
    assert sum(hits["rest gold"]) == starts_with_it > 0


def test_first_result_position_points_after_the_first_equals(probe):
    response = "<reasoning>\n2 + 7 = 9\n18 - 9 = 9\n"
    offsets = [(0, 12), (12, 13), (13, 16), (16, 17), (17, 20), (20, 21), (21, 22)]
    assert response[slice(*offsets[probe.first_result_position(response, offsets)])] == "9"
    assert probe.first_result_position("no trace here", [(0, 13)]) is None


def test_bad_arguments_are_refused(probe, tmp_path):
    with pytest.raises(SystemExit, match="--n must be >= 1, got 0"):
        probe.main([str(tmp_path), "--n", "0"])
    with pytest.raises(SystemExit, match="no model at"):
        probe.main([str(tmp_path)])
