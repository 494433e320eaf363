"""The terminal view: live table on a terminal, plain lines otherwise, API calls only with -v."""

from __future__ import annotations

import io

from mlflow_gcp.engine import Change, Outcome
from mlflow_gcp.output import Terminal


class Thing:
    key, kind = "bucket", "artifact bucket"

    def id(self) -> str:
        return "gs://b"


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with Terminal(0, out, live=False) as term:
        term.started(Thing(), "creating")
        term.api_call("storage.buckets.insert")
        term.finished(Outcome("bucket", "artifact bucket", "gs://b", "created", seconds=1.5))
        term.finished(Outcome("run", "service", "s", "would update", [Change("scaling.max", 3, 10)]))
    text = out.getvalue()
    assert "bucket: creating artifact bucket gs://b" in text
    assert "+ bucket: created [1.5s]" in text
    assert "~ run: would update (scaling.max)" in text and "scaling.max: 3 -> 10" in text
    assert "storage.buckets.insert" not in text  # API calls only with -v


def test_verbose_shows_api_calls():
    out = io.StringIO()
    Terminal(1, out, live=False).api_call("storage.buckets.insert")
    assert "-> storage.buckets.insert" in out.getvalue()


def test_live_view_renders_every_resource():
    out = io.StringIO()
    with Terminal(0, out, live=True) as term:
        term.started(Thing(), "creating")
        term.finished(Outcome("bucket", "artifact bucket", "gs://b", "created"))
        term.failed(Thing(), RuntimeError("boom"))
    text = out.getvalue()
    assert "bucket" in text and "failed: boom" in text
