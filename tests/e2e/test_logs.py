"""`mlflow-gcp logs`, end to end: the real CLI reads, through Cloud Logging's API, what the real `mlflow server`
wrote in its Cloud Run revision (`--since`, `--revision`, `--json`, `--follow` seeing an instance crash and come
back), with no secret in it; and `up` deploying a revision that crashes at start shows the last lines it logged and
the command that shows more.

One stack serves the module (tests run in file order; the crashing revision comes last)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin
from tests.e2e.conftest import Cli, make_cli

#: What the server's entrypoint writes (to stderr) as it starts: it names the database it uses.
SERVER_LINE = "[mlflow-gcp] database "


@pytest.fixture(scope="module")
def stack(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = make_cli(emulator, tmp_path_factory.mktemp("logs"))
    cli("up")
    return cli


def _revision(cli: Cli) -> str:
    """The revision that serves, as the last run recorded it."""
    return str(_state(cli)["resources"]["run"]["revision"])


def _state(cli: Cli) -> dict[str, Any]:
    return json.loads(next(cli.state_dir.glob("*.json")).read_text())


def _entries(cli: Cli, *args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cli("logs", "--json", *args).stdout.splitlines()]


def _text(entry: dict[str, Any]) -> str:
    return entry.get("textPayload") or entry.get("jsonPayload", {}).get("message", "")


def _secret_values(clients: Clients, project: str) -> list[str]:
    """Every enabled version of the stack's secrets but the admin's user name (which MLflow logs as a name)."""
    sm = clients.secret_manager()
    values = []
    for secret in sm.list_secrets(parent=f"projects/{project}"):
        if secret.name.endswith("-admin-username"):
            continue
        for version in sm.list_secret_versions(parent=secret.name):
            if version.state.name == "ENABLED":
                values.append(sm.access_secret_version(name=version.name).payload.data.decode())
    return values


def test_logs_shows_what_the_server_wrote(stack: Cli, clients: Clients):
    revision = _revision(stack)
    human = stack("logs")
    assert human.code == 0
    server_lines = [line for line in human.stdout.splitlines() if SERVER_LINE in line]
    assert server_lines, human.stdout
    # time, revision, severity, text
    when = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.match(rf"^{when}  {revision}  DEFAULT  \[mlflow-gcp\] ", server_lines[0]), server_lines[0]
    assert f"Starting revision {revision}" in human.stdout  # Cloud Run's own line, from varlog/system

    entries = _entries(stack)
    assert len(entries) == len(human.stdout.splitlines())
    assert {e["resource"]["type"] for e in entries} == {"cloud_run_revision"}
    assert {e["resource"]["labels"]["revision_name"] for e in entries} == {revision}
    logs = {e["logName"].rsplit("/", 1)[1] for e in entries}
    assert logs >= {"run.googleapis.com%2Fstderr", "run.googleapis.com%2Fvarlog%2Fsystem"}, logs
    stamps = [e["timestamp"] for e in entries]
    assert stamps == sorted(stamps, key=lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")))

    secrets = _secret_values(clients, stack.project)
    assert len(secrets) >= 3  # database and admin passwords, Flask key
    for value in secrets:
        assert value not in human.stdout and value not in json.dumps(entries)


def test_since_and_revision_narrow_it(stack: Cli):
    entries = _entries(stack)
    middle = entries[len(entries) // 2]["timestamp"]
    later = _entries(stack, "--since", middle)
    assert later == [e for e in entries if e["timestamp"] >= middle] and 0 < len(later) < len(entries)

    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    none = stack("logs", "--since", future)
    assert none.stdout == "" and "No log entries of Cloud Run service" in none.stderr
    assert stack("logs", "--since", "2d").stdout.count(SERVER_LINE) == stack("logs").stdout.count(SERVER_LINE)
    bad = stack("logs", "--since", "yesterday", check=False)
    assert bad.code == 2 and "neither a duration" in bad.stderr

    revision = _revision(stack)
    assert _entries(stack, "--revision", revision) == entries
    assert _entries(stack, "--revision", "mlflow-dev-99999-zzz") == []
    assert stack("logs", "--revision", 'x" OR "', check=False).code == 2  # nothing reaches the filter unchecked


class Follower:
    """`logs --follow` running, its stdout read line by line on a thread; :meth:`wait_for` is the barrier."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.proc = cli.popen("logs", "--follow", *args)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, found: Callable[[str], bool], timeout: float = 60.0) -> str:
        """The first line from now on for which ``found`` holds; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"not seen in {timeout}s (exit {self.proc.poll()}); lines: {self.seen[-20:]}")
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.seen.append(line)
            if found(line):
                return line

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        _, stderr = self.proc.communicate(timeout=30)
        return self.proc.returncode, stderr


def test_follow_sees_an_instance_crash_and_come_back(stack: Cli, admin: EmulatorAdmin):
    revision = _revision(stack)
    follower = Follower(stack, "--since", "1h")
    try:
        # The backlog first: the running instance's start.
        follower.wait_for(lambda line: f"Starting revision {revision}" in line)
        follower.wait_for(lambda line: SERVER_LINE in line)
        (pid,) = [p["pid"] for name, p in admin.run_processes().items() if name.endswith(f"/revisions/{revision}")]
        os.kill(pid, signal.SIGKILL)
        # New lines, as they happen: Cloud Run's note of the crash, then the new instance starting and the server
        # in it writing its first line again.
        follower.wait_for(lambda line: "Container terminated on signal 9." in line and "ERROR" in line)
        follower.wait_for(lambda line: f"Starting revision {revision}" in line)
        follower.wait_for(lambda line: SERVER_LINE in line)
    finally:
        code, stderr = follower.stop()
    assert code == 0, stderr  # Ctrl-C is how following ends
    assert len(follower.seen) == len(set(follower.seen))  # no entry twice, however many polls saw it


def test_up_shows_the_last_lines_of_a_revision_that_crashes_at_start(stack: Cli):
    """Too many instances for the database's connections: the server refuses to start (its configuration check),
    Cloud Run fails the revision, and `up` says why in the server's own words."""
    serving = _revision(stack)
    failed = stack("up", "--max-instances", "100", check=False)
    assert failed.code == 1, failed.stderr
    err = failed.stderr
    match = re.search(r"Cloud Run revision (\S+) did not become ready \(traffic stays on (\S+)\)\.", err)
    assert match and match.group(2) == serving, err
    revision = match.group(1)
    assert "condition Ready CONDITION_FAILED" in err
    tail = err.split("last lines it logged:\n", 1)[1].split("\n    more: ", 1)[0].splitlines()
    assert 0 < len(tail) <= 20
    assert "configuration error: 100 instance(s) cannot share 100 database connections" in tail[-2]
    assert tail[-1].strip() == "Container called exit(2)."
    assert f"more: mlflow-gcp logs --revision {revision} --local" in err
    assert "hint: Fix what its log shows" in err

    shown = stack("logs", "--revision", revision).stdout
    assert "configuration error: 100 instance(s)" in shown and serving not in shown
