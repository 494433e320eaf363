"""Our server's cold start as a user meets it through Cloud Run: from the revision's process start to the first
authenticated 200 on ``experiments/search`` through the service's front end, on a `up --local` stack.

A new instance is made the way the emulator's Cloud Run makes one after a crash: the serving process group is
killed, its watchdog starts the revision again (after its restart back-off) and routes traffic to it once its startup
probe passes. The clock starts at the new process's start as the kernel recorded it (/proc/PID/stat), so the
emulator's back-off is not counted while everything Cloud Run adds on the way to the first answer is: the startup
probe's cadence and the front end's routing. (benchmarks/cold_start.py times the entrypoint alone, without them.)
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import requests
from figures import boottime, process_tree, progress, spread, started_at
from local_stack import Stack

POLL_SECONDS = 0.02
TIMEOUT = 300.0
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def _kill_tree(root: int) -> None:
    tree = process_tree(root)
    try:
        os.killpg(root, signal.SIGKILL)  # the emulator starts every revision process as a group leader
    except ProcessLookupError:
        pass
    for pid in tree:  # anything that left the group
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def restart_once(stack: Stack) -> dict[str, float]:
    revision, old = stack.serving()
    session = requests.Session()
    session.auth = stack.target.auth
    _kill_tree(old)
    killed = boottime()
    new: int | None = None
    while boottime() - killed < TIMEOUT:
        if new is None:
            entry = stack.processes().get(revision)
            if entry and entry["pid"] != old:
                new = int(entry["pid"])
                born = started_at(new)
        try:
            ok = session.get(stack.target.url + SEARCH, timeout=10).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            answered = boottime()
            if new is None:  # ready before this loop looked: it is the revision's process now
                new = int(stack.processes()[revision]["pid"])
                born = started_at(new)
            return {"start_to_200": answered - born, "kill_to_200": answered - killed}
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{revision} did not answer {TIMEOUT:.0f} s after its process was killed")


def measure(stack: Stack, repeats: int) -> dict[str, Any]:
    """``start_to_200``: process start to first authenticated 200 through the front end (the figure);
    ``kill_to_200``: the same from the kill (adds the emulator's watchdog tick and restart back-off)."""
    runs = []
    for i in range(repeats):
        progress(f"cold start through Cloud Run {i + 1}/{repeats}: killing the serving instance")
        runs.append(restart_once(stack))
        time.sleep(1.0)  # let the new instance's first-request work settle before the next kill
    return {key: spread([r[key] for r in runs]) for key in ("start_to_200", "kill_to_200")}
