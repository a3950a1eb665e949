"""The evaluation stage on a tiny model: d1-format files that `d1 score` re-scores identically."""

from __future__ import annotations

import json

import pytest
import torch

from d1.config import from_dict
from d1.errors import ConfigError
from d1.eval import EvalConfig, decode_completion, run_eval
from d1.generation import left_pad
from d1.models.llada import LLaDAModelLM, initialize_llada_weights, tiny_llada_config_for_tokenizer
from d1.models.lora import apply_lora
from d1.models.tokenizer import train_tokenizer
from d1.prepare import PrepareConfig, prepare
from d1.scoring import score_directory, score_files
from d1.tasks import get_task
from d1.tasks.base import Example


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    prepare(from_dict(PrepareConfig, {"out_dir": str(data), "tasks": {
        "countdown": {"train": "generate", "train_size": 40, "test_size": 5},
        "sudoku": {"train": None, "test_size": 3}}}, "prepare"))
    texts = []
    for name in ("countdown", "sudoku"):
        task = get_task(name)
        for line in (data / name / "test.jsonl").read_text().splitlines():
            texts.append(task.eval_user_message(Example.from_record(json.loads(line))))
    texts += [json.loads(line)["solution"] for line in (data / "countdown" / "train.jsonl").read_text().splitlines()]
    tok = train_tokenizer(texts, vocab_size=400)
    model = LLaDAModelLM(tiny_llada_config_for_tokenizer(tok, n_layers=2, d_model=32, n_heads=4, mlp_hidden_size=64))
    initialize_llada_weights(model, generator=torch.Generator().manual_seed(0))
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return root, data, model_dir, model, tok


def _cfg(root, data, model_dir, **kw):
    values = {"model": str(model_dir), "model_name": "tiny", "data_dir": str(data), "out_dir": str(root / "out"),
              "tasks": ["countdown", "sudoku"], "gen_lengths": [8, 16], "sampler": {"block_length": 8}, "batch_size": 2}
    values.update(kw)
    return from_dict(EvalConfig, values, "eval")


def test_eval_writes_rescorable_files(tiny_setup):
    root, data, model_dir, _, _ = tiny_setup
    metrics = run_eval(_cfg(root, data, model_dir))
    out = root / "out"
    assert set(metrics) == {"countdown", "sudoku"} and set(metrics["countdown"]) == {"8", "16"}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "eval_config.json").is_file()
    for result in score_directory(out):
        m = metrics[result["task"]][str(result["gen_length"])]
        assert (result["correct"], result["total"], result["n"]) == (m["correct"], m["total"], m["n"])
    f = out / "countdown_tiny_16_8_0_generations.json"
    content = json.loads(f.read_text())
    assert content["gen_length"] == 16 and content["diffusion_steps"] == 8 and len(content["generations"]) == 5
    assert content["block_length"] == 8 and (content["cache"], content["threshold"], content["temperature"]) == (
        "none", None, 0.0)
    assert score_files("countdown", [f])["n"] == 5
    assert metrics["sudoku"]["8"]["total"] > 3  # cell-level denominator


