"""Wall time and API calls of `mlflow-gcp up --local` from nothing, and of the no-op `up` right after it (issue 14,
goals 3 and 4).

    .venv/bin/python benchmarks/up_local.py [--profile instant|realistic] [--time-scale 1.0] [--builder docker]
        [--repeats 1] [--against SRC] [--json]
    .venv/bin/python benchmarks/up_local.py --profile realistic --time-scale 0.05 --repeats 3   # goals 3 and 4

Cold `up` (on the emulator's latency ``--profile``, delays times ``--time-scale``): its wall time against its critical
path, computed from the run's own step timings (``up --json``: each step's seconds) along the stack's dependencies
(stack.resources): the longest chain of steps that had to run one after another. Goal: wall <= 1.10 x critical path.

No-op `up` (on the realistic profile at scale 1: each call takes a control-plane round trip, 80 ms, as on Google
Cloud): its calls by API, how many mutate (goal: none), the most reads of any one object (goal: 1), and how the calls
were spread in time, in rounds (a round ends when its first call returns; a call that starts later opens the next).
The steps' reads (all calls but the project check before them and the serving check's credential read after them)
span ``wave_s``, reported against the slowest of them (goal: one wave, a span near one read); the CPU the client
libraries take to start may split the wave into a few rounds on a busy machine.

``--against SRC``: the same runs, side by side (alternating), with the package from another source tree (a ``src``
directory, e.g. of ``git worktree add /tmp/base HEAD~1``), as the baseline. Each run has its own emulator on a fresh
data directory. ``measure(repeats)`` gives the medians as a dict (benchmarks/run_all.py imports it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import EmulatorAdmin, request_rounds

REPO = Path(__file__).resolve().parents[1]
#: The no-op `up` runs on the realistic profile at this scale: every call takes one control-plane round trip.
NOOP_TIME_SCALE = 1.0


def dependencies(state: Path, builder: str) -> dict[str, tuple[str, ...]]:
    """The stack's steps and what each waits for, as `up --local` with this state and builder builds them."""
    from mlflow_gcp import config as cfg
    from mlflow_gcp.context import Context
    from mlflow_gcp.naming import Names
    from mlflow_gcp.stack import resources
    from mlflow_gcp.state import LocalBackend, State, state_key

    config = cfg.load(
        None, flags={"state": str(state), "server.builder": builder}, environ={}, default_project=cfg.LOCAL_PROJECT
    )
    identity = {"project": config.project, "name": config.name, "env": config.env}
    backend = LocalBackend(state, state_key(config.project, config.name, config.env))
    ctx = Context(config, Names.from_config(config), None, State(backend, identity))  # type: ignore[arg-type]
    steps = resources(ctx)
    keys = {s.key for s in steps}
    return {s.key: tuple(d for d in s.depends_on if d in keys) for s in steps}


def critical_path(seconds: Mapping[str, float], deps: Mapping[str, Sequence[str]]) -> tuple[float, list[str]]:
    """The longest chain of steps through the dependencies, weighted by each step's own seconds: its length, its
    steps in order. (The engine starts a step as soon as the steps it waits for are done.)"""
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}

    def end(key: str) -> float:
        if key not in finish:
            before = [d for d in deps.get(key, ()) if d in seconds]
            last = max(before, key=end, default=None)
            via[key] = last
            finish[key] = seconds[key] + (end(last) if last else 0.0)
        return finish[key]

    tail = max(seconds, key=end)
    chain: list[str] = []
    key: str | None = tail
    while key is not None:
        chain.append(key)
        key = via[key]
    return finish[tail], chain[::-1]


def _object(call: Mapping[str, Any]) -> tuple[str, str]:
    """What a call reads: its method and the object's path (the query string only selects fields and encodings)."""
    return call["route"], call["path"].split("?", 1)[0]


def _end(call: Mapping[str, Any]) -> float:
    return float(call["started_at"]) + call["latency_ms"] / 1000


