"""The local Prefect stack: a server on SQLite at 127.0.0.1, work pools, deployments, workers.

Everything lives in one state folder (default ``<checkout>/.d1-stack``, which
ignores itself in git): ``home/`` (PREFECT_HOME: the SQLite database, the
profile), ``state.json`` (the port and the pid of every process started) and
the processes' logs. ``down`` stops exactly the processes recorded there, by
pid (each was started in its own process group, and is checked to be the same
process before it is signalled). Analytics are off.

The one-shot of the README's main command (run a deployment through this
stack and report) is infra.local.oneshot.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from d1.errors import D1Error

DEFAULT_PORT = 4200
POOLS = ("cpu", "gpu")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class StackError(D1Error):
    """The local stack could not be started, reached or used."""


def _free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise StackError("no free TCP port on 127.0.0.1")


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(proc: dict) -> bool:
    start = _proc_start_time(proc["pid"])
    return start is not None and start == proc.get("start")


def _stop(proc: dict, timeout: float = 15.0) -> None:
    """SIGTERM the process group we started (leader ``pid``), SIGKILL it if it lingers."""
    if not _alive(proc):
        return
    pgid = proc["pid"]  # started with start_new_session: its pid is its group id
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            try:
                os.waitpid(pgid, os.WNOHANG)  # reap it if it is our child
            except ChildProcessError:
                pass
            if not _alive(proc):
                return
            time.sleep(0.2)


@dataclass
class LocalStack:
    root: Path  # the checkout (prefect.yaml, dvc.yaml)
    state_dir: Path | None = None
    port: int | None = None
    gpu_checkout: Path | None = None  # where gpu-pool runs work (default: the same checkout)
    query_seconds: float = 2.0  # how often workers poll the server
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.state_dir = Path(self.state_dir or self.root / ".d1-stack").resolve()
        state = self._read_state()
        if self.port is None:
            self.port = state.get("port")

    # ------------------------------------------------------------------ state

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / ".gitignore").write_text("*\n")
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_file)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment of every Prefect command and process of this stack."""
        env = dict(os.environ)
        env.update({
            "PREFECT_HOME": str(self.state_dir / "home"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.state_dir / 'home' / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": str(self.query_seconds),
            "PREFECT_CLI_COLORS": "false",
            "D1_CHECKOUT": str(self.root),
            "D1_GPU_CHECKOUT": str(self.gpu_checkout or self.root),
        })
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.update(self.extra_env)
        if env.get("PREFECT_SERVER_API_AUTH_STRING") and not env.get("PREFECT_API_AUTH_STRING"):
            env["PREFECT_API_AUTH_STRING"] = env["PREFECT_SERVER_API_AUTH_STRING"]  # our clients and workers
        return env

    @property
    def auth_string(self) -> str | None:
        """``user:password`` the server requires (``PREFECT_SERVER_API_AUTH_STRING``), or None."""
        return self.env().get("PREFECT_API_AUTH_STRING") or None

    def client(self):
        """A Prefect client of this stack's server (with its auth string, if it has one)."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url, auth_string=self.auth_string)

    def _prefect(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "prefect", *args]
        proc = subprocess.run(cmd, cwd=self.root, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
            raise StackError(f"`prefect {' '.join(args)}` failed: {' | '.join(tail)}")
        return proc

    def _spawn(self, name: str, args: Sequence[str]) -> dict:
        log = open(self.state_dir / f"{name}.log", "ab")
        try:
            p = subprocess.Popen([sys.executable, "-m", "prefect", *args], cwd=self.root, env=self.env(),
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        finally:
            log.close()
        return {"name": name, "pid": p.pid, "start": _proc_start_time(p.pid), "args": list(args)}

    # ------------------------------------------------------------------ server

    def healthy(self) -> bool:
        if not self.port:
            return False
        request = urllib.request.Request(f"{self.api_url}/health")
        if self.auth_string:
            token = base64.b64encode(self.auth_string.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def processes(self) -> list[dict]:
        return [p for p in self._read_state().get("processes", []) if _alive(p)]

    def start_server(self, timeout: float = 120.0) -> None:
        state = self._read_state()
        server = next((p for p in state.get("processes", []) if p["name"] == "server" and _alive(p)), None)
        if server and self.healthy():
            return
        self.port = _free_port(self.port or DEFAULT_PORT)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        home = self.state_dir / "home"
        home.mkdir(exist_ok=True)
        home.chmod(0o700)  # the database (flow parameters, logs, artifacts) is its owner's alone
        server = self._spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)])
        self._write_state({"port": self.port, "processes": [*self.processes(), server]})
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not _alive(server):
                raise StackError(f"the Prefect server exited; see {self.state_dir / 'server.log'}")
            if time.monotonic() > deadline:
                raise StackError(f"the Prefect server did not answer within {timeout:.0f} s; "
                                 f"see {self.state_dir / 'server.log'}")
            time.sleep(0.5)

    # ------------------------------------------------------------------ pools, deployments, workers

    def create_pools(self, pools: Sequence[str] = POOLS) -> None:
        """Create the process work pools that do not exist yet."""
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
        from prefect.workers.process import ProcessWorker

        template = ProcessWorker.get_default_base_job_template()
        with self.client() as client:
            for pool in pools:
                try:
                    client.read_work_pool(pool)
                except ObjectNotFound:
                    try:
                        client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                                               base_job_template=template))
                    except ObjectAlreadyExists:
                        pass

    def deploy(self) -> str:
        """``prefect deploy --all`` of the checkout's prefect.yaml."""
        if not (self.root / "prefect.yaml").is_file():
            raise StackError(f"{self.root}: no prefect.yaml")
        return self._prefect("--no-prompt", "deploy", "--all", timeout=600).stdout

    def start_worker(self, pool: str) -> dict:
        running = next((p for p in self.processes() if p["name"] == f"worker-{pool}"), None)
        if running:
            return running
        proc = self._spawn(f"worker-{pool}", ["worker", "start", "--pool", pool, "--type", "process",
                                              "--name", f"d1-{pool}-{os.getpid()}"])
        state = self._read_state()
        state["processes"] = [*self.processes(), proc]
        self._write_state(state)
        return proc

    def up(self, workers: Sequence[str] = ("cpu",)) -> None:
        self.start_server()
        self.create_pools()
        self.deploy()
        for pool in workers:
            self.start_worker(pool)

    def stop_workers(self) -> None:
        state = self._read_state()
        for p in state.get("processes", []):
            if p["name"].startswith("worker-"):
                _stop(p)
        state["processes"] = [p for p in self.processes() if not p["name"].startswith("worker-")]
        self._write_state(state)

    def down(self) -> list[str]:
        """Stop every process this stack started (workers first); returns their names."""
        state = self._read_state()
        procs = sorted(state.get("processes", []), key=lambda p: p["name"] == "server")
        stopped = []
        for p in procs:
            if _alive(p):
                _stop(p)
                stopped.append(f"{p['name']} (pid {p['pid']})")
        if state:
            state["processes"] = []
            self._write_state(state)
        return stopped

    def status(self) -> dict:
        return {"state_dir": str(self.state_dir), "api_url": self.api_url if self.port else None,
                "server_healthy": self.healthy(), "processes": self.processes()}

    # ------------------------------------------------------------------ runs

    def create_run(self, deployment: str, params: Sequence[str] = ()) -> str:
        """``prefect deployment run DEPLOYMENT [--param k=v ...]``; returns the flow-run id."""
        args = ["deployment", "run", deployment]
        for item in params:
            args += ["--param", item]
        out = self._prefect(*args).stdout
        found = _UUID_RE.findall(out)
        if not found:
            raise StackError(f"`prefect deployment run {deployment}` printed no flow-run id: {out.strip()[-300:]}")
        return found[-1]

    def flow_run(self, flow_run_id: str):

        with self.client() as client:
            return client.read_flow_run(flow_run_id)

    def wait(self, flow_run_id: str, timeout: float, poll: float = 2.0):
        """Poll the flow run until it is final; returns it (its state may be non-final at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.flow_run(flow_run_id)
            if (run.state and run.state.is_final()) or time.monotonic() > deadline:
                return run
            time.sleep(poll)

    def run_worker_once(self, pool: str, timeout: float, echo: Callable[[str], None] | None = None) -> int | None:
        """A foreground ``prefect worker start --run-once`` on ``pool``: it takes the runs scheduled on
        the pool and returns when they are over. Its output goes to ``echo``; it is stopped after
        ``timeout`` seconds. Returns its exit status (None if it had to be stopped)."""
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
               "--run-once", "--name", f"d1-{pool}-once-{os.getpid()}"]
        proc = subprocess.Popen(cmd, cwd=self.root, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        record = {"name": f"worker-{pool}-once", "pid": proc.pid, "start": _proc_start_time(proc.pid)}

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if echo:
                    echo(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None:
                _stop(record)
                proc.wait()
            reader.join(timeout=5)
