"""IAM bindings: what is ours is what we recorded (or what the config asks for and the policy holds); we grant
what is missing and revoke only what we granted; everyone else's members stay, listed as unmanaged."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from google.api_core.iam import Policy

from mlflow_gcp.resources.iam import (
    BUCKET_READER_ROLE,
    BUCKET_RUNTIME_ROLE,
    SECRET_ROLE,
    BucketBindings,
    Plan,
    SecretBindings,
    _edit_proto,
    decode,
    encode,
    held,
    plan,
)

B = "gs://b"
RUNTIME = "serviceAccount:run@p.iam.gserviceaccount.com"
ALICE, TEAM, DOMAIN, CAROL = "user:alice@x.com", "group:team@x.com", "domain:x.com", "user:carol@x.com"
GONE = "deleted:serviceAccount:old@p.iam.gserviceaccount.com?uid=123"
ROLES = (BUCKET_RUNTIME_ROLE, BUCKET_READER_ROLE)


def g(member: str, role: str = BUCKET_READER_ROLE, target: str = B) -> tuple[str, str, str]:
    return (target, role, member)


def pairs(*grants: tuple[str, str, str]) -> set[tuple[str, str]]:
    return {(r, m) for _, r, m in grants}


# --- the pure plan -------------------------------------------------------------------------------------------


def test_grants_what_is_missing_and_revokes_only_what_we_recorded() -> None:
    wanted = {g(RUNTIME, BUCKET_RUNTIME_ROLE), g(DOMAIN)}
    recorded = {g(RUNTIME, BUCKET_RUNTIME_ROLE), g(ALICE), g(TEAM), g(DOMAIN)}
    live = {B: pairs(g(RUNTIME, BUCKET_RUNTIME_ROLE), g(ALICE), g(TEAM), g(CAROL))}
    p = plan(wanted, recorded, live, ROLES)
    assert p == Plan(add=frozenset({g(DOMAIN)}), remove=frozenset({g(ALICE), g(TEAM)}),
                     unmanaged=frozenset({g(CAROL)}))  # fmt: skip


def test_deleted_members_are_never_removed_nor_counted() -> None:
    recorded = {g(GONE), g(ALICE)}  # even a hand-edited state file cannot make one ours
    live = {B: pairs(g(GONE), g(ALICE))}
    p = plan(set(), recorded, live, ROLES)
    assert p.remove == {g(ALICE)} and p.unmanaged == frozenset()
    assert held({g(GONE)}, recorded, live) == {g(ALICE)}


def test_unmanaged_only_counts_the_roles_the_step_manages() -> None:
    live = {B: {("roles/storage.legacyBucketOwner", "projectOwner:p"), (BUCKET_READER_ROLE, CAROL)}}
    assert plan(set(), set(), live, ROLES).unmanaged == {g(CAROL)}


def test_a_revoke_that_landed_before_a_crash_drops_out_of_the_record() -> None:
    """Killed after the write, before the facts: the state still lists alice; she is gone from the policy."""
    recorded = {g(RUNTIME, BUCKET_RUNTIME_ROLE), g(ALICE)}
    wanted = {g(RUNTIME, BUCKET_RUNTIME_ROLE)}
    live = {B: pairs(g(RUNTIME, BUCKET_RUNTIME_ROLE))}
    p = plan(wanted, recorded, live, ROLES)
    assert (p.add, p.remove, p.unmanaged) == (frozenset(), frozenset(), frozenset())
    assert held(wanted, recorded, live) == wanted


def test_a_grant_that_landed_before_a_crash_is_ours_again() -> None:
    """In the policy and in the config, not yet recorded: ours (so a later config drop revokes it)."""
    wanted = {g(DOMAIN)}
    live = {B: pairs(g(DOMAIN))}
    assert plan(wanted, set(), live, ROLES) == Plan(frozenset(), frozenset(), frozenset())
    assert held(wanted, set(), live) == {g(DOMAIN)}
    assert plan(set(), held(wanted, set(), live), live, ROLES).remove == {g(DOMAIN)}


def test_a_missing_resource_has_everything_to_add_and_nothing_to_revoke() -> None:
    s1, s2 = "projects/p/secrets/a", "projects/p/secrets/b"
    wanted = {g(RUNTIME, SECRET_ROLE, s1), g(RUNTIME, SECRET_ROLE, s2)}
    live = {s1: pairs(g(RUNTIME, SECRET_ROLE, s1)), s2: None}
    p = plan(wanted, wanted, live, (SECRET_ROLE,))
    assert p.add == {g(RUNTIME, SECRET_ROLE, s2)} and p.remove == frozenset()
    assert held(wanted, wanted, live) == {g(RUNTIME, SECRET_ROLE, s1)}


def test_the_record_round_trips_through_json() -> None:
    grants = {g(DOMAIN), g(RUNTIME, BUCKET_RUNTIME_ROLE), g(RUNTIME, SECRET_ROLE, "projects/p/secrets/a")}
    encoded = json.loads(json.dumps(encode(grants)))
    assert encoded[B] == [f"{BUCKET_RUNTIME_ROLE} {RUNTIME}", f"{BUCKET_READER_ROLE} {DOMAIN}"]
    assert decode(encoded) == grants


def test_one_edit_adds_first_and_leaves_conditional_bindings_alone() -> None:
    from google.iam.v1 import policy_pb2
    from google.protobuf import json_format

    conditional = {"role": SECRET_ROLE, "members": [ALICE], "condition": {"expression": "true", "title": "t"}}
    policy = json_format.ParseDict(
        {"bindings": [conditional, {"role": SECRET_ROLE, "members": [ALICE, GONE]}], "etag": "CAE="},
        policy_pb2.Policy(),
    )
    assert _edit_proto(policy, add={(SECRET_ROLE, RUNTIME)}, remove={(SECRET_ROLE, ALICE)})
    body = json_format.MessageToDict(policy)
    assert body["bindings"][0] == conditional
    assert sorted(body["bindings"][1]["members"]) == sorted([RUNTIME, GONE])
    assert not _edit_proto(policy, add={(SECRET_ROLE, RUNTIME)}, remove={(SECRET_ROLE, ALICE)})


# --- through a step, with fake clients -----------------------------------------------------------------------


class _Bucket:
    """get/setIamPolicy of one bucket through google-cloud-storage's Policy, keeping every write."""

    def __init__(self, bindings: list[dict[str, Any]]) -> None:
        self.body: dict[str, Any] = {"bindings": bindings, "etag": "CAE=", "version": 1}
        self.writes: list[dict[str, Any]] = []

    def get_iam_policy(self, **_: Any) -> Policy:
        return Policy.from_api_repr(json.loads(json.dumps(self.body)))

    def set_iam_policy(self, policy: Policy) -> Policy:
        self.body = policy.to_api_repr()
        self.writes.append(self.body)
        return self.get_iam_policy()

    def members(self, role: str) -> set[str]:
        return {m for b in self.body["bindings"] if b["role"] == role for m in b["members"]}


