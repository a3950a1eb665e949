"""s1K, d1's SFT data: the reader (local files, hf: sources), d1's formatting, the 1% held-out split, the
prepare stage's output and the SFT rows built from it, and one-line errors for bad input. Offline: the
fixture is four made-up records of s1K's shape."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from d1.config import from_dict
from d1.data.s1k import SFT_SYSTEM_PROMPT, S1KFormat, heldout_split, read_s1k
from d1.errors import ConfigError, DataError
from d1.prepare import PrepareConfig, prepare, read_split
from d1.tasks.base import Example
from d1.train.sft import sft_rows
from d1.train.sft_config import SFTConfig

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "s1k_sample.jsonl"

# d1's SFT/sft_trainer.py, copied here so the test states what "as d1 formats it" means
D1_SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
...
</answer>
"""


def d1_messages(row: dict) -> list[dict]:
    """d1's ``preprocess_dataset``: the conversation it templates for one s1K row."""
    question = D1_SYSTEM_PROMPT + "\n\n" + row["question"]
    trajectory = f"<reasoning>{row['thinking_trajectories'][0]}</reasoning>\n<answer>{row['attempt']}</answer>"
    return [{"role": "user", "content": question}, {"role": "assistant", "content": trajectory}]


class CharTokenizer:
    """A LLaDA-style chat template and one token per character: the SFT texts can be read back exactly."""

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        text = "<|startoftext|>" + "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
        return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


