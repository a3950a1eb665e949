"""The shifted-logits adapter (Dream-7B produces the logit for position i at i - 1)."""

from __future__ import annotations

import torch
from torch import nn

from d1.models.dream import ShiftedLogitsModel, shift_logits_right


def test_shift_logits_right_on_hand_built_tensor():
    logits = torch.arange(12.0).view(1, 4, 3)  # rows r0..r3
    shifted = shift_logits_right(logits)
    assert shifted[0].tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 5], [6, 7, 8]]
    loop = torch.stack([logits[:, max(i - 1, 0)] for i in range(4)], dim=1)
    assert torch.equal(shifted, loop)


class NextTokenOracle(nn.Module):
    """A toy 'Dream': row i is a one-hot of token i + 1 (what an AR-initialised model emits)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.config = type("Cfg", (), {"model_type": "Dream", "mask_token_id": vocab - 1})()
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls.append({"attention_mask": attention_mask, "position_ids": position_ids})
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)
        return type("Out", (), {"logits": nn.functional.one_hot(nxt, self.vocab).to(torch.bfloat16)})()


def test_adapter_makes_logit_i_predict_position_i():
    inner = NextTokenOracle(vocab=10)
    model = ShiftedLogitsModel(inner)
    x = torch.tensor([[3, 1, 4, 1, 5, 9]])
    logits = model(x).logits
    assert logits.dtype == torch.float32
    assert logits.argmax(-1)[0, 1:].tolist() == x[0, 1:].tolist()
    assert inner.calls[-1] == {"attention_mask": None, "position_ids": None}
    assert model.config.mask_token_id == 9  # attributes come from the wrapped model


def test_adapter_builds_dream_style_mask_and_positions_for_padding():
    inner = NextTokenOracle(vocab=10)
    model = ShiftedLogitsModel(inner)
    x = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    model(x, attention_mask=mask)
    got = inner.calls[-1]
    assert got["position_ids"].tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    allowed = got["attention_mask"]
    assert allowed.shape == (2, 1, 4, 4) and allowed.dtype == torch.bool
    # real tokens attend to real tokens only; padding rows attend to themselves (never an empty row)
    assert allowed[0, 0, 2].tolist() == [False, False, True, True]
    assert allowed[0, 0, 0].tolist() == [True, False, False, False]
    assert allowed[1, 0].all()
    model(x, attention_mask=torch.ones_like(x))
    assert inner.calls[-1] == {"attention_mask": None, "position_ids": None}
