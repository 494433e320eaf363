"""A Cloud Run revision's stdout and stderr as Cloud Logging entries, read through the discovery client the tool
uses: Cloud Run's log names, resource labels and instance label; plain lines as text of DEFAULT severity, JSON
lines as structured entries (severity, labels and time read); filters on the resource's labels, time and
severity; paging; and the last lines of a revision that crashed, readable as soon as its deploy failed."""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions
from google.cloud import artifactregistry_v1, run_v2

from mlflow_gcp.emulator.apis.logging import LoggingApi
from mlflow_gcp.emulator.core.images import ImageRecord
from mlflow_gcp.emulator.core.world import World
from tests.emulator.test_run import LOCATION, _deploy, _service, _until, _wait

SERVICE = "talker"

TALKER = r"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

print("plain to stdout", flush=True)
print("plain to stderr", file=sys.stderr, flush=True)
print(json.dumps({"severity": "warning", "message": "structured", "code": 7,
                  "logging.googleapis.com/labels": {"team": "ml"}}), flush=True)
print(json.dumps({"severity": "LOUD", "message": "a severity nobody knows"}), file=sys.stderr, flush=True)
print(json.dumps({"message": "dated", "time": "2020-01-02T03:04:05.123456Z"}), flush=True)
print("[1, 2]", flush=True)
print("", flush=True)
if os.environ.get("EXIT_CODE"):
    print("configuration error: " + os.environ.get("WHY", ""), file=sys.stderr, flush=True)
    sys.exit(int(os.environ["EXIT_CODE"]))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        print(f"served {self.path}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _talker_image(emulator, clients, project: str) -> str:
    ar = clients.artifact_registry()
    ar.create_repository(
        parent=f"projects/{project}/locations/{LOCATION}",
        repository_id="apps",
        repository=artifactregistry_v1.Repository(format_=artifactregistry_v1.Repository.Format.DOCKER),
    ).result(timeout=60)
    rootfs = Path(tempfile.mkdtemp(prefix="run-img-"))
    (rootfs / "app").mkdir()
    (rootfs / "app" / "talker.py").write_text(TALKER)
    uri = f"{LOCATION}-docker.pkg.dev/{project}/apps/talker:v1"
    record = ImageRecord(
        uri=uri,
        digest="sha256:" + hashlib.sha256(TALKER.encode()).hexdigest(),
        rootfs=rootfs,
        entrypoint=["python", "/app/talker.py"],
        env={},
        workdir="/app",
    )
    emulator.world.api("artifactregistry").register_image(record, ["v1"])
    return uri


def _list(clients, project: str, filter_: str, **body) -> list[dict]:
    request = {"resourceNames": [f"projects/{project}"], "filter": filter_, **body}
    logging = clients._discovery("logging", "v2", "logging")
    return logging.entries().list(body=request).execute().get("entries", [])


def _text(entry: dict) -> str:
    return entry.get("textPayload") or entry.get("jsonPayload", {}).get("message", "")


#: Every line the talker writes as it starts (what it writes when asked to exit aside).
STARTUP = {"plain to stdout", "plain to stderr", "structured", "a severity nobody knows", "dated", "[1, 2]"}


def _started(clients, project: str, revision: str) -> list[dict]:
    """The revision's entries once all its startup lines are in: they reach Logging a moment after the deploy
    is done (its probe may pass before they are shipped), as on Cloud Run."""

    def complete() -> list[dict]:
        found = _list(clients, project, _of(revision))
        return found if {_text(e) for e in found} >= STARTUP else []

    entries = _until(complete)
    assert entries, _list(clients, project, _of(revision))
    return entries


def _of(revision: str) -> str:
    return f'resource.type="cloud_run_revision" AND resource.labels.revision_name="{revision.rsplit("/", 1)[-1]}"'


@pytest.fixture
def talker(emulator, clients, enabled_project) -> tuple[str, run_v2.Service]:
    uri = _talker_image(emulator, clients, enabled_project)
    return enabled_project, _deploy(clients, enabled_project, _service(uri), sid=SERVICE)


def test_each_line_is_an_entry_as_cloud_run_writes_it(clients, talker):
    project, svc = talker
    revision = svc.latest_ready_revision.rsplit("/", 1)[-1]
    by_text = {_text(e): e for e in _started(clients, project, revision)}
    assert "" not in by_text  # an empty line is no entry

    out, err = by_text["plain to stdout"], by_text["plain to stderr"]
    assert out["logName"] == f"projects/{project}/logs/run.googleapis.com%2Fstdout"
    assert err["logName"] == f"projects/{project}/logs/run.googleapis.com%2Fstderr"
    assert out["resource"] == {
        "type": "cloud_run_revision",
        "labels": {
            "project_id": project,
            "service_name": SERVICE,
            "revision_name": revision,
            "location": LOCATION,
            "configuration_name": SERVICE,
        },
    }
    # Plain lines carry no severity (DEFAULT, left out as a zero enum), from stderr too.
    assert "severity" not in out and "severity" not in err
    instance = out["labels"]["instanceId"]
    assert len(instance) == 64 and err["labels"] == {"instanceId": instance}
    assert out["timestamp"] <= out["receiveTimestamp"] and out["insertId"]

    structured = by_text["structured"]
    assert structured["severity"] == "WARNING"
    assert structured["jsonPayload"] == {"message": "structured", "code": 7}
    assert structured["labels"] == {"instanceId": instance, "team": "ml"}
    unknown = by_text["a severity nobody knows"]
    assert "severity" not in unknown and unknown["jsonPayload"]["severity"] == "LOUD"
    assert by_text["dated"]["timestamp"] == "2020-01-02T03:04:05.123456Z"
    assert by_text["[1, 2]"]["textPayload"] == "[1, 2]"  # JSON, but not an object: text

    system = by_text[next(t for t in by_text if t.startswith(f"Starting revision {revision}"))]
    assert system["logName"] == f"projects/{project}/logs/run.googleapis.com%2Fvarlog%2Fsystem"
    assert system["severity"] == "INFO"

    # What it logs while serving arrives a moment later, like on Cloud Run.
    assert requests.get(f"{svc.uri}/hello", timeout=10).text == "ok"
    assert _until(lambda: _list(clients, project, f'{_of(revision)} AND textPayload="served /hello"'))


def test_filters_on_labels_time_and_severity_and_paging(clients, talker):
    project, svc = talker
    first = svc.latest_ready_revision
    run = clients.run_services()
    changed = run.get_service(name=svc.name)
    changed.template.containers[0].env.append(run_v2.EnvVar(name="SECOND", value="1"))
    second = _wait(run.update_service(service=changed)).latest_ready_revision
    assert second != first

    for revision in (first, second):
        entries = _started(clients, project, revision)
        assert {e["resource"]["labels"]["revision_name"] for e in entries} == {revision.rsplit("/", 1)[-1]}
    service_wide = _list(
        clients, project, f'resource.labels.service_name="{SERVICE}" AND textPayload="plain to stdout"'
    )
    assert len(service_wide) == 2
    assert _list(clients, project, 'resource.labels.service_name="other" AND textPayload="plain to stdout"') == []

    warnings = _list(clients, project, f"{_of(second)} AND severity>=WARNING")
    assert [_text(e) for e in warnings] == ["structured"]
    assert [_text(e) for e in _list(clients, project, f'{_of(second)} AND logName:"stderr"')] == [
        "plain to stderr",
        "a severity nobody knows",
    ]

    # A time splits the revision's entries in two, as Logging compares instants.
    entries = _list(clients, project, _of(second))
    middle = entries[len(entries) // 2]["timestamp"]
    after = _list(clients, project, f'{_of(second)} AND timestamp>="{middle}"')
    before = _list(clients, project, f'{_of(second)} AND timestamp<"{middle}"')
    assert before + after == entries and before and after
    newest_first = _list(clients, project, _of(second), orderBy="timestamp desc")
    assert newest_first == list(reversed(entries))

    logging = clients._discovery("logging", "v2", "logging")
    paged, token = [], None
    while True:
        body = {"resourceNames": [f"projects/{project}"], "filter": _of(second), "pageSize": 2}
        answer = logging.entries().list(body={**body, **({"pageToken": token} if token else {})}).execute()
        assert len(answer.get("entries", [])) <= 2
        paged += answer.get("entries", [])
        token = answer.get("nextPageToken")
        if not token:
            break
    assert paged == entries


def test_a_crashed_revision_s_last_lines_are_there_when_its_deploy_fails(emulator, clients, enabled_project):
    uri = _talker_image(emulator, clients, enabled_project)
    env = {"EXIT_CODE": "3", "WHY": "workers must be a number"}
    with pytest.raises(exceptions.FailedPrecondition):
        _deploy(clients, enabled_project, _service(uri, env=env), sid=SERVICE)
    name = f"projects/{enabled_project}/locations/{LOCATION}/services/{SERVICE}"
    revision = clients.run_services().get_service(name=name).latest_created_revision
    # No waiting: the deploy fails only once they are in. Cloud Run's note of the exit comes last; the order of
    # lines written to stdout and stderr within microseconds of each other is the two pipes' (as on Cloud Run).
    entries = _list(clients, enabled_project, _of(revision))
    exit_line = entries[-1]
    assert _text(exit_line) == "Container called exit(3)."
    assert exit_line["logName"].endswith("run.googleapis.com%2Fvarlog%2Fsystem") and exit_line["severity"] == "ERROR"
    assert exit_line["resource"]["labels"]["revision_name"] == revision.rsplit("/", 1)[-1]
    crash = [e for e in entries if e["logName"].endswith("run.googleapis.com%2Fstderr")][-1]
    assert _text(crash) == "configuration error: workers must be a number" and "severity" not in crash


def test_lines_a_reset_stopped_revision_was_still_flushing_are_dropped(tmp_path):
    world = World(tmp_path)
    world.add_project("p1")
    api = LoggingApi(world)
    entry = {"logName": "projects/p1/logs/run.googleapis.com%2Fstdout", "resource": {"type": "global"}}
    written = time.time_ns()
    api.reset()
    assert api.append("p1", [{**entry, "textPayload": "old"}], written_at=written) == []
    stored = api.append("p1", [{**entry, "textPayload": "new"}], written_at=time.time_ns())
    assert [e["textPayload"] for e in stored] == ["new"]
    assert [e["textPayload"] for e in api.entries("p1")] == ["new"]
