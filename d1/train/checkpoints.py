"""Checkpoints of a training run (see :class:`Checkpointer`).

Where: with ``checkpoint_root`` (the pipeline's profiles set it) in
``<checkpoint_root>/<out_dir as one name>/<fingerprint>/step-N``, outside the
stage's outputs, which DVC deletes before it runs a stage; the fingerprint
(:func:`run_fingerprint`) hashes the config and the content of the inputs, so
a stage started again with the same ones resumes by itself from its newest
complete checkpoint, and one with other settings starts fresh and removes the
old fingerprint's checkpoints once it has succeeded (unless
``keep_old_checkpoints``). ``checkpoint_store`` mirrors them to a folder or
S3 (:mod:`d1.train.checkpoint_store`). Without ``checkpoint_root``:
``<out_dir>/checkpoints/step-N``, resumed with ``--resume`` only.

Each ``step-N`` is written to a temporary folder and renamed, so a kill while
saving leaves no half checkpoint::

    model/               save_pretrained: the LoRA adapter, or the full model, + tokenizer
    optimizer.pt         optimiser state (AdamW moments, step counts); under FSDP gathered from
                         the shards and keyed by parameter name (:mod:`d1.train.run`)
                         (every .pt file holds tensors and plain data only and is read with
                         ``weights_only=True``: a checkpoint never runs code)
    scheduler.pt         learning-rate scheduler state
    trainer_state.json   {"global_step", "stage", "num_processes", "sharding", "config"} (+ stage extras)
    rng_state_<rank>.pt  torch / CUDA / python / numpy RNG states of each process
    <stage extras>       e.g. GRPO's rollouts_<rank>.pt when saved mid-round
    metrics/             the run's metrics folder (metrics.json, plots) as of this step
    complete.json        written last: the sha256 and size of every other file

A checkpoint is complete only with ``complete.json`` and every file it lists,
unchanged: resuming takes the newest complete one and skips a newer damaged one
(truncated, a file missing or altered) with a warning naming it.

Only the last ``save_total_limit`` checkpoints are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from d1.config import to_dict, write_json_atomic
from d1.errors import ConfigError
from d1.train.checkpoint_store import CheckpointStore
from d1.train.common import (
    MODEL_DIR,
    full_model_state,
    full_optimizer_state,
    is_fsdp,
    is_peft,
    load_full_optimizer_state,
    load_trainable_state,
    save_model_dir,
)
from d1.train.metrics import clear_metrics_folder

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
COMPLETE = "complete.json"
METRICS_COPY = "metrics"
#: config keys that may change between a run and its resumption (they do not change the trajectory;
#: grpo.per_task: the entry a run applied is in the fields it set, the other tasks' entries are not its)
RESUMABLE_CHANGES = frozenset({"max_steps", "epochs", "save_steps", "save_total_limit", "logging_steps",
                               "out_dir", "logging_dir", "merge_adapter", "checkpoint_root",
                               "keep_old_checkpoints", "max_nonfinite_steps", "checkpoint_store", "per_task"})
FINGERPRINT = "fingerprint.json"


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_root(out_dir: str | Path) -> Path:
    """Where a run without ``checkpoint_root`` keeps its checkpoints: inside its ``out_dir``."""
    return Path(out_dir) / CHECKPOINTS


def _tree_sha256(path: Path) -> str:
    """sha256 over the relative names and contents of every file under ``path`` (or of the file)."""
    if path.is_file():
        return _sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0" + _sha256(item).encode() + b"\n")
    return digest.hexdigest()


def run_fingerprint(cfg: Any, stage: str) -> dict:
    """What a run's trajectory depends on: its stage, its config (but the keys that may change on
    resume) and the content of its inputs (``model_path``, ``data_dir``; a Hub id counts as its name)."""
    config = {k: v for k, v in sorted(to_dict(cfg).items()) if k not in RESUMABLE_CHANGES}
    inputs = {}
    for key in ("model_path", "data_dir"):
        value = getattr(cfg, key, None)
        if value:
            path = Path(value)
            inputs[key] = _tree_sha256(path) if path.exists() else f"name:{value}"
    body = {"stage": stage, "config": config, "inputs": inputs}
    body["sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return body


def run_checkpoint_dir(cfg: Any, fingerprint: dict) -> Path:
    """``<checkpoint_root>/<out_dir as one name>/<fingerprint's first 16 hex digits>``."""
    return stage_checkpoint_dir(cfg) / fingerprint["sha256"][:16]


def stage_checkpoint_dir(cfg: Any) -> Path:
    """The folder holding every fingerprint's checkpoints of the run writing ``cfg.out_dir``."""
    name = Path(cfg.out_dir).as_posix().strip("/").replace("/", "--") or "out"
    return Path(cfg.checkpoint_root) / name


