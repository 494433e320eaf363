"""What every benchmark family shares: progress lines, a sample's median and spread, percentiles, and the one table
benchmarks/run_all.py prints (metric, ours, baseline, ratio, goal, met?).

Progress goes to stderr; the table (or ``--json``) is the only thing on stdout.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr, stamped with the seconds since the run started."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def spread(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min and max (the spread quoted next to a median), and the samples themselves."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples),
            "samples": [round(s, 4) for s in samples]}  # fmt: skip


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile by the nearest-rank method (a value that was measured, never an interpolation)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes, from /proc ---------------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant alive now (through each thread's ``children``: a child forked by a thread other
    than the main one is listed under that thread)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        out.append(pid)
        for tid in tasks:
            try:
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    return out


def started_at(pid: int) -> float:
    """When ``pid`` started, in seconds of ``CLOCK_BOOTTIME`` (field 22 of /proc/PID/stat, in clock ticks since boot:
    proc(5)); compare with ``time.clock_gettime(time.CLOCK_BOOTTIME)``. Resolution: one tick (10 ms)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# --- the table ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table. ``ratio`` is ours over the baseline; ``met`` is None where the issue sets no goal."""

    metric: str
    ours: str
    baseline: str
    ratio: float | None
    goal: str
    met: bool | None


def cell(s: dict[str, Any], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    """``median [min-max] unit`` of a :func:`spread`, its values times ``scale``."""
    low, mid, high = (f"{s[k] * scale:.{digits}f}" for k in ("min", "median", "max"))
    return f"{mid} [{low}-{high}] {unit}"


def megabytes(s: dict[str, Any]) -> str:
    return cell(s, "MB", 1e-6, 0)


def table(rows: Sequence[Row]) -> str:
    header = ("metric", "ours", "baseline", "ratio", "goal", "met?")
    cells = [
        (r.metric, r.ours, r.baseline, "-" if r.ratio is None else f"{r.ratio:.2f}", r.goal,
         "-" if r.met is None else ("yes" if r.met else "NO"))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    line = " | ".join
    out = [line(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append(line("-" * w for w in widths))
    out += [line(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def rows_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
