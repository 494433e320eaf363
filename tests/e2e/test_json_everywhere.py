"""Every command that shows data takes `--json` (the data on stdout, progress on stderr); the few that show none say
why here. Each command's own test file checks its JSON; `emulator status` is checked here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import requests

#: Commands without --json, and why.
SHOW_NO_DATA = {
    "emulator start": "its endpoints are what `emulator status --json` prints; in the foreground it runs the server",
    "emulator stop": "it says only whether it stopped one",
}


def leaves(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaves(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_command_that_shows_data_takes_json():
    from mlflow_gcp.cli import cli

    commands = dict(leaves(cli))
    assert {"up", "status", "env", "down", "rotate-password", "open", "users list", "emulator status"} <= set(commands)
    missing = [
        path
        for path, command in commands.items()
        if path not in SHOW_NO_DATA and not any("--json" in p.opts for p in command.params)
    ]
    assert missing == [], f"commands without --json: {missing}"
    assert set(SHOW_NO_DATA) <= set(commands)


def test_emulator_status_json(tmp_path: Path):
    data = tmp_path / "emu"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_GCP_")}

    def emulator(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mlflow_gcp", "emulator", *args, "--data-dir", str(data)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    assert emulator("start", "--daemon", "--port", "0").returncode == 0
    try:
        running = emulator("status", "--json")
        info = json.loads(running.stdout)
        assert running.returncode == 0 and info["running"] is True and info["pid"] > 0
        assert set(info["endpoints"]) >= {"run", "sqladmin", "secretmanager", "storage", "docker", "control"}
        assert requests.get(f"{info['base_url']}/_emulator/health", timeout=10).status_code == 200
    finally:
        emulator("stop")
    stopped = emulator("status", "--json")
    assert stopped.returncode == 1 and json.loads(stopped.stdout) == {"running": False}
