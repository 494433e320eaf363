"""Running the real CLI, as a user would, against the session's emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin

REPO = Path(__file__).parents[2]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Cli:
    project: str
    state_dir: Path
    env: dict[str, str]
    transcript: list[str]

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> Result:
        argv = [sys.executable, "-m", "mlflow_gcp", *args, "--local", "--project", self.project,
                "--state", str(self.state_dir)]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout, cwd=REPO)
        self.transcript += [proc.stdout, proc.stderr]
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"mlflow-gcp {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "mlflow_gcp", *args, "--local", "--project", self.project,
                "--state", str(self.state_dir)]  # fmt: skip
        return subprocess.Popen(argv, env=self.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def make_cli(emulator: Emulator, tmp_path: Path) -> Cli:
    project = f"e2e-{uuid.uuid4().hex[:8]}"
    EmulatorAdmin(emulator.base_url).add_project(project)
    env = {**os.environ, "MLFLOW_GCP_EMULATOR_URL": emulator.base_url, "CI": "1"}
    env.pop("GOOGLE_CLOUD_PROJECT", None)
    return Cli(project, tmp_path / "state", env, [])


@pytest.fixture
def cli(emulator: Emulator, tmp_path: Path) -> Cli:
    return make_cli(emulator, tmp_path)


@pytest.fixture
def admin(emulator: Emulator) -> Iterator[EmulatorAdmin]:
    yield EmulatorAdmin(emulator.base_url)
    # Settings never leak from one test into the next (faults, denials, org policies).
    emulator.world.control.reset()


@pytest.fixture
def clients(emulator: Emulator) -> Clients:
    return Clients(emulator.base_url)


def mutations_during(admin: EmulatorAdmin, action: Callable[[], Any]) -> list[dict[str, Any]]:
    start = len(admin.requests())
    action()
    return [e for e in admin.requests(start) if e["mutating"]]
