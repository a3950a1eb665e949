"""The base-model stage: the model that SFT starts from and the "base" row of the report.

One stage, two ways to get a base model, so the stage graph is the same in every profile:

- ``pretrain`` (tiny, micro profiles): train the tokenizer and pre-train the
  built-in tiny LLaDA from scratch (:func:`d1.train.pretrain.run_pretrain`);
  the model is ``<out_dir>/model``.
- ``model`` (llada-8b profile): an existing model, a Hub id
  (``GSAI-ML/LLaDA-8B-Instruct``) or a local folder. Nothing is trained or
  downloaded here (SFT and evaluation load it themselves); the stage only
  records which model is the base.

Either way the stage writes ``<out_dir>/base.json``: ``{"model": what SFT and
the base evaluation load, "source": "pretrain" | "existing", "revision"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from d1.config import write_json_atomic, write_resolved
from d1.errors import ConfigError
from d1.train.pretrain_config import PretrainConfig

BASE_FILE = "base.json"


@dataclass
class BaseConfig:
    """Settings of the base stage (params section ``base``): exactly one of ``model`` and ``pretrain``."""

    SECTION: ClassVar[str] = "base"

    out_dir: str = "outputs/base"
    model: str | None = None  # Hub id or local folder of an existing base model
    revision: str | None = None  # recorded with a Hub id (the loaders use the default branch)
    pretrain: PretrainConfig | None = None  # pre-train the tiny model; its out_dir must be out_dir

    def validate(self) -> None:
        if not self.out_dir:
            raise ConfigError("base.out_dir: empty")
        if (self.model is None) == (self.pretrain is None):
            raise ConfigError("base: set exactly one of model (an existing base model) and pretrain "
                              "(pre-train the tiny model)")
        if self.model is not None and not self.model.strip():
            raise ConfigError("base.model: empty")
        if self.pretrain is not None and Path(self.pretrain.out_dir) != Path(self.out_dir):
            raise ConfigError(f"base.pretrain.out_dir: must be the stage's out_dir {self.out_dir!r}, "
                              f"got {self.pretrain.out_dir!r}")
        if self.pretrain is not None and self.revision is not None:
            raise ConfigError("base.revision: only applies to an existing model")

    @property
    def model_path(self) -> str:
        """What the next stages load: the pre-trained folder or the existing model."""
        return str(Path(self.out_dir) / "model") if self.pretrain is not None else str(self.model)


def run_base(cfg: BaseConfig, *, resume: bool = False) -> dict:
    """Run the base stage; returns a summary (the pre-training summary when it pre-trains)."""
    out = Path(cfg.out_dir)
    if cfg.pretrain is not None:
        from d1.train.pretrain import run_pretrain

        summary = run_pretrain(cfg.pretrain, resume=resume)
        source = "pretrain"
    else:
        out.mkdir(parents=True, exist_ok=True)
        summary = {"stage": "base", "out_dir": cfg.out_dir}
        source = "existing"
    record = {"model": cfg.model_path, "source": source, "revision": cfg.revision}
    write_json_atomic(out / BASE_FILE, record)
    write_resolved(cfg, out)
    return {**summary, "base": record}
