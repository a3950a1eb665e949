"""Masked-diffusion language models.

* :mod:`d1.models.llada`: our implementation of the LLaDA architecture
  (``LLaDAConfig``, ``LLaDAModelLM``, registered with transformers' Auto
  classes) and the built-in tiny model (``tiny_llada_config``).
* :mod:`d1.models.loading`: ``load_model`` / ``load_tokenizer`` for folders
  and Hub ids, ``token_ids`` (mask / EOS / pad / EOT ids from config and
  tokenizer).
* :mod:`d1.models.tokenizer`: the tiny model's tokenizer, trained offline.
* :mod:`d1.models.lora`: LoRA through peft with checked target modules;
  ``merge_adapter``.
* :mod:`d1.models.dream`: the shifted-logits adapter (Dream-7B).
* :mod:`d1.models.chat`: a task example in the tokenizer's chat template (``prompt_text``, ``sft_texts``).
"""

from d1.models.chat import prompt_text, sft_texts
from d1.models.dream import ShiftedLogitsModel
from d1.models.llada import (
    LLaDAConfig,
    LLaDAModelLM,
    initialize_llada_weights,
    tiny_llada_config,
    tiny_llada_config_for_tokenizer,
)
from d1.models.loading import TokenIds, load_hf_model, load_model, load_tokenizer, token_ids
from d1.models.lora import LLADA_LORA_TARGETS, apply_lora, linear_module_names, merge_adapter
from d1.models.tokenizer import build_tokenizer, task_corpus, train_tokenizer

__all__ = [
    "prompt_text",
    "sft_texts",
    "LLADA_LORA_TARGETS",
    "LLaDAConfig",
    "LLaDAModelLM",
    "ShiftedLogitsModel",
    "TokenIds",
    "apply_lora",
    "build_tokenizer",
    "initialize_llada_weights",
    "linear_module_names",
    "load_hf_model",
    "load_model",
    "load_tokenizer",
    "merge_adapter",
    "task_corpus",
    "tiny_llada_config",
    "tiny_llada_config_for_tokenizer",
    "token_ids",
    "train_tokenizer",
]
