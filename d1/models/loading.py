"""Load a masked-diffusion LM and its tokenizer; read its special token ids.

``load_model(name_or_path)`` accepts a local folder or a Hub id (the same
``from_pretrained`` code path; nothing is downloaded when HF_HUB_OFFLINE=1):

* ``model_type: "llada"`` (LLaDA-8B-Instruct, our tiny model): our own
  :class:`~d1.models.llada.LLaDAModelLM`, never LLaDA's remote code, even when
  the config.json carries LLaDA's ``auto_map``.
* Any other model that needs remote code (Dream-7B, ...): loaded with
  ``trust_remote_code=True`` only when the caller allows it; otherwise a
  ConfigError names the model and the parameter to set.
* Models trained with shifted logits (``model_type`` in
  :data:`SHIFTED_LOGITS_MODEL_TYPES`, i.e. Dream) are wrapped in
  :class:`~d1.models.dream.ShiftedLogitsModel`.

``token_ids(model, tokenizer)`` reads mask / EOS / pad / EOT ids from the model
config and the tokenizer, never from constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PretrainedConfig,
)

import d1.models.llada  # noqa: F401  (registers model_type "llada" with the Auto classes)
from d1.errors import ConfigError
from d1.models.dream import ShiftedLogitsModel

#: model types whose logit for position i is produced at position i - 1
SHIFTED_LOGITS_MODEL_TYPES = frozenset({"Dream", "dream"})
#: model types implemented in this package (always loaded without remote code)
NATIVE_MODEL_TYPES = frozenset({"llada"})

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# transformers renamed from_pretrained's torch_dtype to dtype in 4.56.
_DTYPE_KWARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """None (library default), "auto" (the checkpoint's), a name (float32, bf16, ...) or a torch.dtype."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}") from None


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (library messages often span several), at most ``limit`` chars."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_json_object(file: Path, label: str, expected: str = "an object") -> dict:
    """The JSON object in ``file``; ConfigError ``<label> ...`` when it is not UTF-8 JSON holding an object."""
    import json

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{label} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{label} is not valid JSON ({err})") from None
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{label} cannot be read ({one_line(err, 150)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label} holds a JSON {type(data).__name__}, expected {expected}")
    return data


def _read_local_config(path: Path, name: str) -> None:
    """ConfigError naming the problem when a folder's config.json is not a JSON object."""
    read_json_object(path / "config.json", f"model {name!r}: config.json", "an object (the model's settings)")


def read_config_dict(name_or_path: str | Path, *, revision: str | None = None) -> dict:
    """The raw config.json of a folder or Hub id (ConfigError if it cannot be read)."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"model {name!r}: expected a model folder, got a file")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"model {name!r}: folder has no config.json")
    if not path.exists() and name.count("/") != 1:
        raise ConfigError(f"model {name!r}: no such folder (and not a Hub id of the form org/name)")
    if path.is_dir():
        _read_local_config(path, name)
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(str(path) if path.exists() else name, revision=revision)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model {name!r}: cannot read its config.json ({one_line(err)})") from err
    if not isinstance(config_dict, dict):
        raise ConfigError(f"model {name!r}: config.json holds a JSON {type(config_dict).__name__}, expected an object")
    if config_dict.get("model_type") in NATIVE_MODEL_TYPES:
        check_llada_config(config_dict, name)
    return config_dict


#: LLaDA sizes that must be positive integers (None allowed where the type says so)
_POSITIVE_FIELDS = ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_ratio", "mlp_hidden_size", "vocab_size",
                    "embedding_size", "max_sequence_length", "block_group_size")
_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _fits(value: Any, tp: Any) -> bool:
    import types
    import typing

    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is type(None):
        return value is None
    return True


def _kind(tp: Any) -> str:
    import typing

    args = typing.get_args(tp) or (tp,)
    return " or ".join(_KIND.get(arg, getattr(arg, "__name__", str(arg))) for arg in args)


def check_llada_config(config_dict: dict, name: str) -> None:
    """ConfigError naming the field when a LLaDA config.json field has the wrong type (``"d_model": "abc"``)
    or a size is not positive: transformers would build the model from it and fail deep inside."""
    import inspect
    import typing

    from d1.models.llada import LLaDAConfig

    hints = typing.get_type_hints(LLaDAConfig.__init__)
    for field in inspect.signature(LLaDAConfig.__init__).parameters:
        if field not in config_dict or field not in hints:
            continue
        value, tp = config_dict[field], hints[field]
        if field.endswith("_token_id") and isinstance(value, list) and value:  # HF allows a list of ids
            value = value[0]
        if not _fits(value, tp):
            raise ConfigError(f"model {name!r}: config.json: {field} must be {_kind(tp)}, got {value!r:.60}")
        if field in _POSITIVE_FIELDS and value is not None and value <= 0:
            raise ConfigError(f"model {name!r}: config.json: {field} must be positive, got {value!r}")


def check_safetensors_files(folder: str | Path, what: str) -> None:
    """ConfigError naming the file when a ``*.safetensors`` file of a local folder cannot be read
    (truncated, random bytes): only its header and size are checked, no tensor is loaded."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for a bad file
            raise ConfigError(f"{what}: {file.name} is not a readable safetensors file, truncated or "
                              f"corrupt ({one_line(err, 150)})") from None


def _from_pretrained(auto_cls: Any, name: str, *, strict: bool = False, **kwargs: Any) -> nn.Module:
    """``auto_cls.from_pretrained``; ConfigError naming the model when it cannot be loaded.

    strict: the weights must fit the config exactly: a weight of another shape, a missing or an
    unexpected one is an error (transformers would re-initialise or drop it with a warning).
    """
    import pickle

    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    check_safetensors_files(name, f"model {name!r}")
    if strict:
        kwargs.update(output_loading_info=True, ignore_mismatched_sizes=True)
    verbosity = hf_logging.get_verbosity()
    if strict:
        hf_logging.set_verbosity_error()  # its multi-line load report: the problems are raised below instead
    try:
        loaded = auto_cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError, pickle.UnpicklingError) as err:
        raise ConfigError(f"model {name!r}: cannot load it ({one_line(err)})") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    if not strict:
        return loaded
    model, info = loaded
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        key, saved, wanted = sorted(mismatched, key=str)[0][:3]
        raise ConfigError(f"model {name!r}: its weights do not fit its config.json: {key} has shape "
                          f"{list(saved)} in the weights, the config makes it {list(wanted)}")
    for kind in ("missing", "unexpected"):
        keys = sorted(info.get(f"{kind}_keys") or [])
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            raise ConfigError(f"model {name!r}: its weights do not fit its config.json: {kind} weights "
                              f"{', '.join(keys[:3])}{more}")
    return model


def load_hf_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The transformers model behind ``name_or_path``, without any d1 adapter (see :func:`load_model`).

    kwargs go to ``from_pretrained`` (e.g. ``quantization_config``, ``device_map``).
    """
    name = str(name_or_path)
    config_dict = read_config_dict(name, revision=revision)
    model_type = config_dict.get("model_type")
    load_kwargs = dict(kwargs, revision=revision)
    if (resolved := resolve_dtype(dtype)) is not None:
        load_kwargs[_DTYPE_KWARG] = resolved
    if model_type in NATIVE_MODEL_TYPES:
        # A quantised load changes the parameters themselves: its loading report is not checked.
        return _from_pretrained(AutoModel, name, strict="quantization_config" not in kwargs,
                                trust_remote_code=False, **load_kwargs)
    auto_map = config_dict.get("auto_map") or {}
    if auto_map:
        if not trust_remote_code:
            raise ConfigError(
                f"model {name!r} (model_type {model_type!r}) needs its own remote code; "
                "set trust_remote_code: true in the model parameters to allow it"
            )
        for key, auto_cls in (
            ("AutoModel", AutoModel),
            ("AutoModelForMaskedLM", AutoModelForMaskedLM),
            ("AutoModelForCausalLM", AutoModelForCausalLM),
        ):
            if key in auto_map:
                return _from_pretrained(auto_cls, name, trust_remote_code=True, **load_kwargs)
        raise ConfigError(f"model {name!r}: its auto_map names no AutoModel class ({sorted(auto_map)})")
    # A model type transformers implements itself (a masked LM such as ModernBERT).
    return _from_pretrained(AutoModelForMaskedLM, name, trust_remote_code=False, **load_kwargs)


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    shifted_logits: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Load a masked-diffusion LM such that ``model(input_ids, attention_mask=...).logits[:, i]`` is for position i.

    name_or_path: a local folder (config.json + weights) or a Hub id.
    dtype: None (transformers' default), "auto", "float32", "bfloat16", "float16" or a torch.dtype.
    trust_remote_code: allow models other than LLaDA to run their own modelling code.
    shifted_logits: wrap in ShiftedLogitsModel; None = decide from the model type (Dream: yes).
    kwargs: passed to ``from_pretrained``.
    """
    model = load_hf_model(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision, **kwargs)
    if shifted_logits is None:
        shifted_logits = getattr(model.config, "model_type", None) in SHIFTED_LOGITS_MODEL_TYPES
    return ShiftedLogitsModel(model) if shifted_logits else model


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """The tokenizer saved with a model (folder or Hub id); ConfigError if there is none."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if not path.exists() and name.count("/") != 1:
        raise ConfigError(f"tokenizer {name!r}: no such folder (and not a Hub id of the form org/name)")
    try:
        return AutoTokenizer.from_pretrained(
            str(path) if path.exists() else name, trust_remote_code=trust_remote_code, revision=revision
        )
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ConfigError(f"tokenizer {name!r}: cannot load it ({one_line(err)})") from err


@dataclass(frozen=True)
class TokenIds:
    """Special token ids of a model + tokenizer pair.

    mask_id: the [MASK] the diffusion process uses. eos_id: end of text (d1
    pads SFT targets with it and truncates rewards at it). pad_id: padding
    (LLaDA: = eos_id). eot_id: end of turn (``<|eot_id|>``) when the
    tokenizer has one, else None. bos_id: None when there is none.
    """

    mask_id: int
    eos_id: int
    pad_id: int
    eot_id: int | None = None
    bos_id: int | None = None

    def end_of_turn_ids(self) -> list[int]:
        """The ids that end an assistant turn: EOS, and ``<|eot_id|>`` when there is one."""
        return [self.eos_id] + ([self.eot_id] if self.eot_id is not None else [])


def _first_id(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def _config_of(model_or_config: Any) -> Any:
    if isinstance(model_or_config, PretrainedConfig):
        return model_or_config
    config = getattr(model_or_config, "config", None)
    if config is None:
        raise ConfigError(f"{type(model_or_config).__name__} has no config to read token ids from")
    return config


def _pick(name: str, from_config: int | None, from_tokenizer: int | None, model_name: str) -> int | None:
    if from_config is not None and from_tokenizer is not None and from_config != from_tokenizer:
        raise ConfigError(
            f"model {model_name!r}: {name} differs between the model config ({from_config}) "
            f"and the tokenizer ({from_tokenizer})"
        )
    return from_config if from_config is not None else from_tokenizer


def token_ids(model_or_config: Any, tokenizer: Any) -> TokenIds:
    """Mask, EOS, pad, EOT and BOS ids from the model config (first) and the tokenizer.

    LLaDA-8B-Instruct's tokenizer has no mask token: its mask id (126336) comes
    from the config's ``mask_token_id``. A value present in both that differs
    is an error, as is a model without any mask or EOS id.
    """
    config = _config_of(model_or_config)
    model_name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "model")
    mask_id = _pick(
        "mask_token_id", _first_id(getattr(config, "mask_token_id", None)), tokenizer.mask_token_id, model_name
    )
    if mask_id is None:
        raise ConfigError(
            f"model {model_name!r} has no mask token: neither its config (mask_token_id) "
            "nor its tokenizer (mask_token) defines one, so it is not a masked-diffusion LM"
        )
    eos_id = _pick("eos_token_id", _first_id(getattr(config, "eos_token_id", None)), tokenizer.eos_token_id, model_name)
    if eos_id is None:
        raise ConfigError(f"model {model_name!r} has no EOS token id (config eos_token_id / tokenizer eos_token)")
    pad_id = _first_id(getattr(config, "pad_token_id", None))
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    eot_id = None
    unk = getattr(tokenizer, "unk_token_id", None)
    candidate = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    if isinstance(candidate, int) and candidate != unk:
        eot_id = candidate
    bos_id = tokenizer.bos_token_id
    return TokenIds(mask_id=mask_id, eos_id=eos_id, pad_id=pad_id, eot_id=eot_id, bos_id=bos_id)


__all__ = [
    "SHIFTED_LOGITS_MODEL_TYPES",
    "TokenIds",
    "load_hf_model",
    "load_model",
    "load_tokenizer",
    "read_config_dict",
    "resolve_dtype",
    "token_ids",
]


def is_adapter_folder(path: str | Path) -> bool:
    """True when ``path`` is a local folder holding a peft adapter (adapter_config.json)."""
    return (Path(path) / "adapter_config.json").is_file()


def load_for_inference(
    name_or_path: str | Path, *, dtype: Any = None, trust_remote_code: bool = False
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for a full model folder / Hub id, or a LoRA adapter folder.

    For an adapter the base comes from its ``base_model_name_or_path`` and the
    adapter is applied on top (not merged); the tokenizer is the adapter
    folder's when it has one, else the base's.
    """
    from d1.models.lora import load_adapter, read_adapter_config

    if not is_adapter_folder(name_or_path):
        model = load_model(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
        return model, load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    adapter_cfg = read_adapter_config(name_or_path)
    base = adapter_cfg.get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ConfigError(f"adapter {str(name_or_path)!r}: adapter_config.json names no base_model_name_or_path")
    model = load_adapter(load_model(base, dtype=dtype, trust_remote_code=trust_remote_code), name_or_path)
    has_tokenizer = (Path(name_or_path) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(name_or_path if has_tokenizer else base, trust_remote_code=trust_remote_code)
    return model, tokenizer
