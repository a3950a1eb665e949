"""A tokenizer for the built-in tiny model, trained offline on the project's own text.

Byte-level BPE (the ``tokenizers`` library) with a small vocabulary, so the
long d1 instructions compress to a few tokens while any string (including
model output we never saw) still encodes. Digits are split into single-digit
tokens, which makes arithmetic learnable for a small model. The result is a
``transformers`` fast tokenizer with LLaDA's special-token names and a
LLaDA-style chat template, so the training and evaluation code treats it
exactly like LLaDA-8B-Instruct's tokenizer:

* ``<|startoftext|>`` BOS, ``<|endoftext|>`` EOS and padding,
  ``<|eot_id|>`` end of turn, ``<|start_header_id|>`` / ``<|end_header_id|>``
  around the role, ``<|mdm_mask|>`` the mask token (``tokenizer.mask_token``).
* Chat template: ``<|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n``
  + content (trimmed) + ``<|eot_id|>``, then, with ``add_generation_prompt=True``,
  ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``. (LLaDA's own template
  always appends the assistant header; ours honours the flag, so always pass
  ``add_generation_prompt=True`` for a prompt.)

Training is deterministic given the texts (same order, same settings): tested.
Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from d1.errors import ConfigError

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
EOT_TOKEN = "<|eot_id|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
MASK_TOKEN = "<|mdm_mask|>"
#: special tokens, in id order (ids 0..5)
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, EOT_TOKEN, START_HEADER_TOKEN, END_HEADER_TOKEN, MASK_TOKEN)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + (message['content'] | trim) + '<|eot_id|>' -%}"
    "{%- if loop.index0 == 0 -%}{%- set content = bos_token + content -%}{%- endif -%}"
    "{{- content -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"
)

DEFAULT_VOCAB_SIZE = 1024
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the special tokens


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = 2,
    split_digits: bool = True,
    split_words: bool = True,
    number_digits: int = 1,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    vocab_size: total size including the 256 byte tokens and the 6 special
        tokens (ids 0-5, in :data:`SPECIAL_TOKENS` order); the result can be
        smaller when the corpus has fewer useful merges.
    min_frequency: a pair must occur this often to be merged.
    split_digits: digits are pre-split from other text (see ``number_digits``).
    number_digits: with ``split_digits``, a number of at most this many digits
        standing alone (no digit either side) is one pre-token, so it can become
        a single token where the corpus makes it frequent; longer runs of digits
        are split into single digits. 1 = every digit its own token (no
        multi-digit tokens). 3 makes the Countdown numbers and results (< 1000)
        whole tokens, so an arithmetic step is a lookup the tiny model learns far
        faster than digit-wise arithmetic, while a Sudoku grid (a 16-digit run)
        stays one token per cell. (LLaMA-3's and LLaDA's tokenizers cut every run
        into 3-digit chunks instead, which would misalign the Sudoku cells.)
    split_words: pre-split the text into words (GPT-2's regex), so no token
        spans a word boundary. False lets merges span words: text that recurs
        verbatim in the corpus (the d1 task instructions, the tags of the
        answer format) then becomes a handful of tokens (the Countdown
        training prompt: 42 tokens instead of 166 with a 1024 vocabulary),
        which makes every sequence of the tiny CPU model several times cheaper.
    """
    if vocab_size < _MIN_VOCAB:
        raise ConfigError(f"tokenizer vocab_size={vocab_size} is too small (at least {_MIN_VOCAB})")
    if isinstance(number_digits, bool) or not isinstance(number_digits, int) or number_digits < 1:
        raise ConfigError(f"tokenizer number_digits={number_digits!r} must be a positive integer")
    if min_frequency < 1:
        raise ConfigError(f"tokenizer min_frequency={min_frequency} must be at least 1")
    texts = [t for t in texts if t]
    if not texts:
        raise ConfigError("tokenizer corpus is empty")

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_words)
    if split_digits and number_digits == 1:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif split_digits:
        numbers = Regex(rf"(?<!\d)\d{{1,{number_digits}}}(?!\d)|\d")
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(numbers, behavior="isolated"), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around ``tok`` (which must contain :data:`SPECIAL_TOKENS`)."""
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ConfigError(f"tokenizer lacks the special token(s) {missing}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        mask_token=MASK_TOKEN,
        additional_special_tokens=[EOT_TOKEN, START_HEADER_TOKEN, END_HEADER_TOKEN],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def build_tokenizer(
    texts: Iterable[str], out_dir: str | Path, **options
) -> PreTrainedTokenizerFast:
    """:func:`train_tokenizer` and save it to ``out_dir`` (loadable with ``AutoTokenizer.from_pretrained``)."""
    tokenizer = train_tokenizer(texts, **options)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def task_corpus(
    data_dir: str | Path,
    task_names: Sequence[str],
    *,
    splits: Sequence[str] = ("train",),
    limit_per_task: int | None = None,
) -> list[str]:
    """Texts for tokenizer training from the prepared data (``d1 prepare`` output).

    For each task and split: the user message of every example (training and
    evaluation wording; each distinct text once), and the worked solution
    where the example has one. ``limit_per_task`` caps the examples read per
    task and split (first N). Missing split files raise DataError. Only the
    train split by default, so no test answer leaks into the vocabulary.
    """
    from d1.prepare import read_split
    from d1.tasks import get_task

    texts: list[str] = []
    seen: set[str] = set()

    def add(text: str | None) -> None:
        if text and text not in seen:
            seen.add(text)
            texts.append(text)

    for name in task_names:
        task = get_task(name)
        for split in splits:
            examples = read_split(data_dir, name, split)
            if limit_per_task is not None:
                examples = examples[:limit_per_task]
            for ex in examples:
                add(task.user_message(ex))
                add(task.eval_user_message(ex))
                add(ex.solution)
    return texts