def text(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def s1k_prepare_config(out: Path, source: str, **sft_data) -> PrepareConfig:
    return from_dict(PrepareConfig, {
        "out_dir": str(out), "seed": 42,
        "tasks": {"countdown": {"train": None, "test": "builtin", "test_size": 4}},
        "sft_data": {"s1k": {"source": source, **sft_data}}}, "prepare")


# ----------------------------------------------------------------------------- reading and formatting


def test_the_fixture_reads_as_d1_formats_it():
    rows = fixture_rows()
    examples = read_s1k(str(FIXTURE))
    assert len(examples) == len(rows) == 4
    for i, (row, ex) in enumerate(zip(rows, examples)):
        assert ex.question == row["question"]
        assert ex.solution == f"<reasoning>{row['thinking_trajectories'][0]}</reasoning>\n<answer>{row['attempt']}</answer>"
        assert ex.ground_truth == row["solution"]
        assert ex.meta == {"row": i, "cot_type": row["cot_type"], "source_type": row["source_type"]}
        assert Example.from_record(ex.to_record()) == ex
    assert "A second trace d1 ignores." not in examples[1].solution  # d1 trains on the first trajectory only
    assert SFT_SYSTEM_PROMPT == D1_SYSTEM_PROMPT
    user = S1KFormat().messages(examples[0])
    assert user == d1_messages(rows[0])[:1]


def test_parquet_json_and_hf_folder_sources_read_the_same(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = fixture_rows()
    expected = read_s1k(str(FIXTURE))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s1k.parquet")
    (tmp_path / "s1k.json").write_text(json.dumps(rows), encoding="utf-8")
    assert read_s1k(str(tmp_path / "s1k.parquet")) == expected
    assert read_s1k(str(tmp_path / "s1k.json")) == expected
    # the hf: mechanism of d1.data.io (datasets.load_dataset), on a local folder of data files
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    shutil.copy(tmp_path / "s1k.parquet", hub / "train-00000-of-00001.parquet")
    assert read_s1k(f"hf:{tmp_path / 'hub'}?split=train") == expected
    assert read_s1k(str(FIXTURE), limit=2) == expected[:2]


def test_sft_rows_are_d1s_conversation(tmp_path):
    rows = fixture_rows()
    prepare(s1k_prepare_config(tmp_path / "data", str(FIXTURE), heldout_fraction=0.0))
    tok = CharTokenizer()
    token_rows, stats = sft_rows(tok, str(tmp_path / "data"), [], max_length=4096, sft_data=["s1k"])
    assert stats["rows"] == len(rows) == len(token_rows) and stats["truncated"] == 0
    for row, p_ids, r_ids in zip(rows, token_rows.prompts, token_rows.responses):
        prompt, response = text(p_ids), text(r_ids)
        # the whole text is d1's templated conversation; the never-masked prompt ends after the assistant
        # header (d1: before it, plus a newline; docs/algorithms.md section 7)
        assert prompt + response == tok.apply_chat_template(d1_messages(row))
        assert prompt == tok.apply_chat_template(d1_messages(row)[:1], add_generation_prompt=True)
        assert response.startswith("<reasoning>" + row["thinking_trajectories"][0])
    # tasks and SFT data sets together; max_examples caps each
    both, stats = sft_rows(tok, str(tmp_path / "data"), [], max_length=4096, sft_data=["s1k"], max_examples=3)
    assert stats["rows"] == 3


# ----------------------------------------------------------------------------- the held-out split


def test_heldout_is_one_percent_deterministic_disjoint_and_leaves_the_global_rng_alone():
    examples = [Example(question=f"q{i}", ground_truth=None, solution="s") for i in range(1000)]
    random.seed(0)
    before = random.getstate()
    train, held = heldout_split(examples, 0.01, seed=42)
    assert random.getstate() == before  # an explicit random.Random: the global RNG is neither used nor reseeded
    assert len(held) == 10 and len(train) == 990  # int(1000 * 0.01), as d1
    assert not {e.question for e in held} & {e.question for e in train}
    assert sorted(e.question for e in train + held) == sorted(e.question for e in examples)
    assert [e.question for e in train] == [e.question for e in examples if e not in held]  # source order kept
    random.seed(123)
    assert heldout_split(examples, 0.01, seed=42) == (train, held)  # whatever the global RNG holds
    assert heldout_split(examples, 0.01, seed=43)[1] != held
    assert len(heldout_split(examples[:250], 0.01, seed=42)[1]) == 2  # rounded down, as d1
    assert heldout_split(examples[:5], 0.01, seed=42) == (examples[:5], [])


def test_prepare_writes_train_and_heldout_and_the_manifest(tmp_path):
    many = write_rows(tmp_path / "s1k.jsonl", [
        {**fixture_rows()[i % 4], "question": f"Question {i}?"} for i in range(300)])
    manifest = prepare(s1k_prepare_config(tmp_path / "data", str(many)))
    entry = manifest["sft_data"]["s1k"]
    assert (entry["train"]["count"], entry["heldout"]["count"]) == (297, 3)
    train = read_split(tmp_path / "data", "s1k", "train")
    held = read_split(tmp_path / "data", "s1k", "heldout")
    assert not {e.question for e in train} & {e.question for e in held}
    assert len({e.question for e in train + held}) == 300
    first = (tmp_path / "data" / "s1k" / "heldout.jsonl").read_bytes()
    prepare(s1k_prepare_config(tmp_path / "again", str(many)))
    assert (tmp_path / "again" / "s1k" / "heldout.jsonl").read_bytes() == first  # deterministic in prepare.seed
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["sft_data"] == manifest["sft_data"]
    # task-only profiles: no sft_data key in the manifest
    no_sft = from_dict(PrepareConfig, {"out_dir": str(tmp_path / "t"), "tasks": {
        "countdown": {"train": None, "test_size": 4}}}, "prepare")
    assert "sft_data" not in prepare(no_sft)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("row, problem", [
    ({"question": "q", "attempt": "a"}, "lacks 'thinking_trajectories'"),
    ({"question": "q", "thinking_trajectories": "one string", "attempt": "a"},
     "'thinking_trajectories' must be a non-empty list of strings, got str"),
    ({"question": "q", "thinking_trajectories": [], "attempt": "a"},
     "'thinking_trajectories' must be a non-empty list of strings, got list (empty)"),
    ({"question": "q", "thinking_trajectories": [3], "attempt": "a"}, "'thinking_trajectories'[0] must be a non-empty string"),
    ({"question": "q", "thinking_trajectories": ["t"]}, "lacks 'attempt'"),
    ({"thinking_trajectories": ["t"], "attempt": "a"}, "lacks 'question'"),
    ({"question": 7, "thinking_trajectories": ["t"], "attempt": "a"}, "'question' must be a string, got int"),
    ({"question": " ", "thinking_trajectories": ["t"], "attempt": "a"}, "'question' is empty"),
])
def test_a_malformed_record_is_one_line_naming_file_and_line(tmp_path, row, problem):
    rows = fixture_rows()[:2] + [row]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        read_s1k(str(path))
    assert str(err.value) == f"{path}: line 4: not an s1K record: {problem}"  # line 2 is blank
    with pytest.raises(DataError, match=r"bad\.jsonl: line 4: not an s1K record"):
        prepare(s1k_prepare_config(tmp_path / "data", str(path)))
    assert not (tmp_path / "data").exists()  # nothing written


def test_unreadable_sources_are_one_line_errors(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"question": "q"\n')
    (tmp_path / "empty.jsonl").write_text("")
    cases = {str(tmp_path / "missing.jsonl"): "no such file", str(tmp_path / "broken.jsonl"): "line 1: invalid JSON",
             str(tmp_path / "empty.jsonl"): "holds no rows", "hf://simplescaling/s1K": "not hf://"}
    for source, message in cases.items():
        with pytest.raises(DataError) as err:
            read_s1k(source)
        assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("sft_data, message", [
    ({"s1": {"source": "x.jsonl"}}, "prepare.sft_data.s1: unknown SFT data set 's1'; known: s1k"),
    ({"s1k": {}}, "prepare.sft_data.s1k.source: required"),
    ({"s1k": {"source": "x.jsonl", "heldout_fraction": 1.0}}, "prepare.sft_data.s1k.heldout_fraction: must be in [0, 1)"),
    ({"s1k": {"source": "x.jsonl", "size": 0}}, "prepare.sft_data.s1k.size: must be positive"),
    ({"s1k": {"source": "x.jsonl", "split": "train"}}, "prepare.sft_data.s1k: unknown key 'split'"),
])
def test_bad_prepare_sft_data_settings(sft_data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(PrepareConfig, {"tasks": {"countdown": {"train": None}}, "sft_data": sft_data}, "prepare")
    assert message in str(err.value)


def test_sft_config_takes_sft_data_instead_of_tasks():
    cfg = from_dict(SFTConfig, {"tasks": [], "sft_data": ["s1k"]}, "sft")
    assert cfg.other_data() == ["s1k"]
    with pytest.raises(ConfigError, match="sft.tasks: no task given"):
        from_dict(SFTConfig, {"tasks": []}, "sft")
    with pytest.raises(ConfigError, match="sft.sft_data: unknown SFT data set 'gsm8k'; known: s1k"):
        from_dict(SFTConfig, {"sft_data": ["gsm8k"]}, "sft")
    with pytest.raises(ConfigError, match="listed twice"):
        from_dict(SFTConfig, {"sft_data": ["s1k", "s1k"]}, "sft")


def test_sft_without_the_prepared_s1k_says_so(tmp_path):
    with pytest.raises(DataError, match=r"s1k/train.jsonl: no such file \(run `d1 prepare` first\)"):
        sft_rows(CharTokenizer(), str(tmp_path), [], max_length=64, sft_data=["s1k"])
