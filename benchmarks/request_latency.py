"""Authenticated request latency: ours through the Cloud Run front end against the stock basic-auth server
(direct), the same requests, alternated so that both see the same load.

Two requests a client makes all the time: ``GET experiments/search`` and ``POST runs/log-metric`` (to each server's
own run, see targets.py). Each client keeps its connection (a ``requests.Session``, as MLflow's client does). A few
requests per server are made first and not counted (connections, the servers' first-request work). Every request's
time is client-side: from sending to the whole answer read.
"""

from __future__ import annotations

import time
from typing import Any

import requests
from figures import percentile, progress, spread
from targets import Target

WARMUP = 3


def _requests(target: Target) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
    return {
        "search": ("GET", "/api/2.0/mlflow/experiments/search?max_results=10", None),
        "log-metric": (
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            {"run_id": target.run_id, "key": "bench", "value": 1.0, "timestamp": 0, "step": 0},
        ),
    }


def _timed(session: requests.Session, target: Target, kind: str) -> float:
    method, path, body = _requests(target)[kind]
    started = time.perf_counter()
    r = session.request(method, target.url + path, json=body, timeout=60)
    seconds = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"{target.name} {kind}: {r.status_code} {r.text[:200]}")
    return seconds


def measure(ours: Target, stock: Target, n: int) -> dict[str, Any]:
    """Per request kind and server: the samples' median and spread, p50 and p90 (seconds); and ours/stock of p50."""
    sessions = {}
    for t in (ours, stock):
        sessions[t.name] = requests.Session()
        sessions[t.name].auth = t.auth
    kinds = list(_requests(ours))
    for t in (ours, stock):
        for kind in kinds:
            for _ in range(WARMUP):
                _timed(sessions[t.name], t, kind)
    samples: dict[str, dict[str, list[float]]] = {kind: {"ours": [], "stock": []} for kind in kinds}
    progress(f"requests: {n} of each kind per server, alternating")
    for i in range(n):
        order = (ours, stock) if i % 2 == 0 else (stock, ours)
        for kind in kinds:
            for t in order:
                samples[kind][t.name].append(_timed(sessions[t.name], t, kind))
    out: dict[str, Any] = {"n": n}
    for kind, by_server in samples.items():
        out[kind] = {
            name: {**spread(s), "p50": percentile(s, 50), "p90": percentile(s, 90)} for name, s in by_server.items()
        }
        out[kind]["ratio_p50"] = out[kind]["ours"]["p50"] / out[kind]["stock"]["p50"]
    return out
