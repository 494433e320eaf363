"""IAM v1 through googleapiclient's discovery client: service accounts, keys, policies, eventual consistency."""

from __future__ import annotations

import base64
import json
import time

import pytest
from google.api_core import exceptions
from google.oauth2 import service_account
from googleapiclient.errors import HttpError


def _accounts(clients):
    return clients.iam().projects().serviceAccounts()


def _create(clients, project: str, account_id: str = "mlflow-runner", **fields) -> dict:
    body = {"accountId": account_id, "serviceAccount": fields}
    return _accounts(clients).create(name=f"projects/{project}", body=body).execute()


def _status(call) -> int:
    with pytest.raises(HttpError) as err:
        call.execute()
    return err.value.status_code


def test_service_disabled_until_enabled(clients, project):
    with pytest.raises(HttpError) as err:
        _create(clients, project)
    assert err.value.status_code == 403
    assert err.value.error_details[0]["reason"] == "SERVICE_DISABLED"
    assert "Identity and Access Management (IAM) API has not been used" in err.value.reason


def test_create_get_list_patch_delete(clients, enabled_project):
    sas = _accounts(clients)
    sa = _create(clients, enabled_project, displayName="MLflow", description="runs the server")
    email = f"mlflow-runner@{enabled_project}.iam.gserviceaccount.com"
    assert sa["email"] == email
    assert sa["name"] == f"projects/{enabled_project}/serviceAccounts/{email}"
    assert sa["projectId"] == enabled_project and sa["displayName"] == "MLflow"
    assert sa["uniqueId"].isdigit() and sa["oauth2ClientId"] == sa["uniqueId"] and sa["etag"]

    # By email or unique id, under the project or the `-` wildcard.
    for name in (
        sa["name"],
        f"projects/-/serviceAccounts/{email}",
        f"projects/{enabled_project}/serviceAccounts/{sa['uniqueId']}",
        f"projects/-/serviceAccounts/{sa['uniqueId']}",
    ):
        assert sas.get(name=name).execute()["email"] == email
    assert [a["email"] for a in sas.list(name=f"projects/{enabled_project}").execute()["accounts"]] == [email]

    patched = sas.patch(
        name=sa["name"], body={"serviceAccount": {"displayName": "Renamed"}, "updateMask": "displayName"}
    ).execute()
    # GCP answers a patch with the name and the masked fields only (recorded: iam-serviceaccount.log).
    assert patched == {"name": sa["name"], "displayName": "Renamed"}
    got = sas.get(name=sa["name"]).execute()
    assert got["displayName"] == "Renamed" and got["description"] == "runs the server"
    assert got["etag"] != sa["etag"]
    stale = {"serviceAccount": {"displayName": "X", "etag": sa["etag"]}, "updateMask": "displayName"}
    assert _status(sas.patch(name=sa["name"], body=stale)) == 409
    assert _status(sas.patch(name=sa["name"], body={"serviceAccount": {"email": "x"}, "updateMask": "email"})) == 400

    sas.delete(name=sa["name"]).execute()
    assert _status(sas.get(name=sa["name"])) == 404
    # Under the wildcard, GCP cannot tell "absent" from "not yours": 403.
    assert _status(sas.get(name=f"projects/-/serviceAccounts/{email}")) == 403
    assert sas.list(name=f"projects/{enabled_project}").execute() == {}
    recreated = _create(clients, enabled_project)
    assert recreated["uniqueId"] != sa["uniqueId"]


def test_duplicate_is_conflict(clients, enabled_project):
    _create(clients, enabled_project)
    with pytest.raises(HttpError) as err:
        _create(clients, enabled_project)
    assert err.value.status_code == 409
    assert "already exists" in err.value.reason


@pytest.mark.parametrize(
    "account_id", ["short", "a" * 31, "1starts-with-digit", "ends-with-dash-", "Upper-case", "under_score"]
)
def test_invalid_account_ids_are_refused(clients, enabled_project, account_id):
    assert _status(_accounts(clients).create(name=f"projects/{enabled_project}", body={"accountId": account_id})) == 400


def test_unknown_body_field_is_rejected(clients, enabled_project):
    with pytest.raises(HttpError) as err:
        _accounts(clients).create(
            name=f"projects/{enabled_project}", body={"accountId": "mlflow-runner", "bogus": 1}
        ).execute()
    assert err.value.status_code == 400 and 'Unknown name "bogus"' in err.value.reason


