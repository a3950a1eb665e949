"""Masked SFT trainer: gradient accumulation, resume, LoRA, merge, metrics, learning."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from d1.algo.masking import count_response_tokens, forward_mask, masked_sft_loss, sample_mask_ratio, sft_collate
from d1.models.loading import load_model, load_tokenizer, token_ids
import d1.train.masked_diffusion as loop_module
import d1.train.sft as sft_module
from d1.errors import ConfigError
from d1.train.common import make_generator, positions_for_step
from d1.train.sft_config import SFTConfig
from d1.train.run import TrainingRun
from d1.train.sft import run_sft, sft_rows

MAX_LEN = 224


def sft_config(base, data, out, **overrides) -> SFTConfig:
    values = dict(model_path=str(base), data_dir=str(data), tasks=["countdown"], out_dir=str(out),
                  max_length=MAX_LEN, batch_size=2, grad_accum=2, max_steps=4, lr=1e-3, lora_r=4,
                  lora_alpha=8.0, lora_dropout=0.0, save_steps=0, merge_adapter=False, device="cpu")
    values.update(overrides)
    cfg = SFTConfig(**values)
    cfg.validate()
    return cfg


@pytest.fixture
def grads_at_step(monkeypatch):
    """Record the trainable gradients at every optimiser step (just before the update)."""
    recorded: list[dict[str, torch.Tensor]] = []
    original = TrainingRun.optimizer_step

    def recording(self):
        if self.accelerator.sync_gradients:
            recorded.append({n: p.grad.detach().clone() for n, p in self.unwrapped.named_parameters()
                             if p.requires_grad and p.grad is not None})
        original(self)

    monkeypatch.setattr(TrainingRun, "optimizer_step", recording)
    return recorded


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-7, msg=name)


def test_accumulation_1x4_equals_4x1_and_the_whole_batch_loss(tiny_base, tiny_data, tmp_path, grads_at_step):
    one_by_four = sft_config(tiny_base, tiny_data, tmp_path / "a", batch_size=4, grad_accum=1, max_steps=1,
                             full_finetune=True)
    four_by_one = sft_config(tiny_base, tiny_data, tmp_path / "b", batch_size=1, grad_accum=4, max_steps=1,
                             full_finetune=True)
    run_sft(one_by_four)
    run_sft(four_by_one)
    assert len(grads_at_step) == 2
    assert_same_grads(grads_at_step[0], grads_at_step[1])

    # The same step computed by hand from the spec: one batch, CE/t over masked tokens / response tokens.
    tokenizer = load_tokenizer(tiny_base)
    model = load_model(tiny_base)
    ids = token_ids(model, tokenizer)
    rows, _ = sft_rows(tokenizer, str(tiny_data), ["countdown"], max_length=MAX_LEN)
    chosen = positions_for_step(0, 4, len(rows), one_by_four.seed)
    batch = sft_collate([rows.prompts[i] for i in chosen], [rows.responses[i] for i in chosen],
                        eos_id=ids.eos_id, max_length=MAX_LEN)
    gen = make_generator(one_by_four.seed, "sft", "mask", 0, 0)
    t = sample_mask_ratio(4, eps=1e-3, generator=gen)
    noisy, is_masked = forward_mask(batch["input_ids"], ~batch["prompt_mask"], t, ids.mask_id, generator=gen)
    assert not is_masked[batch["prompt_mask"]].any()
    loss = masked_sft_loss(model(noisy).logits, batch["input_ids"], is_masked, t,
                           count_response_tokens(batch["prompt_mask"]))
    loss.backward()
    by_hand = {n: p.grad for n, p in model.named_parameters()}
    assert_same_grads(grads_at_step[0], by_hand)


@pytest.mark.parametrize("full_finetune", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_base, tiny_data, tmp_path, grads_at_step,
                                                         full_finetune):
    kw = dict(max_steps=1, full_finetune=full_finetune, lora_dropout=0.1)
    run_sft(sft_config(tiny_base, tiny_data, tmp_path / "plain", **kw))
    run_sft(sft_config(tiny_base, tiny_data, tmp_path / "ckpt", gradient_checkpointing=True, **kw))
    assert_same_grads(grads_at_step[0], grads_at_step[1])


class Killed(Exception):
    pass


def kill_after(step: int):
    def callback(done: int, metrics: dict) -> None:
        if done == step:
            raise Killed(f"simulated kill after step {done}")
    return callback


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny_base, tiny_data, tmp_path):
    # LoRA dropout on: dropout draws must be reproducible across the kill too.
    common = dict(max_steps=6, save_steps=3, lora_dropout=0.1, save_total_limit=1)
    # The caller's global RNG differs between the calls: the runs must not depend on it.
    straight = sft_config(tiny_base, tiny_data, tmp_path / "straight", **common)
    torch.manual_seed(1)
    run_sft(straight)

    broken = sft_config(tiny_base, tiny_data, tmp_path / "broken", **common)
    torch.manual_seed(2)
    with pytest.raises(Killed):
        run_sft(broken, callbacks=[kill_after(4)])  # checkpoint at 3, step 4 done and lost
    torch.manual_seed(3)
    summary = run_sft(broken, resume=True)
    assert summary["resumed_from"] == 3

    a = load_file(str(tmp_path / "straight" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "broken" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in a.items())  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)
    # every step appears once in the metrics log, although steps 4 was logged twice
    with open(tmp_path / "broken" / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")]
    assert steps == [1, 2, 3, 4, 5, 6]
    # keep the last K checkpoints
    assert [p.name for p in (tmp_path / "broken" / "checkpoints").iterdir()] == ["step-6"]


def test_resume_with_a_changed_config_is_refused(tiny_base, tiny_data, tmp_path):
    cfg = sft_config(tiny_base, tiny_data, tmp_path / "r", max_steps=1, save_steps=1)
    run_sft(cfg)
    changed = sft_config(tiny_base, tiny_data, tmp_path / "r", max_steps=2, save_steps=1, lr=0.5)
    with pytest.raises(Exception, match=r"cannot resume.*lr"):
        run_sft(changed, resume=True)


def test_lora_trains_only_the_adapter_and_merge_matches(tiny_base, tiny_data, tmp_path, monkeypatch):
    final_state = {}
    original_finish = TrainingRun.finish

    def snapshot(self):
        final_state.update({k: v.detach().clone() for k, v in self.unwrapped.state_dict().items()})
        return original_finish(self)

    monkeypatch.setattr(TrainingRun, "finish", snapshot)
    cfg = sft_config(tiny_base, tiny_data, tmp_path / "lora", max_steps=3, merge_adapter=True, lr=1e-2)
    summary = run_sft(cfg)
    base = load_model(tiny_base).state_dict()
    lora_keys = [k for k in final_state if "lora_" in k]
    assert lora_keys
    for key, value in final_state.items():
        if "lora_" in key:
            continue
        plain = key.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(value, base[plain]), key  # frozen base weights did not move
    assert any(final_state[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"] / 5

    # the merged model (model/) computes what base + adapter (adapter/) computes
    from peft import PeftModel

    merged = load_model(tmp_path / "lora" / "model").eval()
    with_adapter = PeftModel.from_pretrained(load_model(tiny_base), str(tmp_path / "lora" / "adapter")).eval()
    x = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, with_adapter(x).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(merged(x).logits, load_model(tiny_base)(x).logits)
    assert (tmp_path / "lora" / "model" / "tokenizer.json").is_file()


def test_metrics_and_outputs_are_written(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "m"
    cfg = sft_config(tiny_base, tiny_data, out, max_steps=3, save_steps=1, save_total_limit=2)
    summary = run_sft(cfg)
    metrics = json.loads((out / "dvclive" / "metrics.json").read_text())
    assert metrics["step"] == 3
    for group, key in [("train", "loss"), ("train", "unscaled_loss"), ("train", "grad_norm"), ("train", "lr"),
                       ("perf", "tokens_per_s")]:
        assert metrics[group][key] > 0, (group, key)
    assert (out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert json.loads((out / "sft_config.json").read_text())["max_steps"] == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-3"]
    ckpt = out / "checkpoints" / "step-3"
    for name in ("model/adapter_model.safetensors", "model/tokenizer.json", "optimizer.pt", "scheduler.pt",
                 "rng_state_0.pt", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 3
    assert (out / "model" / "adapter_config.json").is_file() and summary["steps"] == 3


def test_sft_loss_goes_down(tiny_base, tiny_data, tmp_path):
    seen = []
    cfg = sft_config(tiny_base, tiny_data, tmp_path / "learn", full_finetune=True, max_steps=40, batch_size=4,
                     grad_accum=1, lr=3e-3, lr_scheduler="constant")
    run_sft(cfg, callbacks=[lambda step, m: seen.append(m["train/unscaled_loss"])])
    first, last = sum(seen[:5]) / 5, sum(seen[-5:]) / 5
    assert last < 0.75 * first, (first, last)


def test_pad_to_longest_keeps_accumulation_exact_and_shortens_rows(tiny_base, tiny_data, tmp_path, grads_at_step,
                                                                   monkeypatch):
    one_by_four = sft_config(tiny_base, tiny_data, tmp_path / "a", batch_size=4, grad_accum=1, max_steps=1,
                             full_finetune=True, pad_to="longest")
    four_by_one = sft_config(tiny_base, tiny_data, tmp_path / "b", batch_size=1, grad_accum=4, max_steps=1,
                             full_finetune=True, pad_to="longest")
    run_sft(one_by_four)
    run_sft(four_by_one)
    assert_same_grads(grads_at_step[0], grads_at_step[1])
    # The rows of the step are as long as the longest chosen example, not max_length.
    tokenizer = load_tokenizer(tiny_base)
    rows, _ = sft_rows(tokenizer, str(tiny_data), ["countdown"], max_length=2 * MAX_LEN)
    chosen = positions_for_step(0, 4, len(rows), one_by_four.seed)
    longest = max(len(rows.prompts[i]) + len(rows.responses[i]) for i in chosen)
    assert longest < 2 * MAX_LEN
    seen = []
    real_collate = loop_module.sft_collate

    def spy(prompts, responses, *, eos_id, max_length):
        seen.append(max_length)
        return real_collate(prompts, responses, eos_id=eos_id, max_length=max_length)

    monkeypatch.setattr(loop_module, "sft_collate", spy)
    run_sft(sft_config(tiny_base, tiny_data, tmp_path / "c", batch_size=4, grad_accum=1, max_steps=1,
                       full_finetune=True, pad_to="longest", max_length=2 * MAX_LEN))
    assert seen == [longest]
    with pytest.raises(ConfigError, match="pad_to"):
        sft_config(tiny_base, tiny_data, tmp_path / "d", pad_to="shortest")


def test_prefix_copies_move_the_response_head_into_the_never_masked_prompt(tiny_base, tiny_data, tmp_path):
    tokenizer = load_tokenizer(tiny_base)
    plain, plain_stats = sft_rows(tokenizer, str(tiny_data), ["countdown"], max_length=MAX_LEN)
    rows, stats = sft_rows(tokenizer, str(tiny_data), ["countdown"], max_length=MAX_LEN, prefix_marker=" = ")
    n = len(plain)
    assert "prefix_copies" not in plain_stats
    assert stats["prefix_copies"] == n and stats["rows"] == 2 * n and stats["prefix_skipped"] == 0
    assert rows.prompts[:n] == plain.prompts and rows.responses[:n] == plain.responses
    for i in range(n):
        head = rows.prompts[n + i][len(plain.prompts[i]):]
        # The copy is the same token sequence, split later: prompt + head + tail == prompt + response.
        assert rows.prompts[n + i][:len(plain.prompts[i])] == plain.prompts[i]
        assert head + rows.responses[n + i] == plain.responses[i]
        # Cut right after the first " = ": the head's text ends with it and holds no earlier one.
        head_text = tokenizer.decode(head)
        assert head_text.endswith(" = ") and head_text.count(" = ") == 1, head_text
    # The copies' prompts are never masked: the collator marks them as prompt.
    batch = sft_collate(rows.prompts[n:n + 2], rows.responses[n:n + 2], eos_id=token_ids(load_model(tiny_base),
                        tokenizer).eos_id, max_length=MAX_LEN)
    assert batch["prompt_mask"].sum(dim=1).tolist() == [len(rows.prompts[n]), len(rows.prompts[n + 1])]


def test_prefix_fraction_marker_missing_and_validation(tiny_base, tiny_data, tmp_path):
    tokenizer = load_tokenizer(tiny_base)
    half, stats = sft_rows(tokenizer, str(tiny_data), ["countdown"], max_length=MAX_LEN, prefix_marker=" = ",
                           prefix_fraction=0.5, seed=3)
    again, _ = sft_rows(tokenizer, str(tiny_data), ["countdown"], max_length=MAX_LEN, prefix_marker=" = ",
                        prefix_fraction=0.5, seed=3)
    assert 0 < stats["prefix_copies"] < stats["examples"] and half.prompts == again.prompts
    none, stats = sft_rows(tokenizer, str(tiny_data), ["countdown"], max_length=MAX_LEN,
                           prefix_marker="no such marker")
    assert stats["prefix_copies"] == 0 and stats["prefix_skipped"] == stats["examples"] == len(none)
    with pytest.raises(ConfigError, match=r"sft.prefix_fraction: must be in \[0, 1\], got 1.5"):
        sft_config(tiny_base, tiny_data, tmp_path / "x", prefix_fraction=1.5)
    # run_sft passes the fields through: the data stats of the run count the copies.
    result = run_sft(sft_config(tiny_base, tiny_data, tmp_path / "run", max_steps=1, prefix_marker=" = ",
                                full_finetune=True))
    assert result["data"]["prefix_copies"] == result["data"]["examples"]


def test_prefix_cuts_marker_and_pattern():
    import re

    response = "<reasoning>\n19 - 2 = 17\n17 + 14 = 31\n</reasoning>\n<answer>\n(19 - 2) + 14\n</answer>"
    first = response.index(" = ") + 3
    assert sft_module.prefix_cuts(response, marker=" = ") == [first]
    assert sft_module.prefix_cuts(response, marker="absent") == []
    cuts = sft_module.prefix_cuts(response, pattern=re.compile(r" = |\d\n(?=\d)|<answer>\n"))
    # After each "a op b = ", after the first reasoning line (a digit line followed by a digit line), before the answer.
    expected = [first, response.index("17\n17") + 3, response.index(" = ", first) + 3,
                response.index("<answer>\n") + len("<answer>\n")]
    assert cuts == expected
    # A match at the very end leaves nothing to learn, an empty match cuts nothing: both are dropped.
    assert sft_module.prefix_cuts("a = b = ", pattern=re.compile(" = ")) == [4]
    assert sft_module.prefix_cuts("abc", pattern=re.compile("x*")) == []


def test_prefix_pattern_gives_one_copy_per_match(tiny_base, tiny_data, tmp_path):
    tokenizer = load_tokenizer(tiny_base)
    plain, _ = sft_rows(tokenizer, str(tiny_data), ["countdown"], max_length=MAX_LEN)
    pattern = r" = |<answer>\n"
    rows, stats = sft_rows(tokenizer, str(tiny_data), ["countdown"], max_length=MAX_LEN, prefix_pattern=pattern)
    n = len(plain)
    texts = [tokenizer.decode(r) for r in plain.responses]
    per_example = [t.count(" = ") + t.count("<answer>\n") for t in texts]
    assert min(per_example) >= 2  # at least one reasoning line and the answer in every worked solution
    assert stats["prefix_copies"] == sum(per_example) == len(rows) - n and stats["prefix_skipped"] == 0
    assert rows.prompts[:n] == plain.prompts and rows.responses[:n] == plain.responses
    # The copies of an example come together, in the order of their cuts; each is the example, split later.
    i = 0
    for k, count in enumerate(per_example):
        lengths = []
        for _ in range(count):
            prompt, response = rows.prompts[n + i], rows.responses[n + i]
            assert prompt[:len(plain.prompts[k])] == plain.prompts[k]
            head = prompt[len(plain.prompts[k]):]
            assert tokenizer.decode(head + response) == texts[k]
            assert tokenizer.decode(head).endswith((" = ", "<answer>\n"))
            lengths.append(len(head))
            i += 1
        assert lengths == sorted(lengths) and len(set(lengths)) == count
    with pytest.raises(ConfigError, match=r"sft.prefix_pattern: set prefix_marker or prefix_pattern, not both"):
        sft_config(tiny_base, tiny_data, tmp_path / "x", prefix_marker=" = ", prefix_pattern=" = ")
    with pytest.raises(ConfigError, match=r"sft.prefix_pattern: not a regular expression: '\(unclosed'"):
        sft_config(tiny_base, tiny_data, tmp_path / "y", prefix_pattern="(unclosed")
    result = run_sft(sft_config(tiny_base, tiny_data, tmp_path / "run", max_steps=1, prefix_pattern=pattern,
                                full_finetune=True))
    assert result["data"]["prefix_copies"] == sum(per_example)
