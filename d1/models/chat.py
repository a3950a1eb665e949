"""A task example in the tokenizer's chat template: the prompt a model conditions on, and an SFT (prompt, response) pair.

One definition shared by SFT, diffu-GRPO rollouts and evaluation, so all of
them condition on exactly the same prompt.
"""

from __future__ import annotations

from typing import Any

from d1.errors import DataError


def prompt_text(tokenizer: Any, task: Any, example: Any, *, for_eval: bool = False) -> str:
    """The chat-templated user turn with the assistant header (what the model conditions on)."""
    messages = task.messages(example, for_eval=for_eval)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def sft_texts(tokenizer: Any, task: Any, example: Any) -> tuple[str, str]:
    """(prompt, response) texts of one SFT example (see the module docstring)."""
    if not example.solution:
        raise DataError(f"{task.name}: example without a solution: {example.question[:60]!r}")
    prompt = prompt_text(tokenizer, task, example)
    conversation = task.messages(example) + [{"role": "assistant", "content": example.solution}]
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    if full.startswith(prompt):
        return prompt, full[len(prompt):]
    # A template whose prompt is not a prefix of the conversation: fall back to the bare solution.
    return prompt, example.solution
