"""SFT data sets that are not tasks: s1K (d1's masked-SFT data), read, formatted and split as d1 does.

s1K (``hf:simplescaling/s1K``, 1,000 rows, one ``train`` split) rows hold
``question`` (str), ``thinking_trajectories`` (a list of str: the reasoning
trace, d1 takes the first), ``attempt`` (str: the worked answer) and, unused
for training, ``solution`` (the reference answer), ``cot_type``,
``source_type``, ``metadata``, ``cot``. d1 (``SFT/sft_trainer.py``,
``preprocess_dataset``) turns a row into

* the user turn ``SFT_SYSTEM_PROMPT + "\\n\\n" + question`` (its SFT system
  prompt says "Your reasoning here" where the RL prompts say "...");
* the assistant turn ``<reasoning>{thinking_trajectories[0]}</reasoning>\\n<answer>{attempt}</answer>``
  (no newlines inside the tags, unlike the RL format);

both through the chat template, truncated to ``max_length`` (4,096 tokens), and
holds out the first 1% (``int(n * 0.01)``: 10 of 1,000) of a shuffle. Here the
shuffle is drawn from an explicit ``random.Random(seed)`` (:func:`heldout_split`),
never the global RNG, and the training rows keep the source's order (the SFT
loop shuffles every epoch).

``d1 prepare`` (``prepare.sft_data.<name>``) writes ``<out_dir>/<name>/train.jsonl``
and ``heldout.jsonl``: Example records whose ``question`` is the raw question,
``solution`` the assistant turn above and ``ground_truth`` s1K's ``solution``;
``d1 sft`` (``sft.sft_data: [<name>]``) trains on the train file with the user
turn of :class:`S1KFormat`. Every malformed row is one DataError naming the
source and the line (a local JSONL file) or row.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from d1.data.io import HF_PREFIX, S3_PREFIX, read_records
from d1.errors import DataError
from d1.tasks.base import Example

#: d1's SFT system prompt (``SFT/sft_trainer.py``), verbatim
SFT_SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
...
</answer>
"""

#: the fraction d1 holds out (``preprocess_dataset(test_split=0.01)``)
HELDOUT_FRACTION = 0.01
#: file names of the prepared splits under ``<out_dir>/<name>/``
SPLITS = ("train", "heldout")


class S1KFormat:
    """The prompt side of an s1K example (what :func:`d1.models.chat.sft_texts` asks of a task)."""

    name = "s1k"

    def messages(self, example: Example, *, for_eval: bool = False) -> list[dict]:
        return [{"role": "user", "content": SFT_SYSTEM_PROMPT + "\n\n" + example.question}]


#: SFT data sets by name (``prepare.sft_data`` keys, ``sft.sft_data`` entries) -> their prompt format
SFT_DATA_FORMATS: dict[str, S1KFormat] = {"s1k": S1KFormat()}


def response_text(reasoning: str, attempt: str) -> str:
    """d1's SFT target: ``<reasoning>{reasoning}</reasoning>\\n<answer>{attempt}</answer>``."""
    return f"<reasoning>{reasoning}</reasoning>\n<answer>{attempt}</answer>"


def _text_field(record: dict, key: str) -> str:
    if key not in record or record[key] is None:
        raise DataError(f"lacks {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{key!r} is empty")
    return value


def example_from_s1k(record: Any, index: int) -> Example:
    """One s1K row as an Example (``index``: its row in the source, kept in ``meta.row``)."""
    if not isinstance(record, dict):
        raise DataError(f"expected an object, got {type(record).__name__}")
    question = _text_field(record, "question")
    attempt = _text_field(record, "attempt")
    traces = record.get("thinking_trajectories")
    if traces is None:
        raise DataError("lacks 'thinking_trajectories'")
    if isinstance(traces, str) or not isinstance(traces, Sequence) or not traces:
        # a plain string would silently train on its first character (d1 takes trajectories[0])
        raise DataError(f"'thinking_trajectories' must be a non-empty list of strings, got {type(traces).__name__}"
                        f"{'' if traces else ' (empty)'}")
    reasoning = traces[0]
    if not isinstance(reasoning, str) or not reasoning.strip():
        raise DataError("'thinking_trajectories'[0] must be a non-empty string")
    truth = record.get("solution")
    meta = {"row": index}
    for key in ("cot_type", "source_type"):
        if isinstance(record.get(key), str):
            meta[key] = record[key]
    return Example(question=question, ground_truth=truth if isinstance(truth, str) else None,
                   solution=response_text(reasoning, attempt), meta=meta)


def _row_labels(source: str, count: int) -> list[str]:
    """How to name each record of ``source`` in a message: ``line N`` in a local JSONL file (blank
    lines are skipped by the reader), ``row i`` elsewhere."""
    local = not source.startswith((HF_PREFIX, S3_PREFIX))
    if local and os.path.splitext(source)[1].lower() == ".jsonl":
        text = Path(source).read_bytes().decode("utf-8-sig")
        lines = [n for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
        if len(lines) == count:
            return [f"line {n}" for n in lines]
    return [f"row {i}" for i in range(count)]


def read_s1k(source: str, *, limit: int | None = None) -> list[Example]:
    """Every row of ``source`` (``hf:simplescaling/s1K?split=train``, or a local / S3
    ``.jsonl/.json/.parquet`` file of that shape) as Examples; ``limit``: the first N rows."""
    records = read_records(source)
    if not records:
        raise DataError(f"{source}: holds no rows (the s1k data would be empty)")
    labels = _row_labels(source, len(records))
    if limit is not None:
        records = records[:limit]
    examples = []
    for i, rec in enumerate(records):
        try:
            examples.append(example_from_s1k(rec, i))
        except DataError as exc:
            raise DataError(f"{source}: {labels[i]}: not an s1K record: {exc}") from None
    return examples


def heldout_split(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): ``int(len * fraction)`` examples held out (d1: 1%, rounded down), chosen by a
    shuffle drawn from ``random.Random(seed)``; both keep the source's order and are disjoint."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"held-out fraction must be in [0, 1), got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[: int(len(examples) * fraction)])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    heldout = [ex for i, ex in enumerate(examples) if i in held]
    return train, heldout