def test_keys_create_list_get_delete(clients, enabled_project):
    sa = _create(clients, enabled_project)
    keys = _accounts(clients).keys()
    key = keys.create(name=sa["name"], body={}).execute()
    assert key["name"].startswith(f"{sa['name']}/keys/")
    assert "publicKeyData" not in key  # only keys.get returns it (recorded: iam-serviceaccountkey.log)
    assert key["keyType"] == "USER_MANAGED" and key["privateKeyType"] == "TYPE_GOOGLE_CREDENTIALS_FILE"
    info = json.loads(base64.b64decode(key["privateKeyData"]))
    assert info["type"] == "service_account" and info["client_email"] == sa["email"]
    assert info["private_key_id"] == key["name"].rsplit("/", 1)[1]
    # A real RSA key: google-auth loads and signs with it.
    creds = service_account.Credentials.from_service_account_info(info)
    assert len(creds.signer.sign(b"payload")) == 256

    listed = keys.list(name=sa["name"]).execute()["keys"]
    assert [k["name"] for k in listed] == [key["name"]]
    assert all("privateKeyData" not in k for k in listed)
    got = keys.get(name=key["name"], publicKeyType="TYPE_X509_PEM_FILE").execute()
    assert base64.b64decode(got["publicKeyData"]).startswith(b"-----BEGIN CERTIFICATE-----")
    assert "privateKeyData" not in got
    assert keys.list(name=sa["name"], keyTypes="SYSTEM_MANAGED").execute() == {}

    keys.delete(name=key["name"]).execute()
    assert _status(keys.get(name=key["name"])) == 404
    assert keys.list(name=sa["name"]).execute() == {}


def test_deleting_the_account_deletes_its_keys(clients, enabled_project):
    sa = _create(clients, enabled_project)
    keys = _accounts(clients).keys()
    keys.create(name=sa["name"], body={}).execute()
    _accounts(clients).delete(name=sa["name"]).execute()
    again = _create(clients, enabled_project)
    assert keys.list(name=again["name"]).execute() == {}


def test_account_policy_etag(clients, enabled_project):
    sa = _create(clients, enabled_project)
    sas = _accounts(clients)
    policy = sas.getIamPolicy(resource=sa["name"]).execute()
    fresh = {**policy, "bindings": [{"role": "roles/iam.serviceAccountUser", "members": ["user:alice@example.com"]}]}
    updated = sas.setIamPolicy(resource=sa["name"], body={"policy": fresh}).execute()
    assert updated["etag"] != policy["etag"]
    stale = {**policy, "bindings": [{"role": "roles/iam.serviceAccountUser", "members": ["user:bob@example.com"]}]}
    with pytest.raises(HttpError) as err:
        sas.setIamPolicy(resource=sa["name"], body={"policy": stale}).execute()
    assert err.value.status_code == 409 and "concurrent policy changes" in err.value.reason


def test_policy_member_must_exist(clients, enabled_project):
    rm = clients.projects()
    resource = f"projects/{enabled_project}"
    ghost = f"ghost-account@{enabled_project}.iam.gserviceaccount.com"
    policy = rm.get_iam_policy(request={"resource": resource})
    policy.bindings.add(role="roles/cloudsql.client", members=[f"serviceAccount:{ghost}"])
    with pytest.raises(exceptions.BadRequest, match=f"Service account {ghost} does not exist"):
        rm.set_iam_policy(request={"resource": resource, "policy": policy})
    _create(clients, enabled_project, "ghost-account")
    rm.set_iam_policy(request={"resource": resource, "policy": policy})


