"""Running the emulator as a background daemon with a data directory, so later commands find it.

The daemon writes ``<data>/emulator.json`` (pid, base URL, endpoints) once it listens; ``find_running``
reads it back and checks the process and its health endpoint, so a stale file never fools a caller.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8790
INFO_FILE = "emulator.json"


def default_data_dir() -> Path:
    if env := os.environ.get("MLFLOW_GCP_EMULATOR_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        # PostgreSQL runs as the unprivileged `postgres` user under root and must traverse this path;
        # /root is not traversable, so root's emulator lives under /var/lib.
        return Path("/var/lib/mlflow-gcp/emulator")
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "mlflow-gcp" / "emulator"


def write_info(data_dir: Path, info: dict[str, Any]) -> None:
    tmp = data_dir / (INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, data_dir / INFO_FILE)


def clear_info(data_dir: Path) -> None:
    (data_dir / INFO_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our own exited child (tests start daemons in-process), or it lingers as a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_running(data_dir: Path) -> dict[str, Any] | None:
    """The running emulator's info for this data directory, or None."""
    path = data_dir / INFO_FILE
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not _alive(int(info.get("pid", 0))):
        return None
    import requests  # here, not at import: `mlflow-gcp --help` stays light

    try:
        requests.get(info["base_url"] + "/_emulator/health", timeout=2).raise_for_status()
    except requests.RequestException:
        return None
    return info


def start_daemon(
    data_dir: Path, port: int = DEFAULT_PORT, settings: dict[str, Any] | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    """Start the emulator in the background (or return the one already running on ``data_dir``)."""
    running = find_running(data_dir)
    if running is not None:
        return running
    data_dir.mkdir(parents=True, exist_ok=True)
    clear_info(data_dir)
    log = (data_dir / "emulator.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow_gcp.emulator", "--data-dir", str(data_dir), "--port", str(port)]
        + (["--settings", json.dumps(settings)] if settings else []),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (data_dir / "emulator.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the emulator exited with code {proc.returncode}; its log ends with:\n{tail}")
        info = find_running(data_dir)
        if info is not None:
            return info
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"the emulator did not answer within {timeout:.0f} s; see {data_dir / 'emulator.log'}")


def stop_daemon(data_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the daemon on ``data_dir``; True if one was running."""
    path = data_dir / INFO_FILE
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return False
    if not _alive(pid):
        clear_info(data_dir)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    clear_info(data_dir)
    return True