def test_eval_is_deterministic_and_adapter_folders_load(tiny_setup, tmp_path):
    root, data, model_dir, model, tok = tiny_setup
    first = run_eval(_cfg(root, data, model_dir, out_dir=str(tmp_path / "a"), tasks=["countdown"], gen_lengths=[8]))
    again = run_eval(_cfg(root, data, model_dir, out_dir=str(tmp_path / "b"), tasks=["countdown"], gen_lengths=[8]))
    a = json.loads((tmp_path / "a" / "countdown_tiny_8_4_0_generations.json").read_text())["generations"]
    b = json.loads((tmp_path / "b" / "countdown_tiny_8_4_0_generations.json").read_text())["generations"]
    assert [x["generations"] for x in a] == [x["generations"] for x in b]
    assert first["countdown"]["8"]["correct"] == again["countdown"]["8"]["correct"]
    # A LoRA adapter folder (zero-initialised B: same outputs as its base) evaluates like its base.
    peft_model = apply_lora(model, r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    peft_model.peft_config["default"].base_model_name_or_path = str(model_dir)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    run_eval(_cfg(root, data, adapter_dir, out_dir=str(tmp_path / "c"), tasks=["countdown"], gen_lengths=[8]))
    c = json.loads((tmp_path / "c" / "countdown_tiny_8_4_0_generations.json").read_text())["generations"]
    assert [x["generations"] for x in c] == [x["generations"] for x in a]
    peft_model.unload()


@pytest.mark.parametrize("values, message", [
    ({"gen_lengths": [12]}, "eval.gen_lengths: 12 is not a positive multiple of the sampler's block_length 8"),
    ({"sampler": {"block_length": 8, "steps": 3}, "gen_lengths": [16]},
     "eval.sampler.steps: 3 steps do not split evenly over 2 blocks"),
    ({"tasks": ["chess"]}, "eval.tasks: unknown task 'chess'"),
    ({"sampler": {"remasking": "top"}}, "eval.sampler.remasking: 'top'"),
    ({"sampler": {"gen_length": 64}}, "eval.sampler.gen_length: must be null in eval (the lengths come from "
                                      "eval.gen_lengths)"),
    ({"steps": 8}, "eval.steps: moved to eval.sampler.steps"),
    ({"limit": {"chess": 3}}, "eval.limit.chess: must name a known task"),
    ({"limit": {"countdown": 0}}, "eval.limit.countdown: must name a known task with a positive count, got 0"),
    ({"models": {"d1": "runs/{task}/model"}, "model_name": "d1"}, "eval.models.d1: 'runs/{task}/model' depends on the task"),
    ({"models": {"d1": ""}, "model_name": "d1"}, "eval.models.d1: empty"),
])
def test_bad_config_names_the_value(tiny_setup, values, message):
    root, data, model_dir, _, _ = tiny_setup
    with pytest.raises(ConfigError) as exc:
        _cfg(root, data, model_dir, **values)
    assert message in str(exc.value)


def test_the_sampler_section_reaches_the_sampler(tiny_setup, tmp_path):
    """eval.sampler.threshold reaches generate: threshold 0 decodes a block in one step, the tokens of
    steps = gen_length / block_length; the generations file records the setting."""
    root, data, model_dir, _, _ = tiny_setup
    files = {}
    for name, sampler in (("threshold", {"block_length": 8, "threshold": 0.0}),
                          ("one-step", {"block_length": 8, "steps": 1}), ("default", {"block_length": 8})):
        run_eval(_cfg(root, data, model_dir, out_dir=str(tmp_path / name), tasks=["countdown"], gen_lengths=[8],
                      sampler=sampler))
        files[name] = json.loads(next((tmp_path / name).glob("countdown_tiny_8_*_generations.json")).read_text())
    texts = {name: [x["generations"] for x in f["generations"]] for name, f in files.items()}
    assert texts["threshold"] == texts["one-step"] != texts["default"]
    assert files["threshold"]["threshold"] == 0.0 and files["one-step"]["threshold"] is None
    assert files["one-step"]["diffusion_steps"] == 1 and files["default"]["diffusion_steps"] == 4


def test_helpers():
    ids, mask = left_pad([[5, 6, 7], [9]], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 9]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]

    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return ",".join(map(str, ids))

    assert decode_completion(Tok(), [4, 1, 1, 1], eos_id=1) == "4,1"
    assert decode_completion(Tok(), [4, 4], eos_id=1) == "4,4"
    # Several stop ids: the first of any ends the completion.
    assert decode_completion(Tok(), [4, 2, 7, 1, 1], eos_id=[1, 2]) == "4,2"
    assert decode_completion(Tok(), [4, 2, 7, 1, 1], eos_id=1) == "4,2,7,1"


def test_a_completion_can_end_at_the_end_of_turn(tiny_setup, tmp_path, monkeypatch):
    """A model that writes `<|eot_id|>` then more text: d1's decoding keeps the text up to the first EOS,
    stop_at_end_of_turn cuts it after `<|eot_id|>` (as GRPO's rewards read a rollout)."""
    import d1.eval as eval_module
    from d1.eval import generate_completions
    from d1.models.loading import token_ids

    root, data, model_dir, model, tok = tiny_setup
    ids = token_ids(model, tok)
    assert ids.eot_id is not None and ids.eot_id != ids.eos_id
    digit = tok.convert_tokens_to_ids("7")
    wanted = [digit, ids.eot_id, digit, digit, ids.eos_id, ids.eos_id, ids.eos_id, ids.eos_id]

    class Scripted(torch.nn.Module):
        """Greedy decoding writes `wanted` into the last len(wanted) positions."""

        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(*input_ids.shape, len(tok))
            logits[:, -len(wanted):, :] = -10.0
            for k, t in enumerate(wanted):
                logits[:, input_ids.shape[1] - len(wanted) + k, t] = 10.0
            return logits

    common = dict(mask_id=ids.mask_id, eos_id=ids.eos_id, pad_id=ids.pad_id, gen_length=8, block_length=8, steps=8,
                  device=torch.device("cpu"))
    whole = generate_completions(Scripted(), tok, ["a"], **common)
    cut = generate_completions(Scripted(), tok, ["a"], stop_ids=[ids.eos_id, ids.eot_id], **common)
    assert whole == [tok.decode(wanted[:5], skip_special_tokens=False)]
    assert cut == [tok.decode(wanted[:2], skip_special_tokens=False)]
    # The eval stage passes the end-of-turn id only when asked.
    seen = []
    real = eval_module.generate_completions
    monkeypatch.setattr(eval_module, "generate_completions",
                        lambda *a, **kw: seen.append(kw["stop_ids"]) or real(*a, **kw))
    for flag in (False, True):
        run_eval(_cfg(root, data, model_dir, out_dir=str(tmp_path / str(flag)), tasks=["countdown"], gen_lengths=[8],
                      stop_at_end_of_turn=flag))
    assert seen == [[ids.eos_id], [ids.eos_id, ids.eot_id]]