def list_checkpoints(out_dir: str | Path, *, root: Path | None = None) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` in step order (temporary folders are ignored).

    ``root``: the folder holding the ``step-N`` folders (default ``<out_dir>/checkpoints``).
    """
    root = checkpoint_root(out_dir) if root is None else root
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_complete_marker(folder: Path, step: int) -> None:
    """Write ``complete.json`` (sha256 and size of every file in ``folder``): the checkpoint is whole."""
    files = {p.relative_to(folder).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != COMPLETE}
    write_json_atomic(folder / COMPLETE, {"step": step, "files": files})


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when every file is there and unchanged."""
    marker = folder / COMPLETE
    if not marker.is_file():
        return f"no {COMPLETE} (the save did not finish)"
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
        items = [(name, int(meta["bytes"]), str(meta["sha256"])) for name, meta in listed.items()]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return f"{COMPLETE} is not readable"
    for name, size, sha in items:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if _sha256(path) != sha:
            return f"{name} changed since it was written"
    return None


def _flat(config: dict, prefix: str = "") -> dict:
    """A nested config as ``{dotted key: value}`` (``sampler.temperature``)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resumable(cfg: Any, saved: dict) -> None:
    """ConfigError naming the keys whose change would make the resumed run differ from the saved one
    (a key of a nested section by its dotted path, ``sampler.temperature``)."""
    now, saved = _flat(to_dict(cfg)), _flat(saved)
    changed = sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_CHANGES and now.get(k) != saved.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"{cfg.SECTION}: cannot resume, the config changed since the checkpoint ({detail}); "
                          "start a fresh run or restore the old values")


def _rng_states() -> dict:
    """RNG states of this process in types ``torch.load(weights_only=True)`` reads (tensors, tuples, numbers)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
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

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def load_state(path: Path, *, map_location: Any = "cpu") -> Any:
    """A checkpoint file saved with ``torch.save``, read with ``weights_only=True``: tensors and plain
    containers only, never code (checkpoints travel through DVC remotes and shared storage).

    A file that is not such a file (truncated, replaced, a pickle that would run code) is a
    ConfigError naming it.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing from the checkpoint") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a bad file
        raise ConfigError(f"{path}: not a readable checkpoint state ({type(exc).__name__}; read with "
                          "weights_only=True: tensors and plain data only)") from None


def _sharding(accelerator: Any) -> str:
    """How the run holds its weights: ``fsdp`` (shards, name-keyed optimiser state) or ``replicated``."""
    return "fsdp" if is_fsdp(accelerator) else "replicated"


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
        #: automatic resume: checkpoints keyed by the run's fingerprint, outside its outputs
        self.automatic = bool(getattr(cfg, "checkpoint_root", ""))
        self.store = None
        if self.automatic:
            self.fingerprint = run_fingerprint(cfg, stage)
            self.root = run_checkpoint_dir(cfg, self.fingerprint)
            if getattr(cfg, "checkpoint_store", ""):
                self.store = CheckpointStore(cfg.checkpoint_store,
                                             f"{self.root.parent.name}/{self.root.name}")
        else:
            self.fingerprint = None
            self.root = checkpoint_root(cfg.out_dir)

    def save(self, step: int, *, model: torch.nn.Module, tokenizer: Any, optimizer: Any, scheduler: Any,
             extra_state: dict | None = None, extra_files: dict[str, Any] | None = None) -> Path:
        """Write ``step-N``; ``extra_files`` are per-process objects saved as ``<name>_<rank>.pt``."""
        acc = self.accelerator
        final = self.root / f"{STEP_PREFIX}{step}"
        tmp = self.root / f".{STEP_PREFIX}{step}.tmp"
        acc.wait_for_everyone()
        sharded = is_fsdp(acc)
        if sharded:  # collectives: every process gathers its shards, the main one receives them
            model_state = full_model_state(model, trainable_only=is_peft(acc.unwrap_model(model)))
            optimizer_state = full_optimizer_state(model, optimizer)
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if sharded:
                save_model_dir(acc.unwrap_model(model), tokenizer, tmp / MODEL_DIR, state_dict=model_state)
                torch.save(optimizer_state, tmp / "optimizer.pt")
                del model_state, optimizer_state
            else:
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
            metrics = Path(self.cfg.dvclive_dir)
            if metrics.is_dir():  # the curves so far, for a resume whose logging folder is gone
                shutil.copytree(metrics, tmp / METRICS_COPY)
            state = {"global_step": step, "stage": self.stage, "num_processes": acc.num_processes,
                     "sharding": _sharding(acc), "config": to_dict(self.cfg), **(extra_state or {})}
            write_json_atomic(tmp / "trainer_state.json", state)
            write_complete_marker(tmp, step)
            shutil.rmtree(final, ignore_errors=True)
            if self.fingerprint is not None and not (self.root / FINGERPRINT).is_file():
                write_json_atomic(self.root / FINGERPRINT, self.fingerprint)
            os.replace(tmp, final)
            self.prune()
            if self.store is not None:  # a durable copy, for a resume on another machine
                self.store.upload(step, final)
                self.store.prune({s for s, _ in list_checkpoints(self.cfg.out_dir, root=self.root)})
        acc.wait_for_everyone()
        return final

    def prune(self) -> None:
        limit = self.cfg.save_total_limit
        if limit is None:
            return
        for _, path in list_checkpoints(self.cfg.out_dir, root=self.root)[:-limit]:
            shutil.rmtree(path, ignore_errors=True)

    def clear(self) -> None:
        """Remove the checkpoints of an earlier run (a fresh run must not resume into them later)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process and self.root.exists():
            shutil.rmtree(self.root)
        self.accelerator.wait_for_everyone()

    def _fetch_newer_from_store(self) -> None:
        """Download the store's newest checkpoint when it is newer than every local one."""
        local = [step for step, path in list_checkpoints(self.cfg.out_dir, root=self.root)
                 if checkpoint_problem(path) is None]
        remote = self.store.steps()
        if remote and remote[-1] > max(local, default=0):
            path = self.store.download(remote[-1], self.root)
            log.info("%s: fetched checkpoint step %d from %s into %s", self.stage, remote[-1], self.store.url, path)

    def remove_other_fingerprints(self) -> list[Path]:
        """After a successful automatic-resume run: delete the checkpoints of this ``out_dir`` kept under
        other fingerprints (older configs or inputs), unless ``keep_old_checkpoints``. Returns them."""
        if not self.automatic or self.cfg.keep_old_checkpoints or not self.accelerator.is_main_process:
            return []
        parent = self.root.parent
        removed = [p for p in sorted(parent.iterdir()) if p.is_dir() and p != self.root] if parent.is_dir() else []
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    def find(self) -> ResumeState | None:
        """The newest complete checkpoint (damaged newer ones are skipped with a warning), or None."""
        if self.store is not None and self.accelerator.is_main_process:
            self._fetch_newer_from_store()
        self.accelerator.wait_for_everyone()
        for step, path in reversed(list_checkpoints(self.cfg.out_dir, root=self.root)):
            problem = checkpoint_problem(path)
            if problem is not None:
                log.warning("%s: skipping checkpoint %s: %s", self.stage, path, problem)
                continue
            try:
                state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):  # complete.json vouched for it: changed since
                log.warning("%s: skipping checkpoint %s: trainer_state.json is not readable", self.stage, path)
                continue
            if state.get("stage") != self.stage:
                raise ConfigError(f"{path}: a {state.get('stage')!r} checkpoint, not {self.stage!r}")
            if state.get("num_processes") != self.accelerator.num_processes:
                raise ConfigError(f"{path}: saved by {state.get('num_processes')} processes, resumed with "
                                  f"{self.accelerator.num_processes}; resume with the same number")
            saved_sharding = state.get("sharding", "replicated")  # checkpoints from before FSDP: replicated
            if saved_sharding != _sharding(self.accelerator):
                raise ConfigError(f"{path}: saved by a {saved_sharding} run, resumed by a "
                                  f"{_sharding(self.accelerator)} one; resume with the same accelerate config")
            step_saved = state.get("global_step") if isinstance(state, dict) else None
            if not isinstance(step_saved, int) or step_saved != step:
                log.warning("%s: skipping checkpoint %s: trainer_state.json says step %r", self.stage, path,
                            step_saved)
                continue
            check_resumable(self.cfg, state.get("config", {}))
            return ResumeState(step=step_saved, path=path, trainer_state=state)
        return None

    def restore_weights(self, resume: ResumeState, model: torch.nn.Module) -> None:
        """Load the checkpoint's weights into ``model`` before ``accelerator.prepare`` (which shards it
        under FSDP)."""
        load_trainable_state(model, resume.path / MODEL_DIR)

    def restore(self, resume: ResumeState, *, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
        """Load optimiser, scheduler and this process's RNG states from ``resume`` into the prepared
        ``model``'s optimiser (the weights: :meth:`restore_weights`, before ``prepare``)."""
        path = resume.path
        if is_fsdp(self.accelerator):  # read on the main process, sharded to all (a collective)
            main = self.accelerator.is_main_process
            load_full_optimizer_state(model, optimizer, load_state(path / "optimizer.pt") if main else {})
        else:
            # The optimiser moves its state to each parameter's device itself.
            optimizer.load_state_dict(load_state(path / "optimizer.pt"))
        scheduler.load_state_dict(load_state(path / "scheduler.pt"))
        rng_file = path / f"rng_state_{self.accelerator.process_index}.pt"
        if rng_file.is_file():
            _restore_rng_states(load_state(rng_file))

    def restore_metrics(self, resume: ResumeState) -> None:
        """Put the checkpoint's copy of the metrics folder back in ``cfg.dvclive_dir`` (replacing what a
        later, interrupted part of the run logged there)."""
        saved = resume.path / METRICS_COPY
        if not saved.is_dir():
            return
        target = Path(self.cfg.dvclive_dir)
        clear_metrics_folder(target, where=f"{self.cfg.SECTION}.logging_dir")
        shutil.copytree(saved, target, dirs_exist_ok=True)

    def load_extra(self, resume: ResumeState, name: str) -> Any | None:
        f = resume.path / f"{name}_{self.accelerator.process_index}.pt"
        device = self.accelerator.device
        # "cpu:0" (what accelerate reports in multi-CPU runs) is not a valid map_location.
        map_location = "cpu" if device.type == "cpu" else device
        return load_state(f, map_location=map_location) if f.is_file() else None
