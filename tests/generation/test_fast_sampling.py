"""generate(..., cache=, threshold=): the block-wise KV cache and confidence-threshold parallel decoding."""

from __future__ import annotations

import pytest
import torch

from d1.errors import ConfigError
from d1.generation import CACHE_MODES, generate, left_pad
from tests.generation.test_sampler import MASK, ToyDiffusionLM
from tests.models.conftest import make_tiny_model

VOCAB = 40
LLADA_MASK = VOCAB - 1  # tiny_llada_config: the last id is the mask token
PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8], [7]]


def llada(n_layers: int = 2, seed: int = 0):
    """A float64 tiny LLaDA with sharp logits (scaled output layer), so argmax ties cannot flip tokens."""
    model = make_tiny_model(vocab_size=VOCAB, seed=seed, n_layers=n_layers).double()
    with torch.no_grad():
        model.model.transformer.ff_out.weight.mul_(8.0)
    return model


class CallLog:
    """Records the input width of every forward call of ``model``."""

    def __init__(self, model) -> None:
        self.widths: list[int] = []
        model.register_forward_hook(lambda module, args, kwargs, out: self.widths.append(
            (args[0] if args else kwargs["input_ids"]).shape[1]), with_kwargs=True)


def run(model, prompts=PROMPTS, **kwargs):
    ids, mask = left_pad(prompts, pad_id=0)
    kwargs = dict(dict(gen_length=16, block_length=8, steps=8, mask_id=LLADA_MASK), **kwargs)
    return generate(model, ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("cache", list(CACHE_MODES))
def test_one_step_per_block_every_cache_mode_equals_none(cache):
    model = llada(n_layers=3)
    assert torch.equal(run(model, steps=2, cache=cache), run(model, steps=2))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_layer_model_cached_equals_none_at_every_step_count(cache):
    """One layer: keys/values outside the window depend only on their own tokens, so caching is exact."""
    model = llada(n_layers=1, seed=2)
    for steps in (4, 8, 16):
        assert torch.equal(run(model, steps=steps, cache=cache), run(model, steps=steps)), steps


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_passes_recompute_only_their_window(cache):
    model = llada()
    log = CallLog(model)
    ids, _ = left_pad(PROMPTS, pad_id=0)
    run(model, cache=cache)  # 2 blocks of 8, 4 steps each
    P = ids.shape[1]
    L = P + 16
    windows = {"dual": [8, 8], "prefix": [16, 8]}[cache]  # the window of block 0, of block 1
    assert log.widths == [L] + [windows[0]] * 3 + [L] + [windows[1]] * 3


@pytest.mark.parametrize("cache", list(CACHE_MODES))
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_left_padded_batch_equals_one_by_one(cache, cfg_scale):
    model = llada()
    kwargs = dict(gen_length=16, block_length=8, steps=8, cfg_scale=cfg_scale, mask_id=LLADA_MASK, cache=cache)
    batched = run(model, **kwargs)
    width = max(len(p) for p in PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([prompt]), **kwargs)
        assert torch.equal(batched[row, width:], alone[0, len(prompt):]), (cache, row)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cfg_caches_both_passes(cache):
    # exact on a one-layer model, so guided + cached must give the tokens of guided + uncached
    model = llada(n_layers=1, seed=3)
    assert torch.equal(run(model, cfg_scale=1.0, cache=cache), run(model, cfg_scale=1.0))
    log = CallLog(model)
    run(model, cfg_scale=1.0, cache=cache)
    ids, _ = left_pad(PROMPTS, pad_id=0)
    L = ids.shape[1] + 16
    # per block: a full conditional and a full unconditional pass, then 3 steps of two window passes
    assert log.widths.count(L) == 4 and len(log.widths) == 16


def test_cached_sampling_differs_from_none_on_a_deep_model():
    """The cache is an approximation: on a 3-layer model with several steps per block some token changes
    (if this ever fails the window is not using stale keys/values, i.e. it is not caching at all)."""
    model = llada(n_layers=3, seed=1)
    prompts = [[i % 30 + 1, (7 * i) % 30 + 1, 5] for i in range(12)]
    assert not torch.equal(run(model, prompts, steps=16, cache="dual"), run(model, prompts, steps=16))


@pytest.mark.parametrize("cache", list(CACHE_MODES))
@pytest.mark.parametrize("temperature,remasking", [(0.0, "low_confidence"), (0.7, "low_confidence"),
                                                   (0.7, "random")])
@pytest.mark.parametrize("threshold,steps", [(0.0, 2), (1.5, 16)])
def test_threshold_equivalences(cache, temperature, remasking, threshold, steps):
    """threshold 0 = one step per block (steps 2 for 2 blocks); above 1 = one token per step (steps 16),
    with the same random draws, tokens and decode order."""
    model = llada()
    order_t = torch.full((3, 16), -1)
    order_s = torch.full((3, 16), -1)
    a = run(model, cache=cache, threshold=threshold, temperature=temperature, remasking=remasking,
            generator=torch.Generator().manual_seed(4), decode_order=order_t)
    b = run(model, cache=cache, steps=steps, temperature=temperature, remasking=remasking,
            generator=torch.Generator().manual_seed(4), decode_order=order_s)
    assert torch.equal(a, b)
    assert torch.equal(order_t, order_s)
    expected = [0] * 8 + [1] * 8 if steps == 2 else list(range(16))
    assert sorted(order_t[0].tolist()) == expected


def test_threshold_unmasks_every_confident_position_and_at_least_one():
    """Against a plain loop over a toy model: each step takes every masked position at or above the
    threshold, or the single most confident one when none is."""
    model = ToyDiffusionLM(seed=7, logit_scale=6.0)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    threshold = 0.6
    order = torch.full((1, 8), -1)
    out = generate(model, prompt, gen_length=8, block_length=4, steps=2, mask_id=MASK, threshold=threshold,
                   decode_order=order)
    x = prompt[0].tolist() + [MASK] * 8
    expected_order = [-1] * 8
    step = 0
    for block_start in (5, 9):
        while MASK in x[block_start:block_start + 4]:
            with torch.no_grad():
                probs = model(torch.tensor([x])).logits[0].softmax(-1)
            cands = []
            for pos in range(block_start, block_start + 4):
                if x[pos] == MASK:
                    p = probs[pos].clone()
                    p[MASK] = -1
                    tok = int(p.argmax())
                    cands.append((float(probs[pos, tok]), pos, tok))
            chosen = [c for c in cands if c[0] >= threshold] or [max(cands)]
            for _, pos, tok in chosen:
                x[pos] = tok
                expected_order[pos - 5] = step
            step += 1
    assert out[0].tolist() == x
    assert order[0].tolist() == expected_order
    assert step < 8  # some step unmasked several positions: the threshold did something


@pytest.mark.parametrize("cache", list(CACHE_MODES))
def test_threshold_batched_equals_one_by_one(cache):
    model = llada()
    width = max(len(p) for p in PROMPTS)
    order = torch.full((3, 16), -1)
    batched = run(model, cache=cache, threshold=0.3, decode_order=order)
    for row, prompt in enumerate(PROMPTS):
        alone_order = torch.full((1, 16), -1)
        alone = generate(model, torch.tensor([prompt]), gen_length=16, block_length=8, steps=8,
                         mask_id=LLADA_MASK, cache=cache, threshold=0.3, decode_order=alone_order)
        assert torch.equal(batched[row, width:], alone[0, len(prompt):]), row
        assert torch.equal(order[row], alone_order[0]), row  # steps are counted per row


def test_cache_on_a_lora_wrapped_model():
    from d1.models.lora import apply_lora

    model = llada(n_layers=1)  # exact with a cache, so the cached tokens must equal the uncached ones
    wrapped = apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj"], dropout=0.0)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    log = CallLog(model)
    plain = run(wrapped, steps=8)
    assert torch.equal(run(wrapped, steps=8, cache="dual"), plain)
    assert 8 in log.widths  # window passes went through the peft wrapper
    assert not torch.equal(plain, run(llada(n_layers=1), steps=8))  # the adapter is active in both


def test_model_without_cache_support_is_named():
    with pytest.raises(ConfigError, match=r"cache='dual' needs a model that takes kv_cache=.*ToyDiffusionLM"):
        generate(ToyDiffusionLM(), torch.tensor([[1, 2]]), gen_length=4, block_length=4, steps=4, mask_id=MASK,
                 cache="dual")


@pytest.mark.parametrize("kwargs,message", [
    (dict(cache="full"), r"unknown cache 'full'; expected one of \('none', 'prefix', 'dual'\)"),
    (dict(threshold=-0.1), "threshold must be None or a number >= 0, got -0.1"),
    (dict(threshold=True), "threshold must be None or a number >= 0, got True"),
    (dict(threshold="0.9"), "threshold must be None or a number >= 0, got '0.9'"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate(ToyDiffusionLM(), torch.tensor([[1, 2]]), gen_length=4, block_length=4, steps=4, mask_id=MASK,
                 **kwargs)
