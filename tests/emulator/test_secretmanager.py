"""Secret Manager through the official GAPIC client (REST): secrets, versions, access rules, IAM, etags."""

from __future__ import annotations

import base64

import google_crc32c
import pytest
import requests
from google.api_core import exceptions
from google.cloud import secretmanager_v1
from google.iam.v1 import policy_pb2

State = secretmanager_v1.SecretVersion.State
AUTOMATIC = {"replication": {"automatic": {}}}


def _number(clients, project: str) -> str:
    return clients.projects().get_project(name=f"projects/{project}").name.split("/")[1]


def _secret(sm, project: str, secret_id: str = "db-password", **fields) -> secretmanager_v1.Secret:
    return sm.create_secret(parent=f"projects/{project}", secret_id=secret_id, secret={**AUTOMATIC, **fields})


def _add(sm, secret: str, data: bytes) -> secretmanager_v1.SecretVersion:
    return sm.add_secret_version(parent=secret, payload={"data": data, "data_crc32c": google_crc32c.value(data)})


def test_service_disabled_until_enabled(clients, project):
    with pytest.raises(exceptions.Forbidden) as err:
        clients.secret_manager().create_secret(parent=f"projects/{project}", secret_id="s1", secret=AUTOMATIC)
    assert err.value.reason == "SERVICE_DISABLED"
    assert "Secret Manager API has not been used in project" in err.value.message


def test_create_get_list_and_duplicate(clients, enabled_project):
    sm = clients.secret_manager()
    number = _number(clients, enabled_project)
    created = _secret(sm, enabled_project, labels={"app": "mlflow"}, annotations={"owner": "ops"})
    # GCP names resources with the project number, whichever form the caller used.
    assert created.name == f"projects/{number}/secrets/db-password"
    assert created.etag and created.create_time
    assert dict(created.labels) == {"app": "mlflow"} and dict(created.annotations) == {"owner": "ops"}
    assert secretmanager_v1.Replication.pb(created.replication).HasField("automatic")
    got = sm.get_secret(name=f"projects/{enabled_project}/secrets/db-password")
    assert got.name == created.name and got.etag == created.etag
    assert [s.name for s in sm.list_secrets(parent=f"projects/{enabled_project}")] == [created.name]
    with pytest.raises(exceptions.Conflict, match="already exists"):
        _secret(sm, enabled_project)
    with pytest.raises(exceptions.NotFound):
        sm.get_secret(name=f"projects/{enabled_project}/secrets/nope")


def test_user_managed_replication_and_list_filter_and_pages(clients, enabled_project):
    sm = clients.secret_manager()
    um = _secret(
        sm, enabled_project, "regional", replication={"user_managed": {"replicas": [{"location": "us-east1"}]}}
    )
    assert [r.location for r in um.replication.user_managed.replicas] == ["us-east1"]
    _secret(sm, enabled_project, "a-1", labels={"tier": "prod"})
    _secret(sm, enabled_project, "a-2", labels={"tier": "dev"})
    pages = sm.list_secrets(request={"parent": f"projects/{enabled_project}", "page_size": 2}).pages
    assert [len(p.secrets) for p in pages] == [2, 1]
    prod = sm.list_secrets(request={"parent": f"projects/{enabled_project}", "filter": "labels.tier=prod"})
    assert [s.name.rsplit("/", 1)[1] for s in prod] == ["a-1"]


@pytest.mark.parametrize(
    "secret",
    [{}, {"replication": {}}, {"replication": {"user_managed": {"replicas": []}}}],
    ids=["none", "empty", "no-replicas"],
)
def test_replication_is_required(clients, enabled_project, secret):
    with pytest.raises(exceptions.BadRequest, match="replication"):
        clients.secret_manager().create_secret(parent=f"projects/{enabled_project}", secret_id="s1", secret=secret)


@pytest.mark.parametrize("secret_id", ["has space", "dot.ted", "x" * 256, ""])
def test_invalid_secret_ids_are_refused(clients, enabled_project, secret_id):
    with pytest.raises(exceptions.BadRequest):
        _secret(clients.secret_manager(), enabled_project, secret_id)


