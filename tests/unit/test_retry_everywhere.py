"""The calls outside ``ctx.api`` go through the one retry policy too: the GCS state backend, the wait for a new
service account, HTTP requests to MLflow (health probe, rotation); and the client key's drift rule. In-memory
fakes only: the real calls are tested end to end against the emulator."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httplib2
import pytest
import requests
from google.api_core import exceptions
from googleapiclient.errors import HttpError

from mlflow_gcp import health, retry
from mlflow_gcp.context import Context
from mlflow_gcp.errors import LockedError
from mlflow_gcp.resources.client_key import KEYS, ClientKey
from mlflow_gcp.resources.service_accounts import ServiceAccount
from mlflow_gcp.rotation import Rotation
from mlflow_gcp.state import GcsBackend, State, lock_owner

# --- a Cloud Storage bucket that fails as GCP does ----------------------------------------------------------


class FakeBlob:
    def __init__(self, bucket: FakeBucket, name: str) -> None:
        self.bucket, self.name = bucket, name
        self.generation: int | None = None

    def _maybe_fail(self, op: str, kwargs: dict[str, Any]) -> None:
        assert kwargs.pop("retry", "unset") is None, f"{op}: the storage library's own retry must be off"
        self.bucket.calls.append(op)
        if self.bucket.fail_next.get(op, 0) > 0:
            self.bucket.fail_next[op] -= 1
            raise exceptions.ServiceUnavailable("injected")

    def download_as_bytes(self, **kwargs: Any) -> bytes:
        self._maybe_fail("download", kwargs)
        if self.name not in self.bucket.objects:
            raise exceptions.NotFound("no such object")
        data, self.generation = self.bucket.objects[self.name]
        return data

    def upload_from_string(self, data: str, content_type: str = "", if_generation_match: int | None = None,
                           **kwargs: Any) -> None:  # fmt: skip
        assert kwargs.pop("retry", "unset") is None, "upload: the storage library's own retry must be off"
        self.bucket.calls.append("upload")
        if if_generation_match == 0 and self.name in self.bucket.objects:
            raise exceptions.PreconditionFailed("exists")
        self.bucket.generation += 1
        self.bucket.objects[self.name] = (data.encode(), self.bucket.generation)
        self.generation = self.bucket.generation
        if self.bucket.lose_answer.get("upload", 0) > 0:  # applied, but the answer never arrives
            self.bucket.lose_answer["upload"] -= 1
            raise exceptions.ServiceUnavailable("answer lost")

    def delete(self, if_generation_match: int | None = None, **kwargs: Any) -> None:
        self._maybe_fail("delete", kwargs)
        if self.name not in self.bucket.objects:
            raise exceptions.NotFound("no such object")
        if if_generation_match is not None and self.bucket.objects[self.name][1] != if_generation_match:
            raise exceptions.PreconditionFailed("generation")
        del self.bucket.objects[self.name]


class FakeBucket:
    name = "b"

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.generation = 0
        self.calls: list[str] = []
        self.fail_next: dict[str, int] = {}
        self.lose_answer: dict[str, int] = {}

    def blob(self, name: str) -> FakeBlob:
        return FakeBlob(self, name)


class FakeStorage:
    def __init__(self) -> None:
        self.the_bucket = FakeBucket()

    def bucket(self, name: str) -> FakeBucket:
        return self.the_bucket


def test_gcs_state_reads_writes_and_locks_through_transient_errors():
    storage = FakeStorage()
    bucket = storage.the_bucket
    backend = GcsBackend(storage, "gs://b/prefix", "k", deadline=30)
    bucket.fail_next = {"download": 2}
    state = State(backend, {"project": "p"})  # reads: NOT_FOUND after two 503s
    backend.acquire(lock_owner("up"))
    state.record("bucket", {"id": "gs://x"})
    assert json.loads(bucket.objects["prefix/k.json"][0])["resources"]["bucket"]["id"] == "gs://x"
    bucket.fail_next = {"delete": 1}
    backend.release()
    assert "prefix/k.lock" not in bucket.objects
    assert bucket.calls.count("download") == 3 and bucket.calls.count("delete") == 2


def test_a_lock_create_applied_but_unanswered_is_ours():
    storage = FakeStorage()
    backend = GcsBackend(storage, "gs://b", "k", deadline=30)
    storage.the_bucket.lose_answer = {"upload": 1}
    backend.acquire(lock_owner("up"))  # the retry meets our own lock: 412, then it reads it back
    assert backend._generation == storage.the_bucket.objects["k.lock"][1]
    backend.release()
    assert "k.lock" not in storage.the_bucket.objects


def test_someone_elses_lock_is_still_refused():
    storage = FakeStorage()
    GcsBackend(storage, "gs://b", "k").acquire({"who": "x@elsewhere", "pid": 1, "since": "t", "command": "up"})
    with pytest.raises(LockedError, match="up by x@elsewhere"):
        GcsBackend(storage, "gs://b", "k").acquire(lock_owner("down"))
    holder = GcsBackend(storage, "gs://b", "k").break_lock()
    assert holder and holder["who"] == "x@elsewhere" and "k.lock" not in storage.the_bucket.objects


# --- HTTP to MLflow -----------------------------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, text: str = "") -> None:
        self.status_code, self.text = status, text


def scripted(*answers: Any) -> tuple[list[int], Any]:
    calls: list[int] = []

    def send() -> Any:
        calls.append(1)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return calls, send


def test_http_request_retries_unavailable_and_connection_errors():
    calls, send = scripted(Answer(503), requests.ConnectionError("reset"), Answer(200))
    assert retry.http_request(send, deadline=30).status_code == 200
    assert len(calls) == 3


def test_http_request_is_bounded_and_returns_the_last_answer():
    calls, send = scripted(Answer(503))
    assert retry.http_request(send, deadline=0).status_code == 503
    assert len(calls) == 1
    calls, send = scripted(requests.ConnectionError("refused"))
    with pytest.raises(requests.ConnectionError):
        retry.http_request(send, deadline=0)


def test_http_request_does_not_retry_other_answers():
    calls, send = scripted(Answer(500), Answer(200))
    assert retry.http_request(send, deadline=30).status_code == 500 and len(calls) == 1
    calls, send = scripted(Answer(500), Answer(200))
    assert Rotation._http(send).status_code == 200 and len(calls) == 2  # MLflow's 5xx are retried for rotation


def test_health_check_waits_out_a_starting_revision(monkeypatch):
    answers = {"/health": [Answer(503), Answer(200)], "search": [Answer(502), Answer(200), Answer(401)]}

    def get(url: str, **kwargs: Any) -> Answer:
        return answers["/health" if url.endswith("/health") else "search"].pop(0)

    monkeypatch.setattr(requests, "get", get)
    result = health.check("http://mlflow", "admin", "pw")
    assert result.ok, result


def test_health_check_reports_an_unreachable_server_within_its_bound(monkeypatch):
    def get(url: str, **kwargs: Any) -> Answer:
        raise requests.ConnectionError("connection refused")

    monkeypatch.setattr(requests, "get", get)
    result = health.check("http://mlflow", "admin", "pw", retry_deadline=0)
    assert not result.ok and result.health is None and "ConnectionError" in result.detail


# --- a new service account becoming visible -----------------------------------------------------------------


def http_error(status: int) -> HttpError:
    return HttpError(httplib2.Response({"status": status}), b"{}", uri="https://iam")


class FakeIam:
    """serviceAccounts().get(...).execute() answering from a script."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.calls = list(script), 0

    def projects(self) -> FakeIam:
        return self

    def serviceAccounts(self) -> FakeIam:
        return self

    def get(self, name: str) -> FakeIam:
        return self

    def execute(self) -> dict[str, Any]:
        self.calls += 1
        status = self.script.pop(0) if self.script else 200
        if status != 200:
            raise http_error(status)
        return {"email": "a@p.iam.gserviceaccount.com"}


