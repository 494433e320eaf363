"""Service Usage and Resource Manager through the official clients: enabling, SERVICE_DISABLED, etags."""

from __future__ import annotations

import time

import pytest
from google.api_core import exceptions
from google.cloud import resourcemanager_v3, service_usage_v1
from google.iam.v1 import iam_policy_pb2, policy_pb2

from tests.conftest import enable


def test_batch_enable_runs_an_operation_and_enables(clients, project, admin):
    su = clients.service_usage()
    got = su.get_service(request={"name": f"projects/{project}/services/secretmanager.googleapis.com"})
    assert got.state == service_usage_v1.State.DISABLED
    start = len(admin.requests())
    enable(clients, project, "secretmanager.googleapis.com", "run.googleapis.com")
    log = admin.requests(start)
    assert [e["route"] for e in log][:2] == ["services.batchEnable", "operations.get"]
    got = su.get_service(request={"name": f"projects/{project}/services/secretmanager.googleapis.com"})
    assert got.state == service_usage_v1.State.ENABLED
    listed = su.list_services(request={"parent": f"projects/{project}", "filter": "state:ENABLED"})
    enabled = {s.config.name for s in listed}
    assert {"secretmanager.googleapis.com", "run.googleapis.com", "storage.googleapis.com"} <= enabled


def test_batch_enable_refuses_more_than_20(clients, project):
    with pytest.raises(exceptions.BadRequest, match="at most 20"):
        clients.service_usage().batch_enable_services(
            request={"parent": f"projects/{project}", "service_ids": ["run.googleapis.com"] * 21}
        )


def test_unknown_service_is_refused(clients, project):
    with pytest.raises(exceptions.Forbidden) as err:
        clients.service_usage().batch_enable_services(
            request={"parent": f"projects/{project}", "service_ids": ["nope.googleapis.com"]}
        )
    assert err.value.reason == "SERVICE_CONFIG_NOT_FOUND_OR_PERMISSION_DENIED"


def test_disabled_api_answers_service_disabled(clients, project):
    with pytest.raises(exceptions.Forbidden) as err:
        clients.secret_manager().list_secrets(parent=f"projects/{project}")
    assert err.value.reason == "SERVICE_DISABLED"
    assert "Secret Manager API has not been used in project" in err.value.message


def test_service_disabled_lingers_after_enable_under_eventual_consistency(clients, project, admin):
    admin.settings(consistency=True, service_enable_seconds=1.5)
    enable(clients, project, "secretmanager.googleapis.com")
    sm = clients.secret_manager()
    with pytest.raises(exceptions.Forbidden) as err:
        sm.list_secrets(parent=f"projects/{project}")
    assert err.value.reason == "SERVICE_DISABLED"
    time.sleep(1.6)
    assert list(sm.list_secrets(parent=f"projects/{project}")) == []


def test_unknown_project_is_permission_denied(clients):
    with pytest.raises(exceptions.Forbidden, match="Permission denied on resource project"):
        clients.projects().get_project(name="projects/does-not-exist-123")


def test_project_get_by_id(clients, project):
    got = clients.projects().get_project(name=f"projects/{project}")
    assert got.project_id == project
    assert got.state == resourcemanager_v3.Project.State.ACTIVE


def test_project_policy_read_modify_write_with_etag(clients, project):
    rm = clients.projects()
    resource = f"projects/{project}"
    policy = rm.get_iam_policy(
        request=iam_policy_pb2.GetIamPolicyRequest(resource=resource, options={"requested_policy_version": 3})
    )
    assert any(b.role == "roles/owner" for b in policy.bindings)
    stale = policy_pb2.Policy()
    stale.CopyFrom(policy)
    policy.bindings.add(role="roles/viewer", members=["user:alice@example.com"])
    updated = rm.set_iam_policy(request={"resource": resource, "policy": policy})
    assert updated.etag != policy.etag
    assert "user:alice@example.com" in {m for b in updated.bindings for m in b.members}
    stale.bindings.add(role="roles/editor", members=["user:bob@example.com"])
    with pytest.raises(exceptions.Conflict, match="concurrent policy changes"):
        rm.set_iam_policy(request={"resource": resource, "policy": stale})


