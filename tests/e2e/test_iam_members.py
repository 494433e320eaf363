"""Least privilege that stays least: `up` revokes the IAM members it granted once the config drops them, leaves
members someone else added alone (`status` shows them as not managed), never takes a role away from the runtime
account on the way, and a run killed right after its policy write loses nothing. Through the real CLI and the
emulator; one deployment shared by the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin
from tests.e2e.conftest import Cli, kill_after, make_cli, mutations_during

ALICE, TEAM, DOMAIN = "user:alice@example.com", "group:team@example.com", "domain:example.com"
DAVE, ERIN = "user:dave@example.com", "user:erin@example.com"
CAROL = "user:carol@example.com"  # added by hand
READER = "roles/storage.objectViewer"


def _users(cli: Cli, *members: str) -> None:
    """Config through the environment: lists are comma-separated."""
    cli.env["MLFLOW_GCP_ARTIFACTS_USERS"] = ",".join(members)


def _bucket(cli: Cli) -> str:
    return f"{cli.project}-mlflow-dev"


def _readers(clients: Clients, cli: Cli) -> set[str]:
    policy = clients.storage(cli.project).bucket(_bucket(cli)).get_iam_policy(requested_policy_version=3)
    return {m for b in policy.bindings if b["role"] == READER for m in b["members"]}


def _recorded(cli: Cli) -> dict[str, Any]:
    (path,) = cli.state_dir.glob("*.json")
    return json.loads(path.read_text())["resources"]["iam:bucket"]


@pytest.fixture(scope="module")
def deployed(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = make_cli(emulator, tmp_path_factory.mktemp("iam-members"))
    _users(cli, ALICE, TEAM, DOMAIN)
    cli("up")
    return cli


@pytest.fixture
def runtime_role_writes(emulator: Emulator, deployed: Cli) -> Iterator[list[tuple[str, set[str], set[str]]]]:
    """Every policy the emulator stores while the test runs, as (resource, the runtime account's roles before,
    after): the sequence of policies GCP would have seen."""
    iam = emulator.world.iam
    runtime = f"serviceAccount:mlflow-dev-run@{deployed.project}.iam.gserviceaccount.com"
    original = iam.set
    writes: list[tuple[str, set[str], set[str]]] = []

    def roles(policy: dict[str, Any]) -> set[str]:
        return {b["role"] for b in policy.get("bindings", []) if runtime in b.get("members", [])}

    def spy(resource: str, policy: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        before = roles(iam.get(resource))
        stored = original(resource, policy, **kwargs)
        writes.append((resource, before, roles(stored)))
        return stored

    iam.set = spy  # type: ignore[method-assign]
    try:
        yield writes
    finally:
        iam.set = original  # type: ignore[method-assign]


def test_dropped_members_are_revoked_and_others_stay(deployed: Cli, admin: EmulatorAdmin, clients: Clients,
                                                     emulator: Emulator, runtime_role_writes) -> None:  # fmt: skip
    cli = deployed
    bucket_policy = emulator.world.apis["storage"].policy_resource(_bucket(cli))
    assert _readers(clients, cli) == {ALICE, TEAM, DOMAIN}
    assert sorted(_recorded(cli)["granted"][f"gs://{_bucket(cli)}"]) == sorted(
        [f"{READER} {m}" for m in (ALICE, TEAM, DOMAIN)]
        + [f"roles/storage.objectUser serviceAccount:mlflow-dev-run@{cli.project}.iam.gserviceaccount.com"]
    )

    # --- someone adds a member by hand (and a deleted account's leftover, which is nobody's) ----------------
    gone = f"deleted:serviceAccount:old@{cli.project}.iam.gserviceaccount.com?uid=1234567890"
    bucket = clients.storage(cli.project).bucket(_bucket(cli))
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": READER, "members": {CAROL, gone}})
    bucket.set_iam_policy(policy)

    status = cli("status", "--json")
    row = {r["resource"]: r for r in status.json()["resources"]}["iam:bucket"]
    assert (row["state"], row["drifted_fields"], row["unmanaged"]) == ("ok", [], [f"{READER} for {CAROL}"])

    # --- the config drops the user and the group, and adds another user: drift shows only our changes ------
    _users(cli, DOMAIN, DAVE)
    drift = cli("status", "--json", check=False)
    assert drift.code == 7
    row = {r["resource"]: r for r in drift.json()["resources"]}["iam:bucket"]
    assert row["state"] == "drifted" and row["unmanaged"] == [f"{READER} for {CAROL}"]
    assert sorted(row["drifted_fields"]) == sorted(
        [f"{READER} for {DAVE}: 'absent' -> 'granted'", f"{READER} for {ALICE}: 'granted' -> 'revoked'",
         f"{READER} for {TEAM}: 'granted' -> 'revoked'"]
    )  # fmt: skip

    start = len(runtime_role_writes)
    out = cli("up", "--json").json()
    actions = {o["resource"]: o["action"] for o in out["outcomes"]}
    assert actions["iam:bucket"] == "updated"
    assert {k for k, a in actions.items() if a != "unchanged"} == {"iam:bucket"}
    assert _readers(clients, cli) == {DOMAIN, DAVE, CAROL, gone}
    # Grant and revoke in one write, and the runtime account never lost a role in any policy written.
    writes = runtime_role_writes[start:]
    assert [w[0] for w in writes] == [bucket_policy]
    assert all(before <= after for _, before, after in writes), writes
    assert writes[0][2] == {"roles/storage.objectUser"}
    assert f"{READER} {ALICE}" not in _recorded(cli)["granted"][f"gs://{_bucket(cli)}"]

    # --- status: all well, the hand-added member shown as not managed --------------------------------------
    report = cli("status", "--json").json()
    row = {r["resource"]: r for r in report["resources"]}["iam:bucket"]
    assert (row["state"], row["drifted_fields"], row["unmanaged"]) == ("ok", [], [f"{READER} for {CAROL}"])
    assert all(r["unmanaged"] == [] for r in report["resources"] if r["resource"] != "iam:bucket")
    text = cli("status")
    assert text.code == 0 and f"not managed by mlflow-gcp: {READER} for {CAROL}" in text.stdout
    assert gone not in text.stdout

    # --- and once converged, `up` changes nothing -----------------------------------------------------------
    assert mutations_during(admin, lambda: cli("up")) == []
    assert _readers(clients, cli) == {DOMAIN, DAVE, CAROL, gone}


def test_a_run_killed_right_after_its_policy_write_loses_nothing(deployed: Cli, admin: EmulatorAdmin,
                                                                 clients: Clients) -> None:  # fmt: skip
    """Facts are recorded only after the write: killed in between, the state still lists what was revoked, and
    the next run sees it gone (and the new member, in the policy and in the config, as ours)."""
    cli = deployed
    _users(cli, DOMAIN, ERIN)  # grants erin; revokes dave if the first test ran
    before = _recorded(cli)["granted"]
    start = len(admin.requests())
    kill_after(cli, admin, 1, "up")
    (write,) = [e for e in admin.requests(start) if e["mutating"]]
    assert write["route"] == "buckets.setIamPolicy"
    assert _recorded(cli)["granted"] == before  # nothing recorded: killed before the write returned
    assert ERIN in _readers(clients, cli) and DAVE not in _readers(clients, cli)

    assert mutations_during(admin, lambda: cli("up", "--break-lock")) == []
    granted = _recorded(cli)["granted"][f"gs://{_bucket(cli)}"]
    assert f"{READER} {ERIN}" in granted and f"{READER} {DAVE}" not in granted and f"{READER} {CAROL}" not in granted

    # Dropped again: the recovered record is what lets `up` revoke it.
    _users(cli, DOMAIN)
    assert [e["route"] for e in mutations_during(admin, lambda: cli("up"))] == ["buckets.setIamPolicy"]
    assert ERIN not in _readers(clients, cli) and DOMAIN in _readers(clients, cli)
