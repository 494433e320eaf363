"""How long the emulator takes to answer after `mlflow-gcp emulator start --daemon` (median of N starts).

.venv/bin/python benchmarks/emulator_start.py [-n 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mlflow_gcp.emulator.daemon import start_daemon, stop_daemon


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5)
    args = parser.parse_args()
    times = []
    for _ in range(args.n):
        data = Path(tempfile.mkdtemp(prefix="mgs-", dir="/tmp"))
        try:
            started = time.perf_counter()
            start_daemon(data, port=0)
            times.append(time.perf_counter() - started)
        finally:
            stop_daemon(data)
            shutil.rmtree(data, ignore_errors=True)
    print(f"emulator start (daemon, until /health answers): median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s over {args.n}")  # fmt: skip


if __name__ == "__main__":
    main()
