"""Running the real CLI, as a user would, against the session's emulator."""

from __future__ import annotations

import inspect
import json
import os
import signal
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
from mlflow_gcp.engine import Engine

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
    #: How the tool is run: from this checkout by default; tests/e2e/test_wheel.py runs an installed wheel.
    command: tuple[str, ...] = (sys.executable, "-m", "mlflow_gcp")
    cwd: Path = REPO

    def argv(self, args: tuple[str, ...]) -> list[str]:
        return [*self.command, *args, "--local", "--project", self.project, "--state", str(self.state_dir)]

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> Result:
        proc = subprocess.run(
            self.argv(args), capture_output=True, text=True, env=self.env, timeout=timeout, cwd=self.cwd
        )
        self.transcript += [proc.stdout, proc.stderr]
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"mlflow-gcp {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args), env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


def make_cli(emulator: Emulator, tmp_path: Path) -> Cli:
    project = f"e2e-{uuid.uuid4().hex[:8]}"
    EmulatorAdmin(emulator.base_url).add_project(project)
    env = {**os.environ, "MLFLOW_GCP_EMULATOR_URL": emulator.base_url, "CI": "1"}
    env.pop("GOOGLE_CLOUD_PROJECT", None)
    return Cli(project, tmp_path / "state", env, [])


@pytest.fixture
def cli(emulator: Emulator, tmp_path: Path) -> Cli:
    return make_cli(emulator, tmp_path)


@dataclass
class Deployed:
    """A stack `up` made, and what that cold `up` printed."""

    cli: Cli
    url: str
    up: Result


@pytest.fixture(scope="session")
def basic_stack(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """One basic-mode stack with the defaults, for the tests that only use one (`users`, `open`, the README's
    transcript of `up`): an `up` costs about 20 s. Its login cache is 2 s instead of 60, so a changed or removed
    password stops working within seconds (MLflow caches a verified login per worker that long)."""
    cli = make_cli(emulator, tmp_path_factory.mktemp("basic"))
    cli.env["MLFLOW_GCP_SERVER_AUTH_CACHE_TTL_SECONDS"] = "2"
    up = cli("up", "--json")
    return Deployed(cli, up.json()["url"], up)


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


def kill_after(cli: Cli, admin: EmulatorAdmin, k: int, *args: str) -> Result:
    """Run the CLI and have the emulator SIGKILL it right after its k-th mutating request was applied; prove it
    happened there: the process died by the signal, the emulator's log marks the kill on exactly the k-th
    mutating request of this run, and nothing mutated after it."""
    start = len(admin.requests())
    proc = cli.popen(*args)
    try:
        # The CLI takes over a second to import and read before its first mutation; the rule is set well before.
        admin.settings(kill_after_mutations=k, kill_pid=proc.pid, kill_signal=int(signal.SIGKILL))
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        admin.settings(kill_after_mutations=None, kill_pid=None)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"kill point {k}: not killed (exit {proc.returncode}):\n{stderr}"
    mutating = [e for e in admin.requests(start) if e["mutating"]]
    kills = [e for e in mutating if e.get("kill") == "kill"]
    assert [e["mutation"] for e in kills] == [k], f"kill point {k}: the kill came after {kills}"
    # Steps run concurrently (at most the engine's max_workers at once), so requests the CLI sent just before it
    # died may be read after the kill: a new connection is accepted and its request line read only when the
    # emulator's threads get the CPU (seen under the full suite's load). A dead process sends nothing more, so those
    # are at most one per engine worker; a process that outlived the kill would go on with the rest of its run.
    killed_at = kills[0]["started_at"] + kills[0]["latency_ms"] / 1000
    later = [f"{e['method']} {e['path']}" for e in mutating if e["started_at"] > killed_at]
    in_flight = inspect.signature(Engine.__init__).parameters["max_workers"].default
    assert len(later) <= in_flight, f"kill point {k}: mutating requests went on after the kill: {later}"
    return Result(proc.returncode, stdout, stderr)
