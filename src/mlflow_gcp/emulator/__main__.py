"""`python -m mlflow_gcp.emulator`: run the emulator in the foreground (what the daemon runs)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from .daemon import DEFAULT_PORT, clear_info, default_data_dir, write_info

    parser = argparse.ArgumentParser(prog="python -m mlflow_gcp.emulator")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--project", action="append", default=None)
    parser.add_argument("--settings", default=None, help="JSON of control-plane settings to start with")
    args = parser.parse_args(argv)
    from .server import DEFAULT_PROJECT, Emulator

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    emulator = Emulator(
        args.data_dir,
        host=args.host,
        port=args.port,
        projects=tuple(args.project or [DEFAULT_PROJECT]),
        settings=json.loads(args.settings) if args.settings else None,
    )
    write_info(
        args.data_dir,
        {"pid": os.getpid(), "base_url": emulator.base_url, "endpoints": emulator.endpoints()},
    )
    print(json.dumps({"base_url": emulator.base_url, "endpoints": emulator.endpoints()}), flush=True)
    try:
        emulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        clear_info(args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
