"""The task interface: what every benchmark (GSM8K, MATH500, Countdown, Sudoku) provides.

A task turns raw records into :class:`Example` objects, builds the d1 prompt,
parses model output, computes the *training* reward (a sum of named
components, as in d1's ``reward_func.py``) and the *evaluation* score (the
protocol that produced the paper's baseline table).

Rewards and scores must never raise on model output: any string, however
malformed or large, gets a finite value in the documented range.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

# The format every d1 prompt asks for (d1 ``data_utils.SYSTEM_PROMPT``).
REASONING_FORMAT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""


@dataclass(frozen=True)
class Example:
    """One task instance.

    question: the problem as shown to the model (without system prompt); for
        generations files this is the ``question`` field.
    ground_truth: JSON-serialisable answer in the shape d1's generations files
        use for this task (gsm8k: number, math500: str, countdown:
        ``[[numbers], target]``, sudoku: 16-digit solution string).
    solution: optional worked solution ``<reasoning>...</reasoning>\\n<answer>...</answer>``
        usable as an SFT target.
    meta: anything else (source row id, puzzle string, ...), JSON-serialisable.
    """

    question: str
    ground_truth: Any
    solution: str | None = None
    meta: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        rec = {"question": self.question, "ground_truth": self.ground_truth}
        if self.solution is not None:
            rec["solution"] = self.solution
        if self.meta:
            rec["meta"] = self.meta
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "Example":
        return cls(
            question=rec["question"],
            ground_truth=rec["ground_truth"],
            solution=rec.get("solution"),
            meta=dict(rec.get("meta") or {}),
        )


@dataclass(frozen=True)
class RewardBreakdown:
    """Training reward of one completion: ``total`` is the sum of ``components``."""

    total: float
    components: dict[str, float]

    @classmethod
    def of(cls, components: dict[str, float]) -> "RewardBreakdown":
        clean = {k: (float(v) if math.isfinite(v) else 0.0) for k, v in components.items()}
        return cls(total=float(sum(clean.values())), components=clean)


@dataclass(frozen=True)
class Score:
    """Evaluation outcome of one completion.

    correct / total: counted units. One item for gsm8k, math500, countdown;
    the originally empty cells for sudoku (cell-level protocol).
    extracted: what was parsed from the completion (for inspection).
    """

    correct: int
    total: int
    extracted: Any = None


class Task(ABC):
    """Base class of a registered task. Subclasses set ``name`` and the ranges."""

    name: ClassVar[str]
    #: inclusive bounds of ``reward(...).total``
    reward_range: ClassVar[tuple[float, float]]
    #: data files shipped in ``d1/data/benchmarks/`` per split, e.g. {"test": "gsm8k/test.jsonl"}
    builtin_data: ClassVar[dict[str, str]] = {}
    #: True when the task can generate its own training data (``generate``)
    can_generate: ClassVar[bool] = False

    # --- data -----------------------------------------------------------------
    @abstractmethod
    def example_from_record(self, record: dict) -> Example:
        """Turn one raw record of the task's source data set into an Example.

        Raises DataError (naming the missing field) for a malformed record.
        """

    def example_from_generation(self, item: dict) -> Example:
        """Rebuild an Example from one item of a d1 generations file
        (``question``, ``generations``, ``ground_truth``)."""
        return Example(question=item["question"], ground_truth=item["ground_truth"])

    def generate(self, n: int, *, seed: int, exclude: list[Example], **options: Any) -> list[Example]:
        """``n`` new solvable examples with worked solutions, deterministic in ``seed``,
        none equal to an example of ``exclude`` (the test set). Only where ``can_generate``."""
        raise NotImplementedError(f"task {self.name!r} cannot generate data")

    # --- prompt ---------------------------------------------------------------
    @abstractmethod
    def user_message(self, example: Example) -> str:
        """The user turn of the d1 prompt (system instructions included, as d1 does)."""

    def eval_user_message(self, example: Example) -> str:
        """The user turn d1's evaluation scripts use (may differ from training's)."""
        return self.user_message(example)

    def messages(self, example: Example, *, for_eval: bool = False) -> list[dict]:
        text = self.eval_user_message(example) if for_eval else self.user_message(example)
        return [{"role": "user", "content": text}]

    # --- model output ---------------------------------------------------------
    @abstractmethod
    def reward_components(self, completion: str, example: Example) -> dict[str, float]:
        """Named training-reward components (d1 values); never raises."""

    def reward(self, completion: str, example: Example) -> RewardBreakdown:
        return RewardBreakdown.of(self.reward_components(completion, example))

    @abstractmethod
    def score(self, completion: str, example: Example) -> Score:
        """Evaluation score under the d1 protocol; never raises."""

    def score_training_format(self, completion: str, example: Example) -> Score:
        """Evaluation score of a completion in the *training* format (the answer in
        the last ``<answer>`` block, as the SFT targets and rewards have it); used by
        evaluation with ``prompt: train`` (the tiny profile, whose model never saw
        the d1 evaluation prompts). Default: the d1 score, which already reads the
        answer block; tasks whose d1 score reads something else override it."""
        return self.score(completion, example)
