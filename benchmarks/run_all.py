"""Every measurement of issue 14, each side by side with its baseline in one run, in one table.

    make bench          # or: .venv/bin/python benchmarks/run_all.py [--json] [--only cold,up,...] [--repeats 3]

Starts what it needs and stops it after: each family's own emulator on a fresh data directory, a `up --local`
stack, a stock ``mlflow server --app-name basic-auth``, headless Chromium. Families (``--only``):

- ``cold``: server cold start against the import floor and the stock server (benchmarks/cold_start.py);
- ``restart``: the same cold start through the emulator's Cloud Run front end (benchmarks/cloud_run_start.py);
- ``requests``: authenticated request latency, front end vs stock direct (benchmarks/request_latency.py);
- ``ui``: the UI's first page load in Chromium (benchmarks/ui_load.py);
- ``memory``: RSS at idle and during a 150 MB upload, and where the body is spooled (benchmarks/memory.py);
- ``up``: cold `up` against its critical path, no-op `up`'s calls and waves (benchmarks/up_local.py).

Each figure is a median with its spread [min-max] over ``--repeats`` runs (``--requests`` requests of each kind,
``--ui-loads`` page loads). Progress goes to stderr; the table, or with ``--json`` the same data as JSON, to stdout,
with the machine's CPU count, its load average at the start and the end, and the run's wall time. A family that
fails is reported as failed and the others still run (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from figures import Row, cell, megabytes, progress, rows_json, table

FAMILIES = ("cold", "restart", "requests", "ui", "memory", "up")
STACK_FAMILIES = {"restart", "requests", "ui", "memory"}
#: Goals from the issue; the memory one is ours: an upload must not need memory proportional to the artifact, and a
#: quarter of it separates "a bounded buffer" (a few MB) from "the artifact, or most of it" clearly.
GOALS = {"ours/floor": 1.5, "ours/stock": 0.35, "request": 0.2, "cold up": 1.10, "upload/artifact": 0.25}


def _at_most(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def _b(result: dict[str, Any], name: str) -> dict[str, Any]:
    """A figure of benchmarks/up_local.py's summary (``name`` and ``name_spread``) as a spread."""
    low, high = result[f"{name}_spread"]
    return {"median": result[name], "min": low, "max": high}


# --- rows, one function per family ------------------------------------------------------------------------------


def cold_rows(raw: dict[str, Any]) -> list[Row]:
    """Both cold starts (the entrypoint alone, and through the front end) against the floor and the stock server of
    the ``cold`` family, measured in the same run."""
    rows = []
    cold, restart = raw.get("cold"), raw.get("restart")
    floor = cold["floor"] if cold else None
    stock = cold["stock"] if cold else None
    for label, ours in (
        ("entrypoint alone", cold["ours"] if cold else None),
        ("through Cloud Run front end", restart["start_to_200"] if restart else None),
    ):
        if ours is None:
            continue
        for base_name, base, goal in (("floor", floor, "ours/floor"), ("stock", stock, "ours/stock")):
            ratio = ours["median"] / base["median"] if base else None
            what = "import mlflow.server.auth" if base_name == "floor" else "stock to /health"
            rows.append(Row(f"cold start, {label}: start to auth 200 / {base_name}", cell(ours),
                            f"{cell(base)} ({what})" if base else "-", ratio, f"<= {GOALS[goal]}",
                            _at_most(ratio, GOALS[goal])))  # fmt: skip
    return rows


def request_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for kind, label in (("search", "GET experiments/search"), ("log-metric", "POST runs/log-metric")):
        ours, stock = r[kind]["ours"], r[kind]["stock"]
        rows.append(Row(f"request p50 (p90), {label}, n={r['n']}",
                        f"{ours['p50'] * 1000:.0f} ({ours['p90'] * 1000:.0f}) ms",
                        f"{stock['p50'] * 1000:.0f} ({stock['p90'] * 1000:.0f}) ms",
                        r[kind]["ratio_p50"], f"<= {GOALS['request']}",
                        _at_most(r[kind]["ratio_p50"], GOALS["request"])))  # fmt: skip
    return rows


def ui_rows(r: dict[str, Any]) -> list[Row]:
    def side(figures: dict[str, Any]) -> str:
        return f"{cell(figures['load'])}, {figures['api_calls']:g} API calls"

    return [Row(f"UI first page load (Chromium), n={r['n']}", side(r["ours"]), side(r["stock"]), r["ratio"],
                "report", None)]  # fmt: skip


def memory_rows(r: dict[str, Any]) -> list[Row]:
    ours, stock, size = r["ours"], r["stock"], r["artifact_bytes"]
    mb = f"{size / 1e6:.0f} MB"
    ratio = ours["cloud_run_bytes"]["median"] / size
    where = f"in {ours['spool_dir']} ({ours['spool_fs']} here, memory on Cloud Run)" if ours["spool_dir"] else ""
    return [
        Row("memory: idle RSS of the server's process tree", megabytes(ours["idle_rss"]), megabytes(stock["idle_rss"]),
            ours["idle_rss"]["median"] / stock["idle_rss"]["median"], "report", None),
        Row(f"memory: peak RSS - idle, {mb} log_artifact", megabytes(ours["rss_delta"]), megabytes(stock["rss_delta"]),
            None, "report", None),
        Row(f"memory: {mb} upload, body spooled to a temp file", f"{megabytes(ours['spooled_bytes'])} {where}",
            megabytes(stock["spooled_bytes"]), None, "report", None),
        Row(f"memory: {mb} upload on Cloud Run (RSS delta + spool) / artifact", megabytes(ours["cloud_run_bytes"]),
            f"artifact {mb}", ratio, f"<= {GOALS['upload/artifact']}", _at_most(ratio, GOALS["upload/artifact"])),
        Row(f"upload {mb}: client wall time", cell(ours["upload_s"]), cell(stock["upload_s"]),
            ours["upload_s"]["median"] / stock["upload_s"]["median"], "report", None),
    ]  # fmt: skip