def test_policy_refuses_invalid_member(clients, project):
    rm = clients.projects()
    resource = f"projects/{project}"
    policy = rm.get_iam_policy(request={"resource": resource})
    policy.bindings.add(role="roles/viewer", members=["alice@example.com"])
    with pytest.raises(exceptions.BadRequest):
        rm.set_iam_policy(request={"resource": resource, "policy": policy})


def test_domain_restricted_sharing_refuses_all_users(clients, project, admin):
    admin.settings(domain_restricted_sharing=True)
    rm = clients.projects()
    resource = f"projects/{project}"
    policy = rm.get_iam_policy(request={"resource": resource})
    policy.bindings.add(role="roles/viewer", members=["allUsers"])
    with pytest.raises(exceptions.BadRequest, match="permitted customer"):
        rm.set_iam_policy(request={"resource": resource, "policy": policy})


def test_injected_faults_are_seeded_and_logged(clients, project, admin):
    admin.settings(fault_rate=0.5, fault_seed=7, fault_apis=["resourcemanager"])
    rm = clients.projects()
    outcomes = []
    for _ in range(20):
        try:
            # No retry, so every injected fault surfaces.
            rm.get_project(name=f"projects/{project}", retry=None)
            outcomes.append(200)
        except (exceptions.TooManyRequests, exceptions.ServiceUnavailable) as err:
            outcomes.append(err.code)
    assert 200 in outcomes and ({429, 503} & set(outcomes))
    log = [e for e in admin.requests() if e["route"] == "projects.get"][-20:]
    assert [e["status"] for e in log] == outcomes


def test_unknown_fields_are_rejected(emulator, project):
    import requests

    r = requests.post(
        f"{emulator.base_url}/serviceusage/v1/projects/{project}/services:batchEnable",
        json={"serviceIds": ["run.googleapis.com"], "bogus": 1},
        timeout=5,
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and 'Unknown name "bogus"' in err["message"]


def test_every_public_service_is_known(emulator, project):
    # recorded: tests/golden/recordings/serviceusage-service.log
    import requests

    base = f"{emulator.base_url}/serviceusage/v1"
    url = f"{base}/projects/{project}/services/runtimeconfig.googleapis.com"
    got = requests.get(url, timeout=5).json()
    assert got["state"] == "DISABLED" and "parent" not in got  # never enabled here
    op = requests.post(f"{url}:enable", json={}, timeout=5).json()
    assert list(op) == ["name"]
    deadline = time.monotonic() + 10
    while not op.get("done") and time.monotonic() < deadline:
        time.sleep(0.05)
        op = requests.get(f"{base}/{op['name']}", timeout=5).json()
    assert op["metadata"] == {"@type": "type.googleapis.com/google.protobuf.Empty", "value": {}}
    assert op["response"]["service"]["state"] == "ENABLED" and "config" not in op["response"]["service"]
    got = requests.get(url, timeout=5).json()
    assert got["state"] == "ENABLED" and got["parent"].startswith("projects/")
    op = requests.post(f"{url}:disable", json={}, timeout=5).json()
    assert op["metadata"]["@type"] == "type.googleapis.com/google.protobuf.Empty"


def test_project_policy_v1_keeps_audit_configs(emulator, project):
    # Resource Manager v1's IAM methods, as Config Connector calls them (recorded:
    # tests/golden/recordings/project-iam-and-serviceaccount.log).
    import requests

    url = f"{emulator.base_url}/resourcemanager/v1/projects/{project}"
    policy = requests.post(f"{url}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}}, timeout=5).json()
    audit = [{"service": "container.googleapis.com", "auditLogConfigs": [{"logType": "DATA_READ"}]}]
    body = {"policy": {**policy, "auditConfigs": audit, "version": 3}, "updateMask": "bindings,etag,auditConfigs"}
    written = requests.post(f"{url}:setIamPolicy", json=body, timeout=5).json()
    assert written["auditConfigs"] == audit and written["version"] == 1  # no conditions: version 1
    # The default mask is "bindings,etag": the audit configuration stays.
    kept = requests.post(f"{url}:setIamPolicy", json={"policy": {"bindings": policy["bindings"]}}, timeout=5).json()
    assert kept["auditConfigs"] == audit
    stale = requests.post(f"{url}:setIamPolicy", json={"policy": {**policy}}, timeout=5)
    assert stale.status_code == 409
