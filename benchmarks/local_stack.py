"""A `mlflow-gcp up --local` stack made the way a user makes one: the emulator as a daemon (a process of its own, as
`up --local` starts it, so the front end's threads never share this process's interpreter) on a fresh data
directory, a project of its own, `up`, then `env` for the credentials clients get."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from figures import progress
from targets import Target

from mlflow_gcp.emulator.daemon import start_daemon, stop_daemon
from mlflow_gcp.emulator.testing import EmulatorAdmin

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Stack:
    data: Path
    admin: EmulatorAdmin
    project: str
    state: Path
    env: dict[str, str]
    #: The service's URL (the emulator's Cloud Run front end) and the credentials `env` hands out.
    target: Target

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "mlflow_gcp", *args, "--local", "--project", self.project, "--state",
                str(self.state)]  # fmt: skip
        proc = subprocess.run(argv, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"mlflow-gcp {args[0]} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return proc

    def serving(self) -> tuple[str, int]:
        """The revision serving the service now and the pid of its process (the container's PID 1)."""
        live = [
            (name, p["pid"])
            for name, p in self.admin.run_processes().items()
            if name.startswith(f"projects/{self.project}/") and p["alive"] and p["ready"]
        ]
        if len(live) != 1:
            raise RuntimeError(f"expected one serving revision process, found {live}")
        return live[0]

    def processes(self) -> dict[str, Any]:
        return {k: v for k, v in self.admin.run_processes().items() if k.startswith(f"projects/{self.project}/")}


@contextmanager
def local_stack() -> Iterator[Stack]:
    # A short data path: Cloud SQL sockets live under it and unix socket paths are limited to 107 bytes.
    data = Path(tempfile.mkdtemp(prefix="mgr-", dir="/tmp"))
    try:
        info = start_daemon(data, port=0)
        admin = EmulatorAdmin(info["base_url"])
        project = f"bench-{uuid.uuid4().hex[:8]}"
        admin.add_project(project)
        env = {**os.environ, "MLFLOW_GCP_EMULATOR_URL": info["base_url"], "CI": "1"}
        env.pop("GOOGLE_CLOUD_PROJECT", None)
        stack = Stack(data, admin, project, data / "state", env, Target("ours", "", ("", "")))
        progress(f"up --local (project {project}, emulator {info['base_url']})")
        stack.cli("up", "--builder", "docker")
        creds = json.loads(stack.cli("env", "--json").stdout)
        auth = (creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"])
        stack.target = Target("ours", creds["MLFLOW_TRACKING_URI"], auth)
        yield stack
    finally:
        stop_daemon(data)
        shutil.rmtree(data, ignore_errors=True)
