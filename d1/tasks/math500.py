"""MATH500: competition math with free-form LaTeX answers.

Records: MATH-style rows ``{"problem", "solution", "answer", ...}`` (the
shipped MATH-500 test set). ``answer`` may be absent (MATH train rows, which d1
trained on): it is then the last ``\\boxed{}`` of ``solution``.
``Example.ground_truth`` is the answer string, as in d1's generations files.

Training reward (d1 ``reward_func.py``, total in [0.25, 3.0]; ``reward_range``
is declared (0, 3)):

* correctness 2.0: the last ``\\boxed{…}`` anywhere in the completion is
  MATH-equivalent (:func:`d1.tasks.math_equiv.is_equiv`) to the truth. d1
  compared the *whole completion* when there was no box (never equivalent in
  practice); here no box means 0.
* format 0.5 x (tags + boxed), in {0.25, 0.5, 0.75, 1.0}: tags = 1 when the
  completion has an ``<answer>…</answer>`` block; boxed = 1 when ``\\boxed``
  appears inside the first such block (in the whole completion when there is
  none), else 0.5. d1 tested ``"\\boxed" in r`` in a non-raw string (``\\b`` is
  a backspace), so its boxed term was always 0.5; this is the intended check.
  d1 also counted a lone ``<answer>`` without a closing tag as tags; here the
  block must be closed.

Evaluation score (d1 ``eval/parse_and_get_acc.py``, the protocol behind the
published baseline): the answer is the content of the last
``\\boxed{…}``/``\\fbox{…}`` with balanced braces; correct when
MATH-equivalent to the truth. The first ``<answer>…</answer>`` block is read
instead only when the completion *attempts* a box that yields nothing (its
braces never close, or it is empty). A completion with no box at all has no
answer, even if its answer block is right: d1's ``last_boxed_only_string``
then returned the whole completion, which is never equivalent, and the
published numbers (MATH500 128: 26.00, not 26.20) count those as wrong.
Differences kept from d1 as harmless fixes: we return None rather than the
whole completion there, and the last box wins even when an earlier
``\\boxed `` (space form) exists (d1 preferred the space form).
"""

from __future__ import annotations

from d1.errors import DataError
from d1.tasks.base import REASONING_FORMAT, Example, Score, Task
from d1.tasks.formats import first_answer_block, last_boxed_only_string, remove_boxed
from d1.tasks.math_equiv import is_equiv
from d1.tasks.registry import register_task

# d1 diffu-grpo/data_utils.get_math_questions (after SYSTEM_PROMPT + "\n\n").
MATH_TRAIN_INSTRUCTION = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. "
    "Wrap the final answer in a \\boxed{}. \n\n"
)

# d1 eval/math500.py MATH500_SYSTEM_PROMPT, verbatim: the stray '" ' after
# </answer> and the final newline are in d1's prompt and so in the published
# baseline generations.
MATH_EVAL_PROMPT = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. "
    "Wrap the final answer in a \\boxed{}.\n"
    "Respond in the following format:\n"
    "<reasoning>\n"
    "Your reasoning here\n"
    "</reasoning>\n"
    "<answer>\n"
    "\\boxed{...}\n"
    '</answer>" \n'
)


def last_boxed_content(text: str) -> str | None:
    """Inner text of the last balanced ``\\boxed{…}`` (or ``\\fbox``/``\\boxed x``); None if none."""
    return remove_boxed(last_boxed_only_string(text))


def eval_answer(completion: str) -> str | None:
    """The answer the d1 MATH500 evaluation reads (module doc); None if none."""
    boxed = last_boxed_content(completion)
    if boxed and boxed.strip():
        return boxed
    if "\\boxed" not in completion and "\\fbox" not in completion:
        return None  # no box attempted: no answer (as the published numbers count it)
    return first_answer_block(completion)


def format_reward(completion: str) -> float:
    """0.5 x (has closed answer block + (1 if boxed in it else 0.5)); in [0.25, 1.0]."""
    block = first_answer_block(completion)
    where = completion if block is None else block
    tags = 0.0 if block is None else 1.0
    return 0.5 * (tags + (1.0 if "\\boxed" in where else 0.5))


@register_task
class Math500Task(Task):
    name = "math500"
    # bounds, not tight: the format term makes the true minimum 0.25
    reward_range = (0.0, 3.0)
    # MATH train is not shipped: a train split must be given as a file of MATH rows.
    builtin_data = {"test": "math500/test.jsonl"}

    def example_from_record(self, record: dict) -> Example:
        """MATH row -> Example; DataError if problem/solution (or any answer) is missing."""
        problem, solution = record.get("problem"), record.get("solution")
        if not isinstance(problem, str):
            raise DataError("math500 record lacks a string 'problem'")
        if not isinstance(solution, str):
            raise DataError("math500 record lacks a string 'solution'")
        answer = record.get("answer")
        if not isinstance(answer, str):
            answer = last_boxed_content(solution)
            if answer is None:
                raise DataError("math500 record has no 'answer' and no \\boxed{} in its solution")
        target = (
            f"<reasoning>\n{solution.strip()}\n</reasoning>\n"
            f"<answer>\n\\boxed{{{answer}}}\n</answer>"
        )
        meta = {k: record[k] for k in ("subject", "level", "unique_id") if k in record}
        return Example(question=problem, ground_truth=answer, solution=target, meta=meta)

    def example_from_generation(self, item: dict) -> Example:
        return Example(question=item["question"], ground_truth=str(item["ground_truth"]))

    def user_message(self, example: Example) -> str:
        return REASONING_FORMAT + "\n\n" + MATH_TRAIN_INSTRUCTION + example.question

    def eval_user_message(self, example: Example) -> str:
        # d1 eval/math500.py (zero-shot); d1 then opens the reply with "<reasoning>".
        return MATH_EVAL_PROMPT + "\n\n" + example.question

    def reward_components(self, completion: str, example: Example) -> dict[str, float]:
        truth = example.ground_truth if isinstance(example.ground_truth, str) else None
        correct = is_equiv(last_boxed_content(completion), truth)
        return {"correctness": 2.0 if correct else 0.0, "format": format_reward(completion)}

    def score(self, completion: str, example: Example) -> Score:
        answer = eval_answer(completion)
        truth = example.ground_truth if isinstance(example.ground_truth, str) else None
        return Score(correct=int(is_equiv(answer, truth)), total=1, extracted=answer)
