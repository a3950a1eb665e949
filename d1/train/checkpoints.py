"""Checkpoints of a training run (see :class:`Checkpointer`).

Layout (``<out_dir>/checkpoints/step-N``, written to a temporary
folder and renamed, so a kill while saving leaves no half checkpoint)::

    model/               save_pretrained: the LoRA adapter, or the full model, + tokenizer
    optimizer.pt         optimiser state (AdamW moments, step counts)
    scheduler.pt         learning-rate scheduler state
    trainer_state.json   {"global_step", "stage", "config"} (+ stage extras)
    rng_state_<rank>.pt  torch / CUDA / python / numpy RNG states of each process
    <stage extras>       e.g. GRPO's rollouts_<rank>.pt when saved mid-round

Only the last ``save_total_limit`` checkpoints are kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from d1.config import to_dict, write_json_atomic
from d1.errors import ConfigError
from d1.train.common import MODEL_DIR, load_trainable_state, save_model_dir

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
#: config keys that may change between a run and its resumption (they do not change the trajectory)
RESUMABLE_CHANGES = frozenset({"max_steps", "epochs", "save_steps", "save_total_limit", "logging_steps",
                               "out_dir", "logging_dir", "merge_adapter"})


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` in step order (temporary folders are ignored)."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        name = path.name
        if path.is_dir() and name.startswith(STEP_PREFIX) and name[len(STEP_PREFIX):].isdigit():
            if (path / "trainer_state.json").is_file():
                found.append((int(name[len(STEP_PREFIX):]), path))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def check_resumable(cfg: Any, saved: dict) -> None:
    """ConfigError naming the keys whose change would make the resumed run differ from the saved one."""
    now = to_dict(cfg)
    changed = sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_CHANGES and now.get(k) != saved.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"{cfg.SECTION}: cannot resume, the config changed since the checkpoint ({detail}); "
                          "start a fresh run or restore the old values")


def _rng_states() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    return state


def _restore_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


@dataclasses.dataclass
class ResumeState:
    step: int
    path: Path
    trainer_state: dict


class Checkpointer:
    """Save, find, restore and prune checkpoints of one run (see the module docstring)."""

    def __init__(self, cfg: Any, accelerator: Any, stage: str):
        self.cfg = cfg
        self.accelerator = accelerator
        self.stage = stage
        self.root = checkpoint_root(cfg.out_dir)

    def save(self, step: int, *, model: torch.nn.Module, tokenizer: Any, optimizer: Any, scheduler: Any,
             extra_state: dict | None = None, extra_files: dict[str, Any] | None = None) -> Path:
        """Write ``step-N``; ``extra_files`` are per-process objects saved as ``<name>_<rank>.pt``."""
        acc = self.accelerator
        final = self.root / f"{STEP_PREFIX}{step}"
        tmp = self.root / f".{STEP_PREFIX}{step}.tmp"
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_model_dir(acc.unwrap_model(model), tokenizer, tmp / MODEL_DIR)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        acc.wait_for_everyone()
        rank = acc.process_index
        torch.save(_rng_states(), tmp / f"rng_state_{rank}.pt")
        for name, obj in (extra_files or {}).items():
            torch.save(obj, tmp / f"{name}_{rank}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"global_step": step, "stage": self.stage, "num_processes": acc.num_processes,
                     "config": to_dict(self.cfg), **(extra_state or {})}
            write_json_atomic(tmp / "trainer_state.json", state)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self.prune()
        acc.wait_for_everyone()
        return final

    def prune(self) -> None:
        limit = self.cfg.save_total_limit
        if limit is None:
            return
        for _, path in list_checkpoints(self.cfg.out_dir)[:-limit]:
            shutil.rmtree(path, ignore_errors=True)

    def clear(self) -> None:
        """Remove the checkpoints of an earlier run (a fresh run must not resume into them later)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process and self.root.exists():
            shutil.rmtree(self.root)
        self.accelerator.wait_for_everyone()

    def find(self) -> ResumeState | None:
        path = latest_checkpoint(self.cfg.out_dir)
        if path is None:
            return None
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        if state.get("stage") != self.stage:
            raise ConfigError(f"{path}: a {state.get('stage')!r} checkpoint, not {self.stage!r}")
        if state.get("num_processes") != self.accelerator.num_processes:
            raise ConfigError(f"{path}: saved by {state.get('num_processes')} processes, resumed with "
                              f"{self.accelerator.num_processes}; resume with the same number")
        check_resumable(self.cfg, state.get("config", {}))
        return ResumeState(step=int(state["global_step"]), path=path, trainer_state=state)

    def restore(self, resume: ResumeState, *, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
        """Load weights, optimiser, scheduler and this process's RNG states from ``resume``."""
        path = resume.path
        load_trainable_state(self.accelerator.unwrap_model(model), path / MODEL_DIR)
        # The optimiser moves its state to each parameter's device itself.
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng_file = path / f"rng_state_{self.accelerator.process_index}.pt"
        if rng_file.is_file():
            _restore_rng_states(torch.load(rng_file, weights_only=False))

    def load_extra(self, resume: ResumeState, name: str) -> Any | None:
        f = resume.path / f"{name}_{self.accelerator.process_index}.pt"
        device = self.accelerator.device
        # "cpu:0" (what accelerate reports in multi-CPU runs) is not a valid map_location.
        map_location = "cpu" if device.type == "cpu" else device
        return torch.load(f, map_location=map_location, weights_only=False) if f.is_file() else None