class Account(ServiceAccount):
    key = "sa:test"
    display_name = "test"
    account_id = "a"


def make_ctx(iam: Any) -> Context:
    clients = SimpleNamespace(iam=iam)
    names = SimpleNamespace(project="p")
    return Context(None, names, clients, None, deadline=60)  # type: ignore[arg-type]


def test_wait_visible_needs_consecutive_successful_reads():
    # Visible, then not (another replica), then three in a row: the streak starts over after the failure.
    iam = FakeIam([200, 403, 404, 200, 200, 200])
    Account(make_ctx(iam))._wait_visible(needed=3)
    assert iam.calls == 6 and iam.script == []


def test_wait_visible_stops_at_other_errors():
    iam = FakeIam([400])
    with pytest.raises(HttpError):
        Account(make_ctx(iam))._wait_visible()
    assert iam.calls == 1


# --- the client key -------------------------------------------------------------------------------------------


def test_client_key_drift_is_any_key_but_the_held_one():
    key = ClientKey.__new__(ClientKey)
    assert key.diff({"version": "1", "key_id": "k1", "keys": ["k1"]}) == []
    [change] = key.diff({"version": "1", "key_id": "k1", "keys": ["k0", "k1"]})
    assert change.field == KEYS and change.desired == ["k1"]
    [change] = key.diff({"version": "1", "key_id": "gone", "keys": []})
    assert change.desired == ["(a new key, stored in the secret)"]
