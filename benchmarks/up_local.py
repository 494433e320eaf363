"""Wall time and API calls of `mlflow-gcp up --local` from nothing, and of the no-op `up` after it.

    .venv/bin/python benchmarks/up_local.py [--profile instant|realistic] [--time-scale 0.01] [--builder docker]

Runs its own emulator on a fresh data directory; prints one line per run, and the calls of each run by API.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import EmulatorAdmin

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="instant", choices=["instant", "realistic"])
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--builder", default="docker", choices=["docker", "cloudbuild"])
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="mgb-", dir="/tmp"))
    state = Path(tempfile.mkdtemp(prefix="mgb-state-"))
    emulator = Emulator(data).start()
    admin = EmulatorAdmin(emulator.base_url)
    admin.settings(latency_profile=args.profile, time_scale=args.time_scale)
    env = {**os.environ, "MLFLOW_GCP_EMULATOR_URL": emulator.base_url, "CI": "1"}
    argv = [sys.executable, "-m", "mlflow_gcp", "up", "--local", "--state", str(state), "--builder", args.builder]
    try:
        for label in ("cold up", "no-op up"):
            start_seq = len(admin.requests())
            started = time.perf_counter()
            proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if proc.returncode != 0:
                sys.exit(f"{label} failed ({proc.returncode}):\n{proc.stderr}")
            log = admin.requests(start_seq)
            mutating = sum(e["mutating"] for e in log)
            print(
                f"{label:<9} builder={args.builder} profile={args.profile} scale={args.time_scale}: {seconds:6.1f} s, "
                f"{len(log)} API calls ({mutating} mutating)"
            )
            by_api = Counter(e["api"] for e in log)
            print("          by API: " + ", ".join(f"{api} {n}" for api, n in sorted(by_api.items())))
    finally:
        emulator.stop()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
