"""A converged stack costs one wave of reads: a no-op `up` changes nothing, reads each object once, and makes those
reads at once (issue 14, goal 3). After drift behind its back, the next `up` still repairs it (the steps downstream of
a change read again) and the one after it is a no-op again.

The emulator's request log gives each call's start and latency; with every call slowed to a control-plane round trip
(the realistic latency profile, scaled up so that the rounds stand apart even on a loaded machine), calls made at
once overlap and calls made one after another do not."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.cloud.secretmanager_v1 import SecretVersion

from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin, request_rounds
from tests.e2e.conftest import Cli

#: Each call takes 0.08 s x this (emulator core/control.py REALISTIC_SECONDS["request"]): 2 s, longer than a busy
#: 2-core machine takes to start the wave's threads and build their clients (up to 1 s seen at a load of 11).
SLOW = 25.0


def calls_during(admin: EmulatorAdmin, action: Callable[[], Any]) -> list[dict[str, Any]]:
    """Google API calls (not the local Docker daemon's ping, with which the `auto` builder sees it is there)."""
    start = len(admin.requests())
    action()
    return [c for c in admin.requests(start) if c["api"] != "docker"]


def read_twice(calls: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """Objects read more than once (a call's query string only selects fields and encodings)."""
    reads = Counter((c["route"], c["path"].split("?", 1)[0]) for c in calls if not c["mutating"])
    return {key: n for key, n in reads.items() if n > 1}


def test_a_noop_up_reads_each_object_once_in_one_wave_and_drift_is_still_repaired(
    cli: Cli, admin: EmulatorAdmin, clients: Clients
):
    steps = len(cli("up", "--json").json()["outcomes"])

    admin.settings(latency_profile="realistic", time_scale=SLOW)
    noop: list[Any] = []
    calls = calls_during(admin, lambda: noop.append(cli("up", "--json").json()))
    assert {o["action"] for o in noop[0]["outcomes"]} == {"unchanged"}
    assert [c for c in calls if c["mutating"]] == []
    assert read_twice(calls) == {}
    # One read per step, but for the secrets' policies (one each: no API reads several) and the credential the
    # serving check logs in with.
    assert len(calls) <= steps + 5, Counter(c["route"] for c in calls)
    # Three rounds: the project check, every step's read at once, the serving check's read of the admin password.
    grouped = [[c["route"] for c in r] for r in request_rounds(calls)]
    assert [len(r) for r in grouped] == [1, len(calls) - 2, 1], grouped
    assert grouped[0] == ["projects.get"] and grouped[2] == ["versions.access"], grouped
    admin.settings(latency_profile="instant", time_scale=1.0)

    # Drift behind the tool's back on reads two steps share or that have a fallback: the pinned version of a secret
    # disabled (a new one is added, and Cloud Run pins it), and the runtime account's access to another secret gone.
    sm = clients.secret_manager()
    secrets = f"projects/{cli.project}/secrets"
    for v in sm.list_secret_versions(parent=f"{secrets}/mlflow-dev-flask-secret-key"):
        if v.state == SecretVersion.State.ENABLED:
            sm.disable_secret_version(name=v.name)
    policy = sm.get_iam_policy(request={"resource": f"{secrets}/mlflow-dev-db-password"})
    for binding in policy.bindings:
        ours = [m for m in binding.members if m.startswith("serviceAccount:mlflow-dev-run@")]
        for member in ours:
            binding.members.remove(member)
    sm.set_iam_policy(request={"resource": f"{secrets}/mlflow-dev-db-password", "policy": policy})

    repaired = {o["resource"]: o for o in cli("up", "--json").json()["outcomes"]}
    assert repaired["secret:flask-secret-key"]["action"] == "updated"
    assert repaired["iam:secrets"]["action"] == "updated"
    assert repaired["run"]["action"] == "updated"  # downstream of the new version: read again, and redeployed
    assert [c["path"] for c in calls_during(admin, lambda: cli("up")) if c["mutating"]] == []
    assert cli("status").code == 0