def test_unknown_body_field_is_rejected(emulator, enabled_project):
    r = requests.post(
        f"{emulator.base_url}/secretmanager/v1/projects/{enabled_project}/secrets?secretId=s1",
        json={"replication": {"automatic": {}}, "bogus": 1},
        timeout=5,
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and 'Unknown name "bogus"' in err["message"]


def test_access_by_number_and_latest(clients, enabled_project):
    sm = clients.secret_manager()
    secret = _secret(sm, enabled_project)
    v1 = _add(sm, secret.name, b"first")
    v2 = sm.add_secret_version(parent=f"projects/{enabled_project}/secrets/db-password", payload={"data": b"second"})
    assert v1.name.endswith("/versions/1") and v2.name.endswith("/versions/2")
    assert v1.client_specified_payload_checksum and not v2.client_specified_payload_checksum
    assert v1.state == State.ENABLED
    one = sm.access_secret_version(name=f"projects/{enabled_project}/secrets/db-password/versions/1")
    assert one.payload.data == b"first" and one.name == v1.name
    assert one.payload.data_crc32c == google_crc32c.value(b"first")
    latest = sm.access_secret_version(name=f"projects/{enabled_project}/secrets/db-password/versions/latest")
    # The response names the concrete version `latest` resolved to.
    assert latest.payload.data == b"second" and latest.name == v2.name
    assert sm.get_secret_version(name=f"{secret.name}/versions/latest").name == v2.name
    listed = list(sm.list_secret_versions(parent=secret.name))
    assert [v.name for v in listed] == [v2.name, v1.name]
    with pytest.raises(exceptions.NotFound):
        sm.access_secret_version(name=f"{secret.name}/versions/3")


def test_latest_without_versions_is_not_found(clients, enabled_project):
    sm = clients.secret_manager()
    secret = _secret(sm, enabled_project)
    with pytest.raises(exceptions.NotFound, match="not found or has no versions"):
        sm.access_secret_version(name=f"{secret.name}/versions/latest")


def test_disable_enable_destroy_and_access_errors(emulator, clients, enabled_project):
    sm = clients.secret_manager()
    secret = _secret(sm, enabled_project)
    v1 = _add(sm, secret.name, b"first")
    v2 = _add(sm, secret.name, b"second-payload")

    disabled = sm.disable_secret_version(name=v2.name)
    assert disabled.state == State.DISABLED and disabled.etag != v2.etag
    with pytest.raises(exceptions.BadRequest, match=r"versions/2\] is in DISABLED state"):
        sm.access_secret_version(name=v2.name)
    # `latest` is the most recently created version, whatever its state, as on GCP.
    with pytest.raises(exceptions.BadRequest, match="DISABLED"):
        sm.access_secret_version(name=f"{secret.name}/versions/latest")
    assert sm.access_secret_version(name=v1.name).payload.data == b"first"

    assert sm.enable_secret_version(name=v2.name).state == State.ENABLED
    assert sm.access_secret_version(name=v2.name).payload.data == b"second-payload"

    with pytest.raises(exceptions.Conflict):
        sm.destroy_secret_version(request={"name": v2.name, "etag": v2.etag})  # stale: enable changed it
    destroyed = sm.destroy_secret_version(name=v2.name)
    assert destroyed.state == State.DESTROYED and destroyed.destroy_time
    with pytest.raises(exceptions.BadRequest, match="is in DESTROYED state"):
        sm.access_secret_version(name=v2.name)
    with pytest.raises(exceptions.BadRequest, match="DESTROYED"):
        sm.enable_secret_version(name=v2.name)
    assert sm.get_secret_version(name=v2.name).state == State.DESTROYED
    # The material is gone from the persisted store too; the surviving version's is still there.
    on_disk = (emulator.world.data_dir / "store.json").read_text()
    assert base64.b64encode(b"second-payload").decode() not in on_disk
    assert base64.b64encode(b"first").decode() in on_disk
    enabled = sm.list_secret_versions(request={"parent": secret.name, "filter": "state:ENABLED"})
    assert [v.name for v in enabled] == [v1.name]


def test_transitions_with_the_current_etag_answer_the_whole_version(clients, enabled_project):
    # recorded: tests/golden/recordings/secretmanager-version.log: disable then destroy, each with the etag
    # of the version as last read, answer the whole version (replicationStatus included).
    sm = clients.secret_manager()
    secret = _secret(sm, enabled_project)
    version = sm.get_secret_version(name=_add(sm, secret.name, b"x").name)
    disabled = sm.disable_secret_version(request={"name": version.name, "etag": version.etag})
    assert disabled.state == State.DISABLED and disabled.create_time and disabled.etag
    assert "automatic" in disabled.replication_status
    destroyed = sm.destroy_secret_version(request={"name": version.name, "etag": disabled.etag})
    assert destroyed.state == State.DESTROYED and destroyed.destroy_time and destroyed.create_time
    assert destroyed.replication_status == disabled.replication_status


def test_crc32c_mismatch_is_refused(clients, enabled_project):
    sm = clients.secret_manager()
    secret = _secret(sm, enabled_project)
    with pytest.raises(exceptions.BadRequest, match="Checksum mismatch"):
        sm.add_secret_version(
            parent=secret.name, payload={"data": b"value", "data_crc32c": google_crc32c.value(b"other")}
        )
    assert list(sm.list_secret_versions(parent=secret.name)) == []


def test_payload_limit_is_64_kib(clients, enabled_project):
    sm = clients.secret_manager()
    secret = _secret(sm, enabled_project)
    assert _add(sm, secret.name, b"x" * 65536).name.endswith("/versions/1")
    with pytest.raises(exceptions.BadRequest):
        _add(sm, secret.name, b"x" * 65537)


def test_update_with_mask_and_etag(clients, enabled_project):
    sm = clients.secret_manager()
    secret = _secret(sm, enabled_project, labels={"app": "mlflow"})
    stale = secretmanager_v1.Secret(name=secret.name, etag=secret.etag, labels={"app": "other"})
    secret.labels["env"] = "prod"
    secret.annotations["note"] = "kept out by the mask"
    updated = sm.update_secret(secret=secret, update_mask={"paths": ["labels"]})
    assert dict(updated.labels) == {"app": "mlflow", "env": "prod"}
    assert dict(updated.annotations) == {}
    assert updated.etag != secret.etag
    with pytest.raises(exceptions.Conflict):
        sm.update_secret(secret=stale, update_mask={"paths": ["labels"]})
    with pytest.raises(exceptions.BadRequest):
        sm.update_secret(
            secret={"name": secret.name, "replication": {"user_managed": {"replicas": [{"location": "us-east1"}]}}},
            update_mask={"paths": ["replication"]},
        )
    with pytest.raises(exceptions.BadRequest):
        sm.update_secret(secret={"name": secret.name}, update_mask={"paths": []})


def test_iam_policy_etag_and_members(clients, enabled_project):
    sm = clients.secret_manager()
    secret = _secret(sm, enabled_project)
    policy = sm.get_iam_policy(request={"resource": secret.name, "options": {"requested_policy_version": 3}})
    stale = policy_pb2.Policy()
    stale.CopyFrom(policy)
    policy.bindings.add(role="roles/secretmanager.secretAccessor", members=["user:alice@example.com"])
    updated = sm.set_iam_policy(request={"resource": secret.name, "policy": policy})
    assert updated.etag != policy.etag
    assert sm.get_iam_policy(request={"resource": secret.name}).bindings[0].members == ["user:alice@example.com"]
    stale.bindings.add(role="roles/secretmanager.secretAccessor", members=["user:bob@example.com"])
    with pytest.raises(exceptions.Conflict, match="concurrent policy changes"):
        sm.set_iam_policy(request={"resource": secret.name, "policy": stale})

    ghost = f"ghost-sa@{enabled_project}.iam.gserviceaccount.com"
    current = sm.get_iam_policy(request={"resource": secret.name})
    current.bindings.add(role="roles/secretmanager.secretAccessor", members=[f"serviceAccount:{ghost}"])
    with pytest.raises(exceptions.BadRequest, match=f"Service account {ghost} does not exist"):
        sm.set_iam_policy(request={"resource": secret.name, "policy": current})

    wrong_role = sm.get_iam_policy(request={"resource": secret.name})
    wrong_role.bindings.add(role="roles/run.invoker", members=["user:alice@example.com"])
    with pytest.raises(exceptions.BadRequest, match="not supported for this resource"):
        sm.set_iam_policy(request={"resource": secret.name, "policy": wrong_role})

    granted = sm.test_iam_permissions(
        request={"resource": secret.name, "permissions": ["secretmanager.versions.access"]}
    )
    assert list(granted.permissions) == ["secretmanager.versions.access"]
    with pytest.raises(exceptions.NotFound):
        sm.get_iam_policy(request={"resource": f"projects/{enabled_project}/secrets/nope"})


def test_delete_removes_versions_and_policy(clients, enabled_project):
    sm = clients.secret_manager()
    secret = _secret(sm, enabled_project)
    _add(sm, secret.name, b"value")
    policy = sm.get_iam_policy(request={"resource": secret.name})
    policy.bindings.add(role="roles/secretmanager.secretAccessor", members=["user:alice@example.com"])
    sm.set_iam_policy(request={"resource": secret.name, "policy": policy})
    with pytest.raises(exceptions.Conflict):
        sm.delete_secret(request={"name": secret.name, "etag": '"stale"'})
    sm.delete_secret(name=secret.name)
    with pytest.raises(exceptions.NotFound):
        sm.get_secret(name=secret.name)
    with pytest.raises(exceptions.NotFound):
        sm.access_secret_version(name=f"{secret.name}/versions/1")
    again = _secret(sm, enabled_project)
    assert list(sm.list_secret_versions(parent=again.name)) == []
    assert list(sm.get_iam_policy(request={"resource": again.name}).bindings) == []
    assert _add(sm, again.name, b"fresh").name.endswith("/versions/1")


def test_cross_module_methods(emulator, clients, enabled_project):
    sm = clients.secret_manager()
    api = emulator.world.api("secretmanager")
    number = _number(clients, enabled_project)
    secret = _secret(sm, enabled_project)
    _add(sm, secret.name, b"one")
    _add(sm, secret.name, b"two")
    by_id = f"projects/{enabled_project}/secrets/db-password"
    assert api.resolve_version(f"{by_id}/versions/latest") == f"projects/{number}/secrets/db-password/versions/2"
    assert api.resolve_version(f"{secret.name}/versions/1") == f"projects/{number}/secrets/db-password/versions/1"
    assert api.access(f"{by_id}/versions/latest") == b"two"
    assert api.secret_policy_resource(secret.name) == by_id
    assert api.secret_policy_resource(f"{secret.name}/versions/2") == by_id
    sm.disable_secret_version(name=f"{secret.name}/versions/2")
    with pytest.raises(Exception, match="DISABLED") as err:
        api.access(f"{by_id}/versions/2")
    assert err.value.status == "FAILED_PRECONDITION"
    with pytest.raises(Exception, match="not found") as err:
        api.resolve_version(f"{by_id}/versions/9")
    assert err.value.status == "NOT_FOUND"

    member = f"serviceAccount:runner@{enabled_project}.iam.gserviceaccount.com"
    clients.iam().projects().serviceAccounts().create(
        name=f"projects/{enabled_project}", body={"accountId": "runner"}
    ).execute()
    assert not api.can_access(member, secret.name)
    policy = sm.get_iam_policy(request={"resource": secret.name})
    policy.bindings.add(role="roles/secretmanager.secretAccessor", members=[member])
    sm.set_iam_policy(request={"resource": secret.name, "policy": policy})
    assert api.can_access(member, by_id)
    assert not api.can_access("user:someone@example.com", by_id)
