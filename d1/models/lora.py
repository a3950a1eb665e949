"""LoRA adapters through peft, with target modules checked against the model; merging.

d1's reference code asked peft for ``q_proj, k_proj, v_proj, o_proj,
gate_proj, up_proj, down_proj``. LLaDA has no ``o_proj``, ``gate_proj`` or
``down_proj`` (its names are ``attn_out``, ``ff_proj``, ``ff_out``), and peft
silently skips target names that match nothing, so the reference trained LoRA
on fewer modules than it listed. Here every requested name must match at
least one module (peft's rule: the full module name, or its last dotted
components), otherwise :func:`apply_lora` raises a ConfigError listing the
model's linear-layer names.

LLaDA reuses the name ``ff_out`` for each block's MLP output and for the
output layer (``model.transformer.ff_out``, d_model x vocab). A target
``ff_out`` therefore means the block MLP outputs; the output layer is left out
unless ``include_output_layer=True`` (peft alone would put LoRA on it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d1.errors import ConfigError

#: LLaDA's attention and MLP projections: the modules d1 meant to target.
LLADA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def read_adapter_config(adapter_path: str | Path) -> dict:
    """The ``adapter_config.json`` of a peft adapter folder, checked: a JSON object whose ``peft_type`` is
    one peft knows, and for LoRA a positive integer ``r`` and a numeric ``lora_alpha``. ConfigError naming
    the folder and the field otherwise (peft itself fails with a KeyError or a TypeError deep inside)."""
    from peft import PeftType

    from d1.models.loading import read_json_object

    what = f"adapter {str(adapter_path)!r}"
    file = Path(adapter_path) / ADAPTER_CONFIG
    if not file.is_file():
        raise ConfigError(f"{what}: no {ADAPTER_CONFIG} in that folder")
    data = read_json_object(file, f"{what}: {ADAPTER_CONFIG}")
    known = [t.value for t in PeftType]
    peft_type = data.get("peft_type")
    if peft_type not in known:
        raise ConfigError(f"{what}: {ADAPTER_CONFIG}: unknown peft_type {peft_type!r} (this pipeline writes "
                          f"'LORA'; peft knows {', '.join(known[:6])}, ...)")
    if peft_type == "LORA":
        r, alpha = data.get("r"), data.get("lora_alpha")
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ConfigError(f"{what}: {ADAPTER_CONFIG}: r must be a positive integer, got {r!r:.60}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise ConfigError(f"{what}: {ADAPTER_CONFIG}: lora_alpha must be a number, got {alpha!r:.60}")
        targets = data.get("target_modules")
        if not (targets is None or isinstance(targets, str)
                or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
            raise ConfigError(f"{what}: {ADAPTER_CONFIG}: target_modules must be a list of module names, "
                              f"got {targets!r:.60}")
    return data


def load_adapter(model: nn.Module, adapter_path: str | Path, *, is_trainable: bool = False) -> Any:
    """``PeftModel.from_pretrained(model, adapter_path)`` with every problem of the folder a ConfigError
    naming it: its config (see :func:`read_adapter_config`), missing or unreadable weights (truncated,
    random bytes), target modules the model lacks, weights of another shape or missing for a target."""
    import warnings

    from peft import PeftModel
    from safetensors import SafetensorError

    from d1.models.loading import check_safetensors_files, one_line

    what = f"adapter {str(adapter_path)!r}"
    read_adapter_config(adapter_path)
    folder = Path(adapter_path)
    if not any((folder / name).is_file() for name in _ADAPTER_WEIGHTS):
        raise ConfigError(f"{what}: no adapter weights ({' or '.join(_ADAPTER_WEIGHTS)}) in that folder")
    check_safetensors_files(folder, what)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)
        except (KeyError, TypeError, ValueError, OSError, RuntimeError, SafetensorError) as err:
            raise ConfigError(f"{what}: cannot load it onto {type(model).__name__} ({one_line(err)})") from None
    for warning in caught:  # peft only warns when a target module has no weights in the file
        if "missing adapter keys" in str(warning.message):
            raise ConfigError(f"{what}: its weights do not fit its {ADAPTER_CONFIG} "
                              f"({one_line(warning.message, 200)})")
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return peft_model


def linear_module_names(model: nn.Module) -> list[str]:
    """Sorted distinct last-component names of the model's nn.Linear modules (what LoRA can target)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def _matches(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)


def _output_layer_name(model: nn.Module) -> str | None:
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    if output is None:
        return None
    for name, module in model.named_modules():
        if module is output:
            return name
    return None


def apply_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
    include_output_layer: bool = False,
) -> Any:
    """Wrap ``model`` in a peft LoRA model; only the adapter parameters stay trainable.

    r, alpha, dropout: LoRA rank, scaling numerator (scale = alpha / r) and dropout.
    target_modules: module names (peft matching: full name or dotted suffix); each must
        match a linear module of ``model``.
    include_output_layer: also adapt the output layer when a target name matches it.
    Returns the ``peft.PeftModel`` (call it like the model).
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(target_modules, str):
        target_modules = [target_modules]
    targets = list(target_modules)
    if not targets:
        raise ConfigError("lora.target_modules is empty")
    if r <= 0:
        raise ConfigError(f"lora.r must be positive, got {r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {dropout}")

    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    missing = [t for t in targets if not any(_matches(name, t) for name in linear_names)]
    if missing:
        raise ConfigError(
            f"lora.target_modules: {', '.join(repr(m) for m in missing)} not found among the linear modules of "
            f"{type(model).__name__}; its linear module names are: {', '.join(linear_module_names(model))}"
        )
    exclude = []
    output_name = None if include_output_layer else _output_layer_name(model)
    if output_name and any(_matches(output_name, t) for t in targets):
        exclude.append(output_name)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        exclude_modules=exclude or None,
        bias="none",
    )
    return get_peft_model(model, config)


def merge_adapter(
    base_path: str | Path,
    adapter_path: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Merge a saved LoRA adapter into its base model and save a standalone model folder.

    base_path: folder or Hub id of the base model; adapter_path: folder written by
    ``PeftModel.save_pretrained``; out_dir: where the merged model goes (config + safetensors).
    The tokenizer is copied from the adapter folder if it has one, else from the base
    (when it can be loaded). Returns out_dir.
    """
    from d1.models.loading import load_hf_model, load_tokenizer

    adapter_dir = Path(adapter_path)
    read_adapter_config(adapter_dir)  # a bad adapter folder fails before the (large) base is loaded
    base = load_hf_model(base_path, dtype=dtype, trust_remote_code=trust_remote_code)
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))

    tokenizer_source = adapter_dir if any((adapter_dir / f).is_file() for f in _TOKENIZER_FILES) else base_path
    try:
        load_tokenizer(tokenizer_source, trust_remote_code=trust_remote_code).save_pretrained(str(out))
    except ConfigError:
        pass  # a base without a tokenizer: the merged folder holds the model only
    return out