def _ctx(state: dict[str, dict[str, Any]], users: list[str], clients: Any) -> Any:
    return SimpleNamespace(
        names=SimpleNamespace(project="p", bucket="b", runtime_account=RUNTIME.split(":", 1)[1], client_account="c@p",
                              prefix="m", secrets={"db-password": "m-db-password", "flask": "m-flask"}),
        config=SimpleNamespace(artifacts=SimpleNamespace(users=users), create_client_key=False),
        clients=clients,
        api=lambda what, fn, *a, retry_on=None, **k: fn(*a, **k),
        fact=lambda key, name, default=None: state.get(key, {}).get(name, default),
        granted=lambda member: None,  # (what waits out IAM propagation is not under test here)
    )  # fmt: skip


def _bucket_step(state: dict[str, Any], users: list[str], bucket: _Bucket) -> BucketBindings:
    return BucketBindings(_ctx(state, users, SimpleNamespace(storage=SimpleNamespace(bucket=lambda _: bucket))))


def _up(step: Any, state: dict[str, Any]) -> str:
    """What the engine does: find, diff, update when needed, then record the facts."""
    actual = step.find()
    changes = step.diff(actual)
    if changes:
        actual = step.update(actual, changes)
    state[step.key] = step.facts(actual)
    return "updated" if changes else "unchanged"


