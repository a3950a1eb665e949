"""The local Prefect stack (infra/local/stack.py) with an API auth string, and its database private."""

from __future__ import annotations

import base64
import stat
import urllib.error
import urllib.request

import pytest

from infra.local.stack import LocalStack

pytestmark = pytest.mark.slow

AUTH = "d1admin:not-a-real-password"


def get(url: str, auth: str | None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_server_with_an_auth_string_refuses_clients_without_it(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    (tmp_path / "checkout").mkdir()
    stack = LocalStack(tmp_path / "checkout", state_dir=tmp_path / "stack",
                       extra_env={"PREFECT_SERVER_API_AUTH_STRING": AUTH})
    try:
        stack.start_server()  # its health check authenticates
        assert get(f"{stack.api_url}/admin/version", None) == 401
        assert get(f"{stack.api_url}/admin/version", "d1admin:wrong") == 401
        assert get(f"{stack.api_url}/admin/version", AUTH) == 200
        stack.create_pools(["cpu"])  # the stack's own client sends it
        with stack.client() as client:
            assert client.read_work_pool("cpu").type == "process"
        home = tmp_path / "stack" / "home"
        assert stat.S_IMODE(home.stat().st_mode) == 0o700  # the database is its owner's alone
        assert (home / "prefect.db").is_file()
    finally:
        stack.down()
