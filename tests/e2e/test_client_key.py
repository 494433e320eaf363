"""`--create-client-key` (opt-in): a client service account with artifact access and its key, kept in Secret
Manager only; the account ends every run with exactly one user-managed key, the one in the secret."""

from __future__ import annotations

import dataclasses
import json

from google.oauth2 import service_account

from tests.e2e.conftest import Cli, kill_after

SECRET = "mlflow-dev-client-key"


def _account(cli: Cli) -> str:
    return f"projects/{cli.project}/serviceAccounts/mlflow-dev-client@{cli.project}.iam.gserviceaccount.com"


def _user_keys(clients, cli: Cli) -> list[str]:
    keys = clients.iam().projects().serviceAccounts().keys()
    listed = keys.list(name=_account(cli), keyTypes=["USER_MANAGED"]).execute().get("keys", [])
    return sorted(k["name"].rsplit("/", 1)[1] for k in listed)


def _held_key(clients, cli: Cli) -> dict:
    sm = clients.secret_manager()
    return json.loads(
        sm.access_secret_version(name=f"projects/{cli.project}/secrets/{SECRET}/versions/latest").payload.data
    )


def _state_text(cli: Cli) -> str:
    return "".join(p.read_text() for p in cli.state_dir.glob("*.json"))


def test_client_key_is_created_on_request_and_removed_with_the_stack(cli: Cli, clients):
    out = cli("up", "--create-client-key", "--json").json()
    assert {o["resource"]: o["action"] for o in out["outcomes"]}["client-key"] == "created"
    email = f"mlflow-dev-client@{cli.project}.iam.gserviceaccount.com"
    sm = clients.secret_manager()
    key = _held_key(clients, cli)
    credentials = service_account.Credentials.from_service_account_info(key)
    assert credentials.service_account_email == email
    assert _user_keys(clients, cli) == [key["private_key_id"]]
    policy = clients.storage(cli.project).bucket(f"{cli.project}-mlflow-dev").get_iam_policy(requested_policy_version=3)
    assert f"serviceAccount:{email}" in {m for b in policy.bindings for m in b["members"]}
    state = _state_text(cli)
    assert "PRIVATE KEY" not in state and "PRIVATE KEY" not in "".join(cli.transcript)
    assert json.loads(state)["resources"]["client-key"]["key_id"] == key["private_key_id"]

    again = cli("up", "--create-client-key", "--json").json()
    assert {o["resource"]: o["action"] for o in again["outcomes"]}["client-key"] == "unchanged"

    cli("down", "--delete-data", "--yes")
    iam = clients.iam()
    accounts = iam.projects().serviceAccounts().list(name=f"projects/{cli.project}").execute().get("accounts", [])
    assert accounts == []
    assert list(sm.list_secrets(parent=f"projects/{cli.project}")) == []


def _lose_the_key(clients, cli: Cli) -> None:
    """Back to a stack whose client account (and its bucket role) exists but has no key yet: where a run stands
    just before ``keys.create``. Every step before it is then unchanged, so the key's requests come in one order."""
    clients.secret_manager().delete_secret(name=f"projects/{cli.project}/secrets/{SECRET}")
    keys = clients.iam().projects().serviceAccounts().keys()
    for key_id in _user_keys(clients, cli):
        keys.delete(name=f"{_account(cli)}/keys/{key_id}").execute()


def test_a_key_created_by_a_killed_run_is_deleted_by_the_next(cli: Cli, admin, clients):
    cli("up", "--create-client-key")
    _lose_the_key(clients, cli)
    # An uninterrupted run from there: which of its mutating requests creates the key.
    start = len(admin.requests())
    cli("up", "--create-client-key")
    mutating = [e for e in admin.requests(start) if e["mutating"]]
    k = next(i for i, e in enumerate(mutating, 1) if e["route"] == "serviceAccounts.keys.create")
    _lose_the_key(clients, cli)

    # Killed right after Google made the key, before anything holds it: a key nobody has.
    start = len(admin.requests())
    kill_after(cli, admin, k, "up", "--create-client-key")
    killed = [e for e in admin.requests(start) if e.get("kill") == "kill"]
    assert [e["route"] for e in killed] == ["serviceAccounts.keys.create"]
    orphans = _user_keys(clients, cli)
    assert len(orphans) == 1

    out = cli("up", "--create-client-key", "--break-lock", "--json").json()
    assert {o["resource"]: o["action"] for o in out["outcomes"]}["client-key"] == "created"
    held = _held_key(clients, cli)["private_key_id"]
    assert _user_keys(clients, cli) == [held] and held not in orphans
    assert json.loads(_state_text(cli))["resources"]["client-key"]["key_id"] == held
    assert "PRIVATE KEY" not in _state_text(cli) and "PRIVATE KEY" not in "".join(cli.transcript)
    # `status` with the key configured: every resource ok, the client key's included (one key, the held one).
    configured = dataclasses.replace(cli, env={**cli.env, "MLFLOW_GCP_CREATE_CLIENT_KEY": "true"})
    assert configured("status").code == 0
    cli("down", "--delete-data", "--yes")
