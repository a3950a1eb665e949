"""The ``pretrain`` section of ``params.yaml``: masked-diffusion pre-training of the tiny LLaDA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from d1.train.configs import (
    TrainConfigBase,
    fail_at,
    require_one_of,
    require_positive,
)

DOCUMENT_FORMATS = ("plain", "chat", "bare")


@dataclass
class PretrainConfig(TrainConfigBase):
    """Masked-diffusion pre-training of the built-in tiny LLaDA from scratch (tiny profile only).

    The corpus is the prepared train split of every task in ``tasks``: one
    document per example (``document_format``: ``plain`` = the task's user turn,
    a blank line and the worked solution; ``chat`` = the same as a chat-templated
    conversation; ``bare`` = the question without instructions, a blank line and
    the solution). The tokenizer (``tokenizer_vocab_size``) is trained on that
    corpus first; documents are joined with EOS and packed into ``seq_len``-token
    rows; every token is maskable (LLaDA pre-training).
    """

    SECTION: ClassVar[str] = "pretrain"

    model_path: str = "tiny"  # only the built-in tiny model can be pre-trained
    tasks: list[str] = field(default_factory=lambda: ["countdown", "sudoku", "gsm8k"])
    out_dir: str = "outputs/pretrain"
    document_format: str = "plain"
    extra_documents: list[str] = field(default_factory=list)  # .txt (a document per line) or records with "text"
    tokenizer_vocab_size: int = 1024
    tokenizer_min_frequency: int = 2
    tokenizer_split_words: bool = True  # false: merges may span words (d1.models.tokenizer.train_tokenizer)
    tokenizer_number_digits: int = 1  # 1: every digit a token; 3: numbers < 1000 may be one token
    # Tiny LLaDA architecture (LLaDA config field names; d1.models.llada.tiny_llada_config's sizes).
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden_size: int = 384
    max_sequence_length: int = 1024
    seq_len: int = 256
    mask_eps: float = 1e-3
    # LLaDA pre-training: AdamW, lr 4e-4, weight decay 0.1, warmup; we decay with a cosine.
    lr: float = 4e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    max_grad_norm: float = 1.0
    lr_scheduler: str = "cosine"
    warmup_steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    epochs: float = 1.0
    save_steps: int = 500
    full_finetune: bool = True  # from scratch: every weight trains (LoRA fields unused)

    def validate(self) -> None:
        super().validate()
        s = self.SECTION
        if self.model_path != "tiny":
            fail_at(f"{s}.model_path", f"only the built-in 'tiny' model can be pre-trained, got {self.model_path!r}")
        if not self.full_finetune:
            fail_at(f"{s}.full_finetune", "pre-training from scratch trains every weight; must be true")
        require_one_of(s, "document_format", self.document_format, DOCUMENT_FORMATS)
        if self.tokenizer_vocab_size < 262:
            fail_at(f"{s}.tokenizer_vocab_size", f"must be >= 262 (256 bytes + 6 special tokens), "
                  f"got {self.tokenizer_vocab_size}")
        require_positive(s, "tokenizer_min_frequency", self.tokenizer_min_frequency)
        require_positive(s, "tokenizer_number_digits", self.tokenizer_number_digits)
        for key in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "max_sequence_length", "seq_len"):
            require_positive(s, key, getattr(self, key))
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            fail_at(f"{s}.n_heads", f"d_model {self.d_model} must split into {self.n_heads} heads of even size")
        if self.seq_len > self.max_sequence_length:
            fail_at(f"{s}.seq_len", f"{self.seq_len} exceeds max_sequence_length {self.max_sequence_length}")
        if not 0.0 <= self.mask_eps < 1.0:
            fail_at(f"{s}.mask_eps", f"must be in [0, 1), got {self.mask_eps}")
