"""Shared builders for the model tests: a tiny tokenizer and tiny LLaDA models (CPU, < 1 s)."""

from __future__ import annotations

import pytest
import torch

from d1.models.llada import LLaDAModelLM, initialize_llada_weights, tiny_llada_config
from d1.models.tokenizer import train_tokenizer

# A small corpus in the shape of the real one: a long repeated instruction + short varied parts.
INSTRUCTION = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
    "Using only the numbers {nums}, create an arithmetic expression that evaluates to exactly {target}."
)
SOLUTION = "<reasoning>\n{a} + {b} = {s}\n</reasoning>\n<answer>\n{a} + {b}\n</answer>"


def small_corpus(n: int = 60) -> list[str]:
    texts = []
    for i in range(n):
        a, b = 3 + (7 * i) % 41, 5 + (11 * i) % 37
        texts.append(INSTRUCTION.format(nums=[a, b], target=a + b))
        texts.append(SOLUTION.format(a=a, b=b, s=a + b))
    return texts


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(small_corpus(), vocab_size=512)


def make_tiny_model(vocab_size: int = 64, seed: int = 0, **overrides) -> LLaDAModelLM:
    """A tiny LLaDA (2 layers, width 32) with weights drawn from a seeded generator, in eval mode."""
    values = dict(d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64)
    values.update(overrides)
    model = LLaDAModelLM(tiny_llada_config(vocab_size, **values))
    initialize_llada_weights(model, generator=torch.Generator().manual_seed(seed))
    return model.eval()
