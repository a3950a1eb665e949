"""load_model / load_tokenizer / token_ids on local folders (offline)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from d1.errors import ConfigError
from d1.models.dream import ShiftedLogitsModel
from d1.models.llada import LLaDAConfig, LLaDAModelLM
from d1.models.loading import TokenIds, load_model, load_tokenizer, resolve_dtype, token_ids
from tests.models.conftest import make_tiny_model


@pytest.fixture
def tiny_folder(tmp_path, tiny_tokenizer) -> Path:
    folder = tmp_path / "tiny"
    model = make_tiny_model(
        vocab_size=len(tiny_tokenizer),
        mask_token_id=tiny_tokenizer.mask_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_load_model_and_tokenizer_from_folder(tiny_folder, tiny_tokenizer):
    model = load_model(tiny_folder)
    assert type(model) is LLaDAModelLM
    assert next(model.parameters()).dtype == torch.float32
    tok = load_tokenizer(tiny_folder)
    assert tok.mask_token_id == tiny_tokenizer.mask_token_id
    ids = token_ids(model, tok)
    assert ids == TokenIds(mask_id=5, eos_id=1, pad_id=1, eot_id=2, bos_id=0)


def test_load_model_in_bfloat16(tiny_folder):
    model = load_model(tiny_folder, dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.float32


def test_resolve_dtype():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(None) is None
    assert resolve_dtype("auto") == "auto" and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ConfigError, match="float8"):
        resolve_dtype("float8")


def test_missing_model_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="no-such-dir"):
        load_model(tmp_path / "no-such-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ConfigError, match="nobody/not-a-cached-model"):
        load_model("nobody/not-a-cached-model")  # offline and not cached
    with pytest.raises(ConfigError, match="no-tokenizer"):
        load_tokenizer(tmp_path / "no-tokenizer")


def test_llada_config_with_auto_map_never_runs_remote_code(tmp_path):
    # LLaDA's published config.json names remote code files that are not in the folder:
    # loading must use our class even when remote code is allowed.
    model = make_tiny_model()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModel": "modeling_llada.LLaDAModelLM",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    }
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    for trust in (False, True):
        assert type(load_model(tmp_path / "m", trust_remote_code=trust)) is LLaDAModelLM


TOY_CONFIG = '''
from transformers import PretrainedConfig

class ToyDreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(self, vocab_size=11, hidden_size=8, mask_token_id=10, eos_token_id=1, pad_token_id=1, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.mask_token_id = mask_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        super().__init__(**kwargs)
'''

TOY_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput
from .configuration_toy import ToyDreamConfig

class ToyDreamModel(PreTrainedModel):
    config_class = ToyDreamConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return MaskedLMOutput(logits=self.head(self.embed(input_ids)))
'''


@pytest.fixture
def remote_code_folder(tmp_path) -> Path:
    folder = tmp_path / "toy_dream"
    folder.mkdir()
    (folder / "configuration_toy.py").write_text(TOY_CONFIG)
    (folder / "modeling_toy.py").write_text(TOY_MODEL)
    config = {
        "model_type": "Dream",
        "architectures": ["ToyDreamModel"],
        "auto_map": {"AutoConfig": "configuration_toy.ToyDreamConfig", "AutoModel": "modeling_toy.ToyDreamModel"},
        "vocab_size": 11,
        "hidden_size": 8,
        "mask_token_id": 10,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    (folder / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    save_file({"embed.weight": torch.randn(11, 8, generator=g), "head.weight": torch.randn(11, 8, generator=g)},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_remote_code_needs_permission(remote_code_folder):
    with pytest.raises(ConfigError, match=r"toy_dream.*trust_remote_code"):
        load_model(remote_code_folder)


def test_remote_code_model_loads_when_allowed_and_dream_gets_the_shift_adapter(remote_code_folder):
    model = load_model(remote_code_folder, trust_remote_code=True)
    assert isinstance(model, ShiftedLogitsModel)
    x = torch.tensor([[2, 3, 4, 5]])
    with torch.no_grad():
        inner = model.inner(x).logits
        outer = model(x).logits
    assert torch.equal(outer[:, 1:], inner[:, :-1].float())
    plain = load_model(remote_code_folder, trust_remote_code=True, shifted_logits=False)
    assert not isinstance(plain, ShiftedLogitsModel)
    tok = SimpleNamespace(mask_token_id=None, eos_token_id=1, pad_token_id=None, bos_token_id=None, unk_token_id=None,
                          convert_tokens_to_ids=lambda t: None)
    assert token_ids(model, tok) == TokenIds(mask_id=10, eos_id=1, pad_id=1)


def _tok(**ids):
    values = dict(mask_token_id=None, eos_token_id=None, pad_token_id=None, bos_token_id=None, unk_token_id=None)
    values.update(ids)
    return SimpleNamespace(convert_tokens_to_ids=lambda t: values["unk_token_id"], **values)


def test_token_ids_llada_style_mask_from_config():
    # LLaDA-8B-Instruct: the tokenizer has no mask token; the config has mask_token_id.
    ids = token_ids(LLaDAConfig(), _tok(eos_token_id=126081, pad_token_id=126081, bos_token_id=126080))
    assert ids == TokenIds(mask_id=126336, eos_id=126081, pad_id=126081, eot_id=None, bos_id=126080)


def test_token_ids_errors():
    no_mask = LLaDAConfig(mask_token_id=None)
    with pytest.raises(ConfigError, match="no mask token"):
        token_ids(no_mask, _tok(eos_token_id=1))
    with pytest.raises(ConfigError, match="mask_token_id differs"):
        token_ids(LLaDAConfig(mask_token_id=7), _tok(mask_token_id=8, eos_token_id=126081))
    with pytest.raises(ConfigError, match="EOS"):
        token_ids(LLaDAConfig(eos_token_id=None), _tok())
    # pad falls back to the tokenizer's, then to EOS
    assert token_ids(LLaDAConfig(pad_token_id=None), _tok(eos_token_id=126081, pad_token_id=4)).pad_id == 4
    assert token_ids(LLaDAConfig(pad_token_id=None), _tok(eos_token_id=126081)).pad_id == 126081


def test_end_of_turn_ids():
    assert TokenIds(mask_id=5, eos_id=1, pad_id=1, eot_id=2).end_of_turn_ids() == [1, 2]
    assert TokenIds(mask_id=5, eos_id=1, pad_id=1).end_of_turn_ids() == [1]