def up_rows(r: dict[str, Any]) -> list[Row]:
    slowest = _b(r, "noop_slowest_read_s")
    cold = _b(r, "cold_ratio")["median"]
    return [
        Row("no-op up: API calls (mutating)", f"{r['noop_calls']:g} for {r['noop_steps']} steps "
            f"({r['noop_mutating']:g} mutating)", "-", None, "0 mutating", r["noop_mutating"] == 0),
        Row("no-op up: most reads of one object", f"{r['noop_reads_per_object_max']:g}", "-", None, "<= 1",
            r["noop_reads_per_object_max"] <= 1),
        Row("no-op up (80 ms/call): read wave / slowest read", f"{cell(_b(r, 'noop_wave_s'))}, "
            f"{r['noop_rounds']:g} rounds", cell(slowest), r["noop_wave_ratio"], "one wave", None),
        Row("no-op up (80 ms/call): wall / slowest read", cell(_b(r, "noop_wall_s")), cell(slowest),
            r["noop_wall_s"] / slowest["median"], "report", None),
        Row("cold up (realistic x0.05): wall / critical path", cell(_b(r, "cold_wall_s")),
            cell(_b(r, "cold_critical_path_s")), cold, f"<= {GOALS['cold up']}", _at_most(cold, GOALS["cold up"])),
    ]  # fmt: skip


def rows(raw: dict[str, Any]) -> list[Row]:
    ok = {family: result for family, result in raw.items() if "error" not in result}
    out = cold_rows(ok) if "cold" in ok or "restart" in ok else []
    builders: list[tuple[str, Callable[[dict[str, Any]], list[Row]]]] = [
        ("requests", request_rows), ("ui", ui_rows), ("memory", memory_rows), ("up", up_rows),
    ]  # fmt: skip
    for family, build in builders:
        if family in ok:
            out += build(ok[family])
    for family, result in raw.items():
        if family not in ok:
            out.append(Row(f"{family}: FAILED", result["error"].splitlines()[-1][:100], "-", None, "-", False))
    return out


# --- running the families ---------------------------------------------------------------------------------------


def _run(raw: dict[str, Any], family: str, measure: Callable[[], dict[str, Any]]) -> None:
    progress(f"{family}: start")
    started = time.monotonic()
    try:
        raw[family] = measure()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        raw[family] = {"error": f"{type(exc).__name__}: {exc}"}
    progress(f"{family}: done in {time.monotonic() - started:.0f} s")


def run(families: set[str], args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if "cold" in families:
        import cold_start

        _run(raw, "cold", lambda: cold_start.measure(args.repeats))
    if families & STACK_FAMILIES:
        import cloud_run_start
        import memory
        import request_latency
        import ui_load
        from local_stack import local_stack
        from stock_server import stock_server

        with ExitStack() as stack:
            try:
                ours = stack.enter_context(local_stack())
                stock = stack.enter_context(stock_server())
                ours.target.seed()
                stock.target.seed()
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                for family in families & STACK_FAMILIES:
                    raw[family] = {"error": f"setup: {type(exc).__name__}: {exc}"}
            else:
                if "restart" in families:
                    _run(raw, "restart", lambda: cloud_run_start.measure(ours, args.repeats))
                if "requests" in families:
                    _run(raw, "requests", lambda: request_latency.measure(ours.target, stock.target, args.requests))
                if "ui" in families:
                    _run(raw, "ui", lambda: ui_load.measure(ours.target, stock.target, args.ui_loads))
                if "memory" in families:
                    servers = (ours.target, lambda: ours.serving()[1], stock.target, lambda: stock.pid)
                    _run(raw, "memory", lambda: memory.measure(*servers, args.repeats))
    if "up" in families:
        import up_local

        _run(raw, "up", lambda: up_local.measure(args.repeats, profile="realistic", time_scale=0.05))
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the data as JSON instead of the table")
    parser.add_argument("--only", default=",".join(FAMILIES), help=f"comma-separated families of {FAMILIES}")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each cold start, up and upload")
    parser.add_argument("--requests", type=int, default=40, help="timed requests of each kind per server")
    parser.add_argument("--ui-loads", type=int, default=5, help="timed page loads per server")
    args = parser.parse_args()
    families = {f.strip() for f in args.only.split(",") if f.strip()}
    if unknown := families - set(FAMILIES):
        parser.error(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    if min(args.repeats, args.requests, args.ui_loads) < 1:
        parser.error("--repeats, --requests and --ui-loads must be at least 1: a median needs a sample")
    started, load_start = time.monotonic(), os.getloadavg()
    progress(f"{os.cpu_count()} CPUs, load average {_load(load_start)}; families: {', '.join(sorted(families))}")
    raw = run(families, args)
    wall, load_end = time.monotonic() - started, os.getloadavg()
    table_rows = rows(raw)
    machine = {"cpus": os.cpu_count(), "load_average_start": load_start, "load_average_end": load_end,
               "wall_s": round(wall, 1), "command": " ".join(["benchmarks/run_all.py", *sys.argv[1:]])}  # fmt: skip
    if args.json:
        print(json.dumps({**machine, "rows": rows_json(table_rows), "raw": raw}, indent=2, default=str))
    else:
        print(table(table_rows))
        print(f"\n{machine['cpus']} CPUs; load average (1, 5, 15 min) {_load(load_start)} at the start, "
              f"{_load(load_end)} at the end; total wall time {wall:.0f} s; {machine['command']}")  # fmt: skip
    if any("error" in r for r in raw.values()):
        sys.exit(1)


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
