"""The baseline: a stock ``mlflow server --app-name basic-auth`` as MLflow's docs start it, on this machine.

SQLite stores and local artifacts in a directory of its own (its working directory: MLflow's basic-auth ini puts
``basic_auth.db`` there, ``--serve-artifacts`` writes ``mlartifacts`` there), MLflow's default worker count (4 uvicorn
workers, ``mlflow/server/__init__.py:_run_server``), MLflow's default auth settings (no login cache:
``auth_cache_ttl_seconds = 0`` in ``mlflow/server/auth/basic_auth.ini``). MLflow refuses to start basic auth without
an admin password and a Flask secret key, so both are generated.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from figures import free_port, process_tree, progress
from targets import Target

START_TIMEOUT = 300.0


@dataclass
class StockServer:
    workdir: Path
    proc: subprocess.Popen[bytes]
    target: Target
    #: Seconds from spawn to the first 200 on /health.
    start_seconds: float

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextmanager
def stock_server() -> Iterator[StockServer]:
    workdir = Path(tempfile.mkdtemp(prefix="mgs-stock-", dir="/tmp"))
    auth = ("admin", f"bench-{uuid.uuid4().hex[:16]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_FLASK_SERVER_SECRET_KEY=uuid.uuid4().hex,
        MLFLOW_AUTH_ADMIN_USERNAME=auth[0],
        MLFLOW_AUTH_ADMIN_PASSWORD=auth[1],
    )
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
            "--port", str(port), "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}"]  # fmt: skip
    progress("stock: mlflow server --app-name basic-auth (SQLite, default workers)")
    log = (workdir / "server.log").open("ab")
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the stock server exited with {proc.returncode}; see {workdir / 'server.log'}")
            if time.perf_counter() - started > START_TIMEOUT:
                raise RuntimeError(f"the stock server did not answer in {START_TIMEOUT:.0f} s")
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.05)
        yield StockServer(workdir, proc, Target("stock", url, auth), time.perf_counter() - started)
    finally:
        tree = process_tree(proc.pid)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
