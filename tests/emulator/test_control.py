"""The control plane: request log, kill points, dropped connections, latency, settings, the daemon."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions

from mlflow_gcp.emulator.daemon import find_running, start_daemon, stop_daemon
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin


def _grant(clients: Clients, project: str, member: str, role: str = "roles/viewer", retry=None) -> None:
    rm = clients.projects()
    policy = rm.get_iam_policy(request={"resource": f"projects/{project}"})
    policy.bindings.add(role=role, members=[member])
    rm.set_iam_policy(request={"resource": f"projects/{project}", "policy": policy}, retry=retry)


def _members(clients: Clients, project: str) -> set[str]:
    policy = clients.projects().get_iam_policy(request={"resource": f"projects/{project}"})
    return {m for b in policy.bindings for m in b.members}


def test_request_log_marks_mutations(clients, project, admin):
    start = len(admin.requests())
    _grant(clients, project, "user:a@example.com")
    log = admin.requests(start)
    assert [(e["route"], e["mutating"], e["status"]) for e in log] == [
        ("projects.getIamPolicy", False, 200),
        ("projects.setIamPolicy", True, 200),
    ]
    assert all(e["latency_ms"] >= 0 and e["path"].startswith("/resourcemanager/v3/") for e in log)


def test_operations_can_be_held_pending_for_extra_polls(clients, project, admin):
    admin.settings(min_pending_polls=2)
    start = len(admin.requests())
    op = clients.service_usage().batch_enable_services(
        request={"parent": f"projects/{project}", "service_ids": ["run.googleapis.com"]}
    )
    op.result(timeout=30)
    polls = [e for e in admin.requests(start) if e["route"] == "operations.get"]
    assert len(polls) == 3


def test_realistic_latency_keeps_operations_running(clients, project, admin):
    admin.settings(latency_profile="realistic", time_scale=0.02)  # enabling: 30 s * 0.02 = 0.6 s
    op = clients.service_usage().batch_enable_services(
        request={"parent": f"projects/{project}", "service_ids": ["run.googleapis.com"]}
    )
    assert not op.done()
    op.result(timeout=30)
    assert op.done()


_CLIENT = textwrap.dedent(
    """
    import sys
    from mlflow_gcp.emulator.testing import Clients
    from tests.emulator.test_control import _grant
    clients, project = Clients(sys.argv[1]), sys.argv[2]
    for i in range(10):
        _grant(clients, project, f"user:u{i}@example.com")
        print(i, flush=True)
    """
)


def test_kill_rule_kills_the_named_client_after_its_nth_mutation(emulator, clients, project, admin):
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, emulator.base_url, project],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    admin.settings(kill_after_mutations=3, kill_pid=proc.pid)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -9
    # Two grants were acknowledged; the third was applied but the client died before hearing so.
    assert out.split() == ["0", "1"]
    members = _members(clients, project)
    assert {"user:u0@example.com", "user:u1@example.com", "user:u2@example.com"} <= members
    assert "user:u3@example.com" not in members
    assert admin.settings()["kill_after_mutations"] is None


def test_drop_rule_cuts_the_connection_after_applying(clients, project, admin):
    admin.settings(kill_after_mutations=1, kill_action="drop")
    with pytest.raises((requests.ConnectionError, exceptions.ServiceUnavailable, exceptions.GoogleAPICallError)):
        _grant(clients, project, "user:dropped@example.com")
    assert "user:dropped@example.com" in _members(clients, project)


def test_bad_settings_are_refused(admin):
    with pytest.raises(requests.HTTPError):
        admin.settings(fault_rate=2)
    with pytest.raises(requests.HTTPError):
        admin.settings(no_such_setting=True)


def test_reset_forgets_projects_but_keeps_the_default(emulator, admin, clients, project):
    admin.reset()
    with pytest.raises(exceptions.Forbidden):
        clients.projects().get_project(name=f"projects/{project}")
    assert clients.projects().get_project(name="projects/mlflow-local").project_id == "mlflow-local"


def test_daemon_keeps_resources_across_restarts(tmp_path_factory):
    data_dir = Path(tmp_path_factory.mktemp("daemon"))
    try:
        info = start_daemon(data_dir, port=0)
        assert start_daemon(data_dir, port=0)["pid"] == info["pid"]  # a second start finds the first
        clients = Clients(info["base_url"])
        EmulatorAdmin(info["base_url"]).add_project("persisted-proj")
        _grant(clients, "persisted-proj", "user:kept@example.com")
        assert stop_daemon(data_dir)
        assert find_running(data_dir) is None
        info = start_daemon(data_dir, port=0)
        assert "user:kept@example.com" in _members(Clients(info["base_url"]), "persisted-proj")
    finally:
        stop_daemon(data_dir)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and find_running(data_dir):
        time.sleep(0.1)
    assert find_running(data_dir) is None


def test_denied_permissions_answer_each_api_in_its_own_shape(clients, project, admin):
    from googleapiclient.errors import HttpError

    admin.settings(denied_permissions=["resourcemanager.projects.setIamPolicy", "cloudsql.instances.list"])
    with pytest.raises(exceptions.Forbidden) as refused:
        _grant(clients, project, "user:a@example.com")
    assert refused.value.reason == "IAM_PERMISSION_DENIED"
    assert refused.value.metadata["permission"] == "resourcemanager.projects.setIamPolicy"
    assert "user:a@example.com" not in _members(clients, project)  # reads are not refused
    with pytest.raises(HttpError) as legacy:
        clients.sqladmin().instances().list(project=project).execute()
    assert legacy.value.resp.status == 403 and legacy.value.error_details[0]["reason"] == "notAuthorized"
    admin.settings(denied_permissions=[])
    _grant(clients, project, "user:a@example.com")
