"""Cloud Logging v2 through googleapiclient's discovery client (what the tool uses to read build logs):
entries.write and entries.list with the Logging query language, ordering and paging."""

from __future__ import annotations

import pytest
from googleapiclient.errors import HttpError

from mlflow_gcp.emulator.apis.logging import LoggingApi
from mlflow_gcp.emulator.core.world import World


def _logging(clients):
    return clients._discovery("logging", "v2", "logging")


def _write(clients, project: str, entries: list[dict], **defaults) -> None:
    _logging(clients).entries().write(body={"entries": entries, **defaults}).execute()


def _list(clients, project: str, filter_: str = "", **body) -> list[dict]:
    request = {"resourceNames": [f"projects/{project}"], "filter": filter_, **body}
    return _logging(clients).entries().list(body=request).execute().get("entries", [])


def _texts(entries: list[dict]) -> list[str]:
    return [e.get("textPayload") or e.get("jsonPayload", {}).get("message", "") for e in entries]


@pytest.fixture
def seeded(clients, project) -> str:
    log = f"projects/{project}/logs/app"
    _write(
        clients,
        project,
        [
            {"textPayload": "starting", "severity": "INFO", "labels": {"step": "MAIN"}},
            {"textPayload": "disk nearly full", "severity": "WARNING", "labels": {"step": "Step #0"}},
            {"textPayload": "crashed", "severity": "ERROR", "labels": {"step": "Step #0", "run.googleapis.com/x": "y"}},
            {"jsonPayload": {"message": "structured", "code": 42}, "labels": {"step": "Step #1"}},
            {
                "textPayload": "other resource",
                "severity": "DEBUG",
                "resource": {"type": "cloud_run_revision", "labels": {"service_name": "mlflow"}},
            },
        ],
        logName=log,
        resource={"type": "build", "labels": {"build_id": "b1", "project_id": project}},
    )
    return project


def test_entries_are_listed_oldest_first_with_their_defaults(clients, seeded):
    entries = _list(clients, seeded)
    assert _texts(entries) == ["starting", "disk nearly full", "crashed", "structured", "other resource"]
    first = entries[0]
    assert first["logName"] == f"projects/{seeded}/logs/app"
    assert first["resource"]["labels"]["build_id"] == "b1"
    assert first["timestamp"].endswith("Z") and first["receiveTimestamp"] and first["insertId"]
    assert "severity" not in entries[3]  # DEFAULT, left out as a zero enum
    assert _texts(_list(clients, seeded, orderBy="timestamp desc"))[0] == "other resource"


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        (
            'resource.type="build" AND resource.labels.build_id="b1"',
            ["starting", "disk nearly full", "crashed", "structured"],
        ),
        ("severity>=WARNING", ["disk nearly full", "crashed"]),
        ("severity<INFO", ["structured", "other resource"]),
        ('textPayload:"NEARLY"', ["disk nearly full"]),
        ('labels.step="Step #0" severity=ERROR', ["crashed"]),
        ('labels."run.googleapis.com/x"=y', ["crashed"]),
        ("jsonPayload.code>=40", ["structured"]),
        ('labels.step=("MAIN" OR "Step #1")', ["starting", "structured"]),
        # OR binds tighter than AND: this is MAIN AND (ERROR OR WARNING), which nothing matches.
        ('labels.step="MAIN" AND severity=ERROR OR severity=WARNING', []),
        ('(labels.step="MAIN" AND severity=INFO) OR severity=ERROR', ["starting", "crashed"]),
        ('NOT resource.type="build"', ["other resource"]),
        ('-resource.type="build"', ["other resource"]),
        ("labels.step:*", ["starting", "disk nearly full", "crashed", "structured"]),
        ('textPayload=~"^cr.sh"', ["crashed"]),
        ('"nearly"', ["disk nearly full"]),
        ('resource.labels.service_name!="other"', ["other resource"]),
    ],
)
def test_filters(clients, seeded, filter_, expected):
    assert _texts(_list(clients, seeded, filter_)) == expected


def test_timestamp_comparisons(clients, seeded):
    entries = _list(clients, seeded)
    third = entries[2]["timestamp"]
    assert _texts(_list(clients, seeded, f'timestamp>="{third}"')) == ["crashed", "structured", "other resource"]
    assert _texts(_list(clients, seeded, f'timestamp<"{third}"')) == ["starting", "disk nearly full"]
    assert _list(clients, seeded, 'timestamp>"2999-01-01T00:00:00Z"') == []


def test_paging(clients, seeded):
    logging = _logging(clients)
    seen, token, pages = [], None, 0
    while True:
        body = {"resourceNames": [f"projects/{seeded}"], "pageSize": 2, **({"pageToken": token} if token else {})}
        answer = logging.entries().list(body=body).execute()
        seen += answer.get("entries", [])
        pages += 1
        token = answer.get("nextPageToken")
        if not token:
            break
    assert pages == 3
    assert _texts(seen) == _texts(_list(clients, seeded))


@pytest.mark.parametrize("filter_", ['resource.type="build" AND', "(severity=ERROR", 'severity="x" OR OR', "="])
def test_a_filter_that_does_not_parse_is_400(clients, seeded, filter_):
    with pytest.raises(HttpError) as err:
        _list(clients, seeded, filter_)
    assert err.value.status_code == 400
    assert "Unparseable filter: syntax error at line 1" in err.value.reason


def test_bad_requests(clients, project):
    logging = _logging(clients)
    for body in ({"filter": ""}, {"resourceNames": [f"projects/{project}"], "orderBy": "severity"}):
        with pytest.raises(HttpError) as err:
            logging.entries().list(body=body).execute()
        assert err.value.status_code == 400
    with pytest.raises(HttpError) as err:
        logging.entries().write(body={"entries": [{"textPayload": "no log name"}]}).execute()
    assert err.value.status_code == 400
    with pytest.raises(HttpError) as err:
        logging.entries().list(body={"resourceNames": ["projects/no-such-project-x"]}).execute()
    assert err.value.status_code == 403


def test_dry_run_writes_nothing(clients, project):
    entry = {"textPayload": "x", "logName": f"projects/{project}/logs/a", "resource": {"type": "global"}}
    _write(clients, project, [entry], dryRun=True)
    assert _list(clients, project) == []


def test_entries_survive_a_restart(tmp_path):
    world = World(tmp_path)
    world.add_project("p1")
    api = LoggingApi(world)
    world.apis["logging"] = api
    api.append("p1", [{"logName": "projects/p1/logs/a", "resource": {"type": "global"}, "textPayload": "kept"}])

    again = World(tmp_path)
    restarted = LoggingApi(again)
    assert [e["textPayload"] for e in restarted.entries("p1")] == ["kept"]
