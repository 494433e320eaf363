"""Record README.md's transcript of `mlflow-gcp up --local` by really running it: a fresh emulator daemon on a free
port in a temporary directory, `up --local` from an empty directory with CI=1 (plain progress lines, as in a log),
its output pasted between the README's transcript markers, the emulator stopped. Only host-specific paths are
trimmed. Run it when what `up` prints changes; tests/e2e/test_readme.py fails until then.

    .venv/bin/python scripts/record_up_transcript.py
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BEGIN = "<!-- transcript:up -->"
END = "<!-- /transcript:up -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record() -> str:
    tool = [sys.executable, "-m", "mlflow_gcp"]
    # A short path: Cloud SQL sockets live under the data directory (107-byte limit).
    base = Path(tempfile.mkdtemp(prefix="transcript-", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root: it must traverse the data directory
    data, work = base / "emu", base / "cwd"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GOOGLE_"))}
    try:
        started = subprocess.run(
            [*tool, "emulator", "start", "--daemon", "--data-dir", str(data), "--port", str(free_port())],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        url = re.search(r"listening on (\S+)", started.stdout)
        assert url, started.stdout
        up = subprocess.run(
            [*tool, "up", "--local"],
            capture_output=True, text=True, cwd=work, env={**env, "CI": "1", "MLFLOW_GCP_EMULATOR_URL": url[1]},
        )  # fmt: skip
        if up.returncode != 0:
            raise SystemExit(f"`up --local` exited {up.returncode}:\n{up.stderr}")
        return up.stderr.replace(str(base), "/tmp/…").replace(str(Path.home()), "~")
    finally:
        subprocess.run([*tool, "emulator", "stop", "--data-dir", str(data)], capture_output=True, env=env)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    transcript = record()
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    block = f"\n```console\n$ mlflow-gcp up --local\n{transcript.rstrip()}\n```\n"
    README.write_text(text[:start] + block + text[end:])
    print(transcript)


if __name__ == "__main__":
    main()