def test_one_cell_per_model_label(tiny_setup, tmp_path):
    """A DVC eval cell: the label picks the model (per task), generations go apart from metrics.json,
    and a limit of a task not evaluated here is ignored."""
    root, data, model_dir, _, _ = tiny_setup
    models = {"base": str(model_dir), "d1": str(tmp_path / "d1" / "{task}" / "model")}
    cfg = _cfg(root, data, tmp_path / "unused", models=models, model_name="d1", tasks=["countdown"], gen_lengths=[8],
               limit={"countdown": 2, "gsm8k": 5})
    assert cfg.model == str(tmp_path / "d1" / "countdown" / "model")
    cfg = _cfg(root, data, tmp_path / "unused", models=models, model_name="base", tasks=["countdown"], gen_lengths=[8],
               limit={"countdown": 2, "gsm8k": 5}, out_dir=str(tmp_path / "cell"),
               generations_dir=str(tmp_path / "cell" / "generations"))
    assert cfg.model == str(model_dir)
    metrics = run_eval(cfg)
    assert metrics["countdown"]["8"]["n"] == 2
    assert sorted(p.name for p in (tmp_path / "cell").iterdir()) == ["eval_config.json", "generations", "metrics.json"]
    assert [p.name for p in (tmp_path / "cell" / "generations").iterdir()] == ["countdown_base_8_4_0_generations.json"]
    assert json.loads((tmp_path / "cell" / "eval_config.json").read_text())["model"] == str(model_dir)
    # a label not in `models` is refused: it would evaluate another model under that label
    with pytest.raises(ConfigError, match="eval.model_name: 'tiny' is not one of"):
        _cfg(root, data, model_dir, models=models, model_name="tiny")


def test_train_prompt_protocol_uses_the_training_prompt_and_answer_block(tiny_setup, tmp_path):
    root, data, model_dir, _, tok = tiny_setup
    run_eval(_cfg(root, data, model_dir, out_dir=str(tmp_path / "t"), tasks=["countdown"], gen_lengths=[8],
                  prompt="train", add_reasoning=False))
    items = json.loads((tmp_path / "t" / "countdown_tiny_8_4_0_generations.json").read_text())["generations"]
    task = get_task("countdown")
    ex = Example.from_record(json.loads((data / "countdown" / "test.jsonl").read_text().splitlines()[0]))
    assert items[0]["prompt_input"] == tok.apply_chat_template(task.messages(ex), add_generation_prompt=True,
                                                               tokenize=False)
    assert task.user_message(ex) in items[0]["prompt_input"] and task.eval_user_message(ex) not in items[0]["prompt_input"]
    with pytest.raises(ConfigError, match="eval.prompt: 'exam' is not eval or train"):
        _cfg(root, data, model_dir, prompt="exam")


def test_countdown_training_format_score_reads_the_answer_block():
    task = get_task("countdown")
    ex = Example(question="", ground_truth=[[17, 4, 14], 54])
    trace = "<reasoning>\n17 * 4 = 68\n68 - 14 = 54\n</reasoning>\n<answer>\n17 * 4 - 14\n</answer>"
    assert task.score_training_format(trace, ex).correct == 1
    assert task.score(trace, ex).correct == 0  # d1's scorer takes the first reasoning line "17 * 4"
    assert task.score_training_format(trace.replace("- 14\n</answer>", "+ 14\n</answer>"), ex).correct == 0
    assert task.score_training_format("no answer", ex).correct == 0
    sudoku = get_task("sudoku")
    sd = Example(question="Solve the following Sudoku puzzle: 3020000003120204\n", ground_truth="3421214343121234")
    answer = "<reasoning>\n</reasoning>\n<answer>\n3421214343121234\n</answer>"
    assert sudoku.score_training_format(answer, sd) == sudoku.score(answer, sd)
