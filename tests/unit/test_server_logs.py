"""What `mlflow-gcp logs` does without Google: `--since`, `--revision`, the service's filter, how an entry reads,
what is masked, and the cursor that keeps following from printing an entry twice or missing a late one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mlflow_gcp import server_logs as sl

NOW = sl.to_nanos("2024-05-01T12:00:00Z")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", "2024-05-01T11:58:30.000000000Z"),
        ("15m", "2024-05-01T11:45:00.000000000Z"),
        ("1h", "2024-05-01T11:00:00.000000000Z"),
        ("2d", "2024-04-29T12:00:00.000000000Z"),
        ("1h30m", "2024-05-01T10:30:00.000000000Z"),
        ("2024-04-30T08:00:00.123456789Z", "2024-04-30T08:00:00.123456789Z"),
        ("2024-04-30T10:00:00+02:00", "2024-04-30T08:00:00.000000000Z"),
        ("2024-04-30 08:00:00", "2024-04-30T08:00:00.000000000Z"),
    ],
)
def test_since(text: str, expected: str) -> None:
    assert sl.rfc3339(sl.parse_since(text, now=NOW)) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "1w", "h1", "2024-13-01T00:00:00Z"])
def test_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError):
        sl.parse_since(text, now=NOW)


def test_revision_names_and_the_filter() -> None:
    full = "projects/p/locations/us-central1/services/mlflow-dev/revisions/mlflow-dev-00003-xyz"
    assert sl.revision_name(full) == sl.revision_name("mlflow-dev-00003-xyz") == "mlflow-dev-00003-xyz"
    for bad in ('x" OR "', "Mlflow", "a b", ""):
        with pytest.raises(ValueError):
            sl.revision_name(bad)
    names: Any = SimpleNamespace(service="mlflow-dev")
    service = 'resource.type="cloud_run_revision" AND resource.labels.service_name="mlflow-dev"'
    assert sl.service_filter(names) == service
    narrowed = sl.service_filter(names, since="2024-05-01T00:00:00Z", revision="mlflow-dev-00003-xyz")
    assert narrowed == f'{service} AND resource.labels.revision_name="mlflow-dev-00003-xyz" AND ' + (
        'timestamp>="2024-05-01T00:00:00Z"'
    )


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("connecting to postgresql://mlflow_a:s3cr3t@/mlflow?host=/cloudsql", "postgresql://mlflow_a:***@/mlflow"),
        ("Authorization: Basic YWRtaW46cGFzcw==", "Authorization: Basic ***"),
        ('{"password": "hunter2", "user": "ana"}', '{"password": "***", "user": "ana"}'),
        ("MLFLOW_GCP_DB_PASSWORD=abc123 rest", "MLFLOW_GCP_DB_PASSWORD=*** rest"),
    ],
)
def test_credentials_are_masked(line: str, shown: str) -> None:
    masked = sl.mask(line)
    assert shown in masked
    assert not any(s in masked for s in ("s3cr3t", "YWRtaW46cGFzcw", "hunter2", "abc123"))


@pytest.mark.parametrize(
    "line",
    [
        "GET http://127.0.0.1:8080/health 200",
        "password authentication failed for user mlflow_a",
        "the admin admin's password was reset to the pinned secret",
    ],
)
def test_what_only_mentions_a_password_is_left_alone(line: str) -> None:
    assert sl.mask(line) == line


def test_an_entry_as_a_line() -> None:
    resource = {"type": "cloud_run_revision", "labels": {"revision_name": "mlflow-dev-00001-abc"}}
    plain = {"timestamp": "2024-05-01T12:00:00.123456789Z", "resource": resource, "textPayload": "hello\n"}
    assert sl.format_entry(plain) == "2024-05-01T12:00:00.123Z  mlflow-dev-00001-abc  DEFAULT  hello"
    structured = {**plain, "severity": "ERROR", "jsonPayload": {"message": "boom\nTraceback", "code": 1}}
    del structured["textPayload"]
    assert sl.format_entry(structured).endswith("ERROR    boom\n    Traceback")
    assert sl.text_of({"jsonPayload": {"code": 1}}) == '{"code": 1}'
    request = {"httpRequest": {"requestMethod": "GET", "status": 200, "requestUrl": "https://x/health"}}
    assert sl.text_of(request) == "GET 200 https://x/health"
    secret = {"jsonPayload": {"message": "url postgresql://u:pw@/db", "nested": ["password=pw"]}}
    assert "pw" not in str(sl.masked(secret)).replace("password", "")


def _entry(stamp: str, insert_id: str, log: str = "stdout") -> dict:
    return {"timestamp": stamp, "insertId": insert_id, "logName": f"projects/p/logs/run.googleapis.com%2F{log}"}


def test_the_cursor_prints_each_entry_once_and_looks_back_for_late_ones() -> None:
    cursor = sl.Cursor(start=sl.parse_since("1h", now=NOW))
    assert cursor.window() == "2024-05-01T11:00:00.000000000Z"
    first = _entry("2024-05-01T11:59:00Z", "a")
    assert cursor.take(first) and not cursor.take(first)
    # The same insertId in another log is another entry.
    assert cursor.take(_entry("2024-05-01T11:59:00Z", "a", log="stderr"))
    # Asked again from a little before the newest one printed: an entry that arrived late is still found.
    assert cursor.window() == sl.rfc3339(sl.to_nanos("2024-05-01T11:59:00Z") - int(sl.LATE_SECONDS * 1e9))
    assert cursor.take(_entry("2024-05-01T11:58:50Z", "late"))
    assert cursor.window() == "2024-05-01T11:58:30.000000000Z"
    # What is older than the window is forgotten: memory stays bounded while following for days.
    assert cursor.take(_entry("2024-05-01T12:30:00Z", "b"))
    assert set(cursor.seen) == {("projects/p/logs/run.googleapis.com%2Fstdout", "b")}
