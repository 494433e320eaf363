"""The MLflow UI's first page load in headless Chromium: ours through the Cloud Run front end against the stock
server, alternated, each load in a new browser context (an empty cache, as a first visit), with basic auth answered
by the browser (Playwright's ``http_credentials``).

A load is timed from the navigation's start until the experiments list shows the server's benchmark experiment and
the network is quiet: the later of the list showing and the last response's end (Chromium's own resource timing). A
quiet network is one without a request starting or ending for ``QUIET`` seconds; a request that never ends (the UI's
telemetry web worker, whose script fetch Chromium never reports finished) does not hold it up, as it would
Playwright's ``networkidle``. Counted too: the API calls the page made (``/ajax-api/`` and ``/api/`` paths) and all
its requests.
"""

from __future__ import annotations

import statistics
import time
from typing import Any
from urllib.parse import urlsplit

from figures import progress, spread
from targets import Target

CHROMIUM = "/usr/bin/chromium"
QUIET = 1.0
TIMEOUT_MS = 120_000


def _is_api(url: str) -> bool:
    path = urlsplit(url).path
    return path.startswith(("/ajax-api/", "/api/"))


def load_once(browser: Any, target: Target) -> dict[str, Any]:
    context = browser.new_context(http_credentials={"username": target.auth[0], "password": target.auth[1]})
    try:
        page = context.new_page()
        started: list[Any] = []
        ends: list[float] = []
        failed: list[str] = []
        activity = [time.monotonic()]

        def on_request(request: Any) -> None:
            started.append(request)
            activity[0] = time.monotonic()

        def on_finished(request: Any) -> None:
            timing = request.timing  # milliseconds: startTime since the epoch, responseEnd since startTime
            ends.append((timing["startTime"] + timing["responseEnd"]) / 1000)
            activity[0] = time.monotonic()

        def on_failed(request: Any) -> None:
            failed.append(request.url)
            activity[0] = time.monotonic()

        page.on("request", on_request)
        page.on("requestfinished", on_finished)
        page.on("requestfailed", on_failed)
        navigated = time.time()
        page.goto(f"{target.url}/#/experiments", wait_until="commit", timeout=TIMEOUT_MS)
        page.get_by_text(target.experiment, exact=True).first.wait_for(timeout=TIMEOUT_MS)
        rendered = time.time() - navigated
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while time.monotonic() - activity[0] < QUIET and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        last_end = max(ends) - navigated
        return {
            "load_s": max(rendered, last_end),
            "rendered_s": rendered,
            "api_calls": sum(_is_api(r.url) for r in started),
            "requests": len(started),
            "unfinished": len(started) - len(ends) - len(failed),
            "failed": failed,
        }
    finally:
        context.close()


def measure(ours: Target, stock: Target, n: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    loads: dict[str, list[dict[str, Any]]] = {"ours": [], "stock": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for t in (ours, stock):  # not counted: the browser's and each server's first page
                load_once(browser, t)
            for i in range(n):
                progress(f"UI first page load {i + 1}/{n}")
                for t in (ours, stock) if i % 2 == 0 else (stock, ours):
                    loads[t.name].append(load_once(browser, t))
        finally:
            browser.close()
    out: dict[str, Any] = {"n": n}
    for name, runs in loads.items():
        out[name] = {
            "load": spread([r["load_s"] for r in runs]),
            "rendered": spread([r["rendered_s"] for r in runs]),
            "api_calls": statistics.median(r["api_calls"] for r in runs),
            "requests": statistics.median(r["requests"] for r in runs),
            "failed": sorted({u for r in runs for u in r["failed"]}),
        }
    out["ratio"] = out["ours"]["load"]["median"] / out["stock"]["load"]["median"]
    return out
