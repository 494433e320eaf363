"""Replay recordings against a fresh emulator and print every difference, allowlisted or not.

    .venv/bin/python -m tests.golden.report [RECORDING-NAME-SUBSTRING ...]

What the test asserts, shown whole: the first tool to reach for when the replay test fails.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import EmulatorAdmin

from . import test_replay as t
from .replay import Replayer, parse


def main(filters: list[str]) -> int:
    data = Path(tempfile.mkdtemp(prefix="mgr-", dir="/tmp"))
    emu = Emulator(data).start()
    admin = EmulatorAdmin(emu.base_url)
    total = unexplained = pairs = agreed = 0
    try:
        for rec in t.RECORDINGS:
            if filters and not any(f in rec["file"] for f in filters):
                continue
            exchanges = parse((t.HERE / "recordings" / rec["file"]).read_text(), cassette=rec["file"].endswith(".yaml"))
            bindings = t._bindings(rec, admin)
            t._enable_all(emu, bindings.vars["projectId"])
            for outcome in Replayer(emu.base_url, bindings).replay(exchanges, set(rec.get("skip", []))):
                pairs += 1
                agreed += outcome.status == outcome.exchange.status
                for line in outcome.lines(rec["file"]):
                    total += 1
                    allowed = [a for a in t.ALLOWLIST if a.pattern.search(line)]
                    unexplained += not allowed
                    print(("  allowed " if allowed else "") + line)
    finally:
        emu.stop()
        shutil.rmtree(data, ignore_errors=True)
    print(f"{pairs} exchanges, {agreed} statuses agree, {total} differences, {unexplained} unexplained")
    return 1 if unexplained or agreed != pairs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