def test_new_account_is_invisible_for_a_while(emulator, clients, enabled_project, admin):
    window = 1.5
    # The APIs were just enabled: keep SERVICE_DISABLED propagation out of this test.
    admin.settings(consistency=True, service_account_invisible_seconds=window, service_enable_seconds=0)
    sas = _accounts(clients)
    rm = clients.projects()
    created_at = time.monotonic()
    sa = _create(clients, enabled_project)  # create itself succeeds at once
    member = f"serviceAccount:{sa['email']}"
    api = emulator.world.api("iam")
    assert api.service_account_exists(sa["email"]) and not api.service_account_visible(sa["email"])
    # GET answers 403, not 404, and the account is missing from lists.
    assert _status(sas.get(name=sa["name"])) == 403
    assert sas.list(name=f"projects/{enabled_project}").execute() == {}
    policy = rm.get_iam_policy(request={"resource": f"projects/{enabled_project}"})
    policy.bindings.add(role="roles/secretmanager.secretAccessor", members=[member])
    with pytest.raises(exceptions.BadRequest, match="does not exist"):
        rm.set_iam_policy(request={"resource": f"projects/{enabled_project}", "policy": policy})

    time.sleep(max(0.0, window - (time.monotonic() - created_at)) + 0.1)
    assert api.service_account_visible(sa["email"])
    assert sas.get(name=sa["name"]).execute()["email"] == sa["email"]
    updated = rm.set_iam_policy(request={"resource": f"projects/{enabled_project}", "policy": policy})
    assert member in {m for b in updated.bindings for m in b.members}


def test_cross_module_existence(emulator, clients, enabled_project):
    api = emulator.world.api("iam")
    email = f"mlflow-runner@{enabled_project}.iam.gserviceaccount.com"
    assert not api.service_account_exists(email) and not api.service_account_visible(email)
    _create(clients, enabled_project)
    assert api.service_account_exists(email) and api.service_account_visible(email)
    number = clients.projects().get_project(name=f"projects/{enabled_project}").name.split("/")[1]
    # Google-managed accounts exist with their project.
    assert api.service_account_exists(f"{number}-compute@developer.gserviceaccount.com")
    assert api.service_account_visible(f"service-{number}@gcp-sa-secretmanager.iam.gserviceaccount.com")
    assert not api.service_account_exists("999-compute@developer.gserviceaccount.com")


def test_deleted_account_stays_in_policies_as_deleted(clients, enabled_project, emulator):
    # GCP rewrites a deleted account's grants to `deleted:serviceAccount:EMAIL?uid=N` (recorded:
    # tests/golden/recordings/project-iam-and-serviceaccount.log).
    import requests

    sa = _create(clients, enabled_project)
    url = f"{emulator.base_url}/resourcemanager/v1/projects/{enabled_project}"
    policy = requests.post(f"{url}:getIamPolicy", json={}, timeout=5).json()
    member = f"serviceAccount:{sa['email']}"
    policy["bindings"].append({"role": "roles/viewer", "members": [member]})
    assert requests.post(f"{url}:setIamPolicy", json={"policy": policy}, timeout=5).status_code == 200
    _accounts(clients).delete(name=sa["name"]).execute()
    members = {
        m for b in requests.post(f"{url}:getIamPolicy", json={}, timeout=5).json()["bindings"] for m in b["members"]
    }
    assert member not in members
    assert f"deleted:{member}?uid={sa['uniqueId']}" in members
    # A new account of the same name does not inherit the grant.
    _create(clients, enabled_project)
    members = {
        m for b in requests.post(f"{url}:getIamPolicy", json={}, timeout=5).json()["bindings"] for m in b["members"]
    }
    assert member not in members


def test_account_deletion_and_policy_writes_take_their_locks_in_one_order(emulator, enabled_project):
    """Deleting an account rewrites every policy while it holds the store's lock (serviceAccounts.delete), and a
    policy write holds the policies' lock while it stores (setIamPolicy). When those were two locks, taken in
    opposite orders, the emulator hung (seen in a `down`). Here both paths hold their first lock at once (a
    barrier; it gives up after a second when the first locks are one and the same) and each must finish."""
    import threading

    world = emulator.world
    barrier = threading.Barrier(2, timeout=1)
    resource = f"projects/{enabled_project}"

    def meet() -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass  # the other path waits for this one's lock: there is no way to deadlock

    def deleting() -> None:
        with world.store.lock:
            meet()
            world.iam.principal_deleted("serviceAccount:gone@example.iam.gserviceaccount.com", "1")

    def writing() -> None:
        with world.iam._lock:
            meet()
            world.iam.set(resource, world.iam.get(resource))

    threads = [threading.Thread(target=f, daemon=True) for f in (deleting, writing)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert not any(t.is_alive() for t in threads), "the emulator deadlocked"
