"""`--create-client-key` (opt-in): a client service account with artifact access and its key, kept in Secret
Manager only."""

from __future__ import annotations

import json

from google.oauth2 import service_account

from tests.e2e.conftest import Cli


def test_client_key_is_created_on_request_and_removed_with_the_stack(cli: Cli, clients):
    out = cli("up", "--create-client-key", "--json").json()
    assert {o["resource"]: o["action"] for o in out["outcomes"]}["client-key"] == "created"
    email = f"mlflow-dev-client@{cli.project}.iam.gserviceaccount.com"
    sm = clients.secret_manager()
    secret = f"projects/{cli.project}/secrets/mlflow-dev-client-key"
    key = json.loads(sm.access_secret_version(name=f"{secret}/versions/latest").payload.data)
    credentials = service_account.Credentials.from_service_account_info(key)
    assert credentials.service_account_email == email
    policy = clients.storage(cli.project).bucket(f"{cli.project}-mlflow-dev").get_iam_policy(requested_policy_version=3)
    assert f"serviceAccount:{email}" in {m for b in policy.bindings for m in b["members"]}
    state = "".join(p.read_text() for p in cli.state_dir.glob("*.json"))
    assert "PRIVATE KEY" not in state and "PRIVATE KEY" not in "".join(cli.transcript)

    again = cli("up", "--create-client-key", "--json").json()
    assert {o["resource"]: o["action"] for o in again["outcomes"]}["client-key"] == "unchanged"

    cli("down", "--delete-data", "--yes")
    iam = clients.iam()
    accounts = iam.projects().serviceAccounts().list(name=f"projects/{cli.project}").execute().get("accounts", [])
    assert accounts == []
    assert list(sm.list_secrets(parent=f"projects/{cli.project}")) == []