def step_reads(calls: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The calls of the steps: without the project check before them (the first call) and the serving check's
    credential reads after them (``versions.access`` calls made once every other call had ended)."""
    body = sorted(calls, key=lambda c: c["started_at"])[1:]
    while (
        len(body) > 1 and body[-1]["route"] == "versions.access" and body[-1]["started_at"] >= max(map(_end, body[:-1]))
    ):
        body.pop()
    return body


def noop_figures(calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    reads = [c for c in calls if not c["mutating"]]
    steps = step_reads(calls)
    span = max(map(_end, steps)) - min(c["started_at"] for c in steps)
    slowest = max(c["latency_ms"] for c in steps) / 1000
    return {
        "calls": len(calls),
        "mutating": len(calls) - len(reads),
        "reads_per_object_max": max(Counter(map(_object, reads)).values(), default=0),
        "rounds": len(request_rounds(calls)),
        "wave_reads": len(steps),
        "wave_rounds": len(request_rounds(steps)),
        "wave_s": span,
        "slowest_read_s": slowest,
        "wave_ratio": span / slowest,
        "by_api": dict(sorted(Counter(c["api"] for c in calls).items())),
    }


def run_once(profile: str, time_scale: float, builder: str, src: Path | None = None) -> dict[str, Any]:
    """A cold `up` and a no-op `up`, on an emulator of their own; ``src``: the package from that source tree."""
    data = Path(tempfile.mkdtemp(prefix="mgb-", dir="/tmp"))
    state = Path(tempfile.mkdtemp(prefix="mgb-state-"))
    emulator = Emulator(data).start()
    admin = EmulatorAdmin(emulator.base_url)
    env = {**os.environ, "MLFLOW_GCP_EMULATOR_URL": emulator.base_url, "CI": "1"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    argv = [sys.executable, "-m", "mlflow_gcp", "up", "--local", "--state", str(state), "--builder", builder, "--json"]
    result: dict[str, Any] = {}
    try:
        for label, scale in (("cold", time_scale), ("noop", NOOP_TIME_SCALE)):
            admin.settings(latency_profile=profile if label == "cold" else "realistic", time_scale=scale)
            start_seq = len(admin.requests())
            started = time.perf_counter()
            proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"{label} up failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            calls = admin.requests(start_seq)
            if label == "cold":
                outcomes = json.loads(proc.stdout)["outcomes"]
                seconds = {o["resource"]: float(o["seconds"]) for o in outcomes}
                path, chain = critical_path(seconds, dependencies(state, builder))
                result["cold"] = {
                    "wall_s": wall,
                    "critical_path_s": path,
                    "ratio": wall / path,
                    "chain": chain,
                    "calls": len(calls),
                    "mutating": sum(c["mutating"] for c in calls),
                }
            else:
                result["noop"] = {"wall_s": wall, "steps": len(json.loads(proc.stdout)["outcomes"]),
                                  **noop_figures(calls)}  # fmt: skip
    finally:
        emulator.stop()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    return result


_MEDIANS = {
    "cold_wall_s": ("cold", "wall_s"),
    "cold_critical_path_s": ("cold", "critical_path_s"),
    "cold_ratio": ("cold", "ratio"),
    "noop_calls": ("noop", "calls"),
    "noop_mutating": ("noop", "mutating"),
    "noop_reads_per_object_max": ("noop", "reads_per_object_max"),
    "noop_rounds": ("noop", "rounds"),
    "noop_wave_rounds": ("noop", "wave_rounds"),
    "noop_wall_s": ("noop", "wall_s"),
    "noop_wave_s": ("noop", "wave_s"),
    "noop_slowest_read_s": ("noop", "slowest_read_s"),
    "noop_wave_ratio": ("noop", "wave_ratio"),
}


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians (and min/max as the spread) of each figure over ``runs``."""
    out: dict[str, Any] = {"repeats": len(runs)}
    for name, (part, figure) in _MEDIANS.items():
        values = [r[part][figure] for r in runs]
        out[name] = statistics.median(values)
        out[f"{name}_spread"] = [min(values), max(values)]
    last = runs[-1]
    out["cold_chain"] = last["cold"]["chain"]
    out["noop_steps"] = last["noop"]["steps"]
    out["noop_by_api"] = last["noop"]["by_api"]
    return out


def measure(
    repeats: int,
    *,
    profile: str = "realistic",
    time_scale: float = 0.05,
    builder: str = "docker",
    against: Path | None = None,
) -> dict[str, Any]:
    """Cold `up` (wall, critical path, ratio) and no-op `up` (calls, mutating calls, most reads of one object, rounds,
    wall, the read wave against its slowest read), medians over ``repeats`` runs. With ``against`` (a source tree's
    ``src``), the same for that tree as ``baseline``, the runs alternating."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for _ in range(repeats):
        ours.append(run_once(profile, time_scale, builder))
        if against is not None:
            theirs.append(run_once(profile, time_scale, builder, against))
    result = summarize(ours)
    if theirs:
        result["baseline"] = summarize(theirs)
    return result


def _table(result: Mapping[str, Any]) -> list[str]:
    columns = [("this tree", result)] + ([("baseline", result["baseline"])] if "baseline" in result else [])
    lines = [f"{'':<34}" + "".join(f"{name:>26}" for name, _ in columns)]
    for name in _MEDIANS:
        cells = []
        for _, r in columns:
            low, high = r[f"{name}_spread"]
            cells.append(f"{r[name]:.3g} [{low:.3g}-{high:.3g}]" if isinstance(r[name], float) else str(r[name]))
        lines.append(f"{name:<34}" + "".join(f"{c:>26}" for c in cells))
    lines.append(f"critical path: {' -> '.join(result['cold_chain'])}")
    for label, r in columns:
        lines.append(f"no-op calls by API ({label}, {r['noop_steps']} steps): "
                     + ", ".join(f"{api} {n}" for api, n in r["noop_by_api"].items()))  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="instant", choices=["instant", "realistic"])
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--builder", default="docker", choices=["docker", "cloudbuild"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--against", type=Path, default=None, help="a source tree's src directory: the baseline")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    try:
        result = measure(
            args.repeats, profile=args.profile, time_scale=args.time_scale, builder=args.builder, against=args.against
        )
    except RuntimeError as exc:
        sys.exit(str(exc))
    load = os.getloadavg()[0]
    print(
        f"`up --local`, builder {args.builder}; cold on profile {args.profile} x{args.time_scale}, no-op on "
        f"realistic x{NOOP_TIME_SCALE}; medians of {args.repeats} [min-max]; load {load:.2f}"
    )
    print(json.dumps(result, indent=2) if args.json else "\n".join(_table(result)))


if __name__ == "__main__":
    main()
