"""Checkpoints mirrored to a store (d1/train/checkpoint_store.py) resume a run on a fresh machine.

"A fresh machine": a second run with its own, empty ``checkpoint_root`` and a new ``out_dir``
and the same config and inputs; once with a folder as the store, once with a real S3 server
(SeaweedFS on loopback, credentials from the environment only).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from d1.errors import ConfigError
from d1.train.sft import run_sft
from tests.s3_server import WeedNotFound, running_s3_server
from tests.train.test_sft import Killed, kill_after, sft_config


def interrupted_then_resumed_elsewhere(tiny_base, tiny_data, tmp_path, store: str, monkeypatch) -> dict:
    """Three checkouts (folders with the same relative out_dir and checkpoint_root): an uninterrupted
    run, a run stopped after its third checkpoint, and a fresh one that resumes from the store."""
    common = dict(max_steps=4, save_steps=1, save_total_limit=2, checkpoint_root=".d1-checkpoints")
    for name in ("straight", "first", "fresh"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "straight")
    run_sft(sft_config(tiny_base, tiny_data, "outputs/sft", **common))
    monkeypatch.chdir(tmp_path / "first")
    with pytest.raises(Killed):  # checkpoints 1-3 copied to the store, step 4 lost
        run_sft(sft_config(tiny_base, tiny_data, "outputs/sft", checkpoint_store=store, **common),
                callbacks=[kill_after(4)])
    monkeypatch.chdir(tmp_path / "fresh")
    summary = run_sft(sft_config(tiny_base, tiny_data, "outputs/sft", checkpoint_store=store, **common))
    a = load_file(str(tmp_path / "straight" / "outputs" / "sft" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "fresh" / "outputs" / "sft" / "model" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)
    return summary


def test_a_run_resumes_from_a_folder_store_on_a_fresh_machine(tiny_base, tiny_data, tmp_path, monkeypatch):
    store = tmp_path / "store"
    summary = interrupted_then_resumed_elsewhere(tiny_base, tiny_data, tmp_path, str(store), monkeypatch)
    assert summary["resumed_from"] == 3
    assert sorted(p.name for p in store.glob("*/*/step-*")) == ["step-3", "step-4"]  # the last save_total_limit


@pytest.mark.s3
def test_a_run_resumes_from_s3_on_a_fresh_machine(tiny_base, tiny_data, tmp_path, monkeypatch):
    try:
        server_cm = running_s3_server(tmp_path / "s3")
        server = server_cm.__enter__()
    except WeedNotFound as exc:
        pytest.skip(str(exc))
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
        summary = interrupted_then_resumed_elsewhere(tiny_base, tiny_data, tmp_path,
                                                     f"s3://{server.bucket}/checkpoints", monkeypatch)
        assert summary["resumed_from"] == 3
        import s3fs

        fs = s3fs.S3FileSystem(**server.storage_options, skip_instance_cache=True)
        assert fs.find(f"{server.bucket}/checkpoints") and all(
            server.secret not in p for p in fs.find(f"{server.bucket}/checkpoints"))
    finally:
        server_cm.__exit__(None, None, None)


def test_a_store_needs_a_checkpoint_root_and_a_known_scheme(tiny_base, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="sft.checkpoint_store: needs checkpoint_root"):
        sft_config(tiny_base, tiny_data, tmp_path / "out", checkpoint_store=str(tmp_path / "store"))
    with pytest.raises(ConfigError, match="sft.checkpoint_store: 'gs://b/x': expected a folder or s3://"):
        sft_config(tiny_base, tiny_data, tmp_path / "out", checkpoint_root="c", checkpoint_store="gs://b/x")