def test_bucket_members_dropped_from_the_config_are_revoked_and_others_stay() -> None:
    bucket = _Bucket([{"role": "roles/storage.legacyBucketOwner", "members": ["projectOwner:p"]}])
    state: dict[str, Any] = {}
    assert _up(_bucket_step(state, [ALICE, TEAM, DOMAIN], bucket), state) == "updated"
    assert bucket.members(BUCKET_READER_ROLE) == {ALICE, TEAM, DOMAIN}
    bucket.body["bindings"].append({"role": BUCKET_READER_ROLE, "members": [CAROL, GONE]})  # by hand

    step = _bucket_step(state, [DOMAIN], bucket)
    changes = step.diff(step.find())
    assert [(c.field, c.current, c.desired) for c in changes] == [
        (f"{BUCKET_READER_ROLE} for {TEAM}", "granted", "revoked"),
        (f"{BUCKET_READER_ROLE} for {ALICE}", "granted", "revoked"),
    ]
    assert step.facts(step.find())["unmanaged"] == [f"{BUCKET_READER_ROLE} for {CAROL}"]
    assert _up(step, state) == "updated"
    assert len(bucket.writes) == 2
    assert bucket.members(BUCKET_READER_ROLE) == {DOMAIN, CAROL, GONE}
    assert bucket.members(BUCKET_RUNTIME_ROLE) == {RUNTIME}
    assert bucket.members("roles/storage.legacyBucketOwner") == {"projectOwner:p"}
    assert state["iam:bucket"]["granted"] == {B: [f"{BUCKET_RUNTIME_ROLE} {RUNTIME}", f"{BUCKET_READER_ROLE} {DOMAIN}"]}
    assert _up(_bucket_step(state, [DOMAIN], bucket), state) == "unchanged"
    assert len(bucket.writes) == 2

    step = _bucket_step(state, [DOMAIN], bucket)
    step.delete(step.find())  # `down`: only ours go
    assert bucket.members(BUCKET_READER_ROLE) == {CAROL, GONE} and bucket.members(BUCKET_RUNTIME_ROLE) == set()


def test_a_state_written_before_grants_were_recorded_still_knows_ours() -> None:
    """Older state files recorded the wanted bindings as "bindings": that is what we granted then."""
    bucket = _Bucket([{"role": BUCKET_READER_ROLE, "members": [ALICE, CAROL]},
                      {"role": BUCKET_RUNTIME_ROLE, "members": [RUNTIME]}])  # fmt: skip
    state = {"iam:bucket": {"id": B, "bindings": [f"{BUCKET_READER_ROLE} {ALICE}", f"{BUCKET_RUNTIME_ROLE} {RUNTIME}"]}}
    assert _up(_bucket_step(state, [], bucket), state) == "updated"
    assert bucket.members(BUCKET_READER_ROLE) == {CAROL}
    assert state["iam:bucket"]["unmanaged"] == [f"{BUCKET_READER_ROLE} for {CAROL}"]


class _Secrets:
    """Secret Manager's get/setIamPolicy, one google.iam.v1 Policy per secret; a missing one is NOT_FOUND."""

    def __init__(self, names: list[str]) -> None:
        from google.iam.v1 import policy_pb2

        self.policies = {n: policy_pb2.Policy(etag=b"CAE=") for n in names}
        self.writes: list[str] = []

    def get_iam_policy(self, request: dict[str, Any]) -> Any:
        from google.api_core import exceptions
        from google.iam.v1 import policy_pb2

        if request["resource"] not in self.policies:
            raise exceptions.NotFound("no such secret")
        copy = policy_pb2.Policy()
        copy.CopyFrom(self.policies[request["resource"]])
        return copy

    def set_iam_policy(self, request: dict[str, Any]) -> Any:
        self.writes.append(request["resource"])
        self.policies[request["resource"]] = request["policy"]
        return request["policy"]


def test_secret_bindings_share_the_mechanism_one_edit_per_secret_that_needs_one() -> None:
    a, b = "projects/p/secrets/m-db-password", "projects/p/secrets/m-flask"
    secrets = _Secrets([a])
    state: dict[str, Any] = {}
    step = SecretBindings(_ctx(state, [], SimpleNamespace(secrets=secrets)))
    assert [c.field for c in step.diff(step.find())] == [
        f"{SECRET_ROLE} for {RUNTIME} on m-db-password",
        f"{SECRET_ROLE} for {RUNTIME} on m-flask",
    ]
    secrets.policies[b] = type(secrets.policies[a])(etag=b"CAE=")  # its step created it meanwhile
    assert _up(step, state) == "updated"
    assert sorted(secrets.writes) == [a, b]
    assert state["iam:secrets"]["granted"] == {a: [f"{SECRET_ROLE} {RUNTIME}"], b: [f"{SECRET_ROLE} {RUNTIME}"]}
    assert _up(step, state) == "unchanged" and len(secrets.writes) == 2


def test_no_secret_exists_yet_so_the_bindings_would_be_created() -> None:
    step = SecretBindings(_ctx({}, [], SimpleNamespace(secrets=_Secrets([]))))
    assert step.find() is None


@pytest.mark.parametrize("users", [[], [ALICE]])
def test_facts_never_hold_more_than_member_names(users: list[str]) -> None:
    bucket = _Bucket([])
    state: dict[str, Any] = {}
    _up(_bucket_step(state, users, bucket), state)
    assert set(state["iam:bucket"]) == {"id", "granted", "unmanaged"}
