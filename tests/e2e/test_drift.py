"""Drift on every owned field, generated from the resources' own declarations (fields.py): each field is changed
behind the tool's back through the API, `status` names it (exit 7), `up` repairs it, and a second `up` makes no
mutating request.

The fields are walked in rounds: round i changes the i-th driftable field of every resource at once (one `status`
and two `up` per round). The default run takes round 0 and the rounds that reach Cloud Run's environment;
`pytest -m slow` takes every round, so every owned field of every resource is walked."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions

from mlflow_gcp.engine import Change, Engine
from mlflow_gcp.fields import Owned
from mlflow_gcp.server_logs import RevisionFailed
from tests.e2e.conftest import Cli, make_cli, mutations_during

# Fields that cannot drift behind the tool's back, and why (refused changes are tested by test_refusals).
NOT_DRIFTABLE = {
    "settings.dataDiskSizeGb": "a disk never shrinks; the tool only grows it (mode grow_only)",
    "enabled": "the enabled APIs: disabling one behind the tool's back is tested by test_stack's dry runs",
    "password (secret version)": "Cloud SQL never shows a password: the tool's record of it cannot drift",
    "enabled version": "a secret losing its enabled version is a deletion of versions, tested in test_rotate",
    "settings.edition": "it cannot change alone: Enterprise Plus refuses every tier Enterprise offers",
    "settings.ipConfiguration.ipv4Enabled": "without a private network GCP refuses an instance with no IP at all",
    "template.service_account": "Cloud Run does not deploy a revision whose account may not read the pinned secrets "
    "(or that the caller may not act as): it cannot drift and still serve",
    "value (pinned version)": "a secret version never changes; a new admin name in the configuration is tested below",
}
# Valid other values for fields whose type alone does not give one.
OTHER_VALUE: dict[str, Any] = {
    "storageClass": "NEARLINE",
    "iamConfiguration.publicAccessPrevention": "inherited",
    "description": "someone else's description",
    "displayName": "renamed in the console",
    "settings.backupConfiguration.transactionLogRetentionDays": 3,
    "container.image": "us-docker.pkg.dev/cloudrun/container/hello",  # Google's sample: it exists everywhere
    "settings.tier": "db-g1-small",
    "settings.availabilityType": "REGIONAL",
    "settings.backupConfiguration.startTime": "05:00",
    "settings.ipConfiguration.sslMode": "ALLOW_UNENCRYPTED_AND_ENCRYPTED",
    "settings.ipConfiguration.authorizedNetworks": [{"name": "someone", "value": "198.51.100.0/24"}],
    "client": "gcloud",
    "client_version": "0.0.0",
    "ingress": 3,  # INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER
    "container.resources.limits": {"cpu": "2", "memory": "2Gi"},
    "container.ports": [("http1", 8080)],
    "container.startup_probe": {"tcp_socket": {"port": 8080}, "period_seconds": 10},
    "lifecycle.rule": [{"action": {"type": "Delete"}, "condition": {"age": 30}}],
    "softDeletePolicy.retentionDurationSeconds": 0,  # someone turned soft delete off to save on storage
}
# The server must keep serving through the walk: changes that would stop it are walked with the slow sweep only.
STOPS_THE_SERVER = (
    "container.image", "container.env.", "container.ports", "container.volume_mounts", "template.volumes",
)  # fmt: skip


def _other(f: Owned) -> Any:
    if f.path in OTHER_VALUE:
        return OTHER_VALUE[f.path]
    if f.path == "container.env (no longer used)":
        return ["MLFLOW_GCP_LEFT_OVER"]
    if f.mode == "labels":
        return {k: f"{v}-drifted" for k, v in dict(f.desired).items()}
    if isinstance(f.desired, bool):
        return not f.desired
    if isinstance(f.desired, int):
        return f.desired + 1
    if f.path.startswith("container.env."):
        return "drifted"
    if f.path.startswith("template.volumes"):
        return [*f.desired, f.desired[0].rsplit(":", 1)[0] + ":someone-elses-db"]
    if f.path.startswith("container.volume_mounts"):
        return "/elsewhere"
    raise AssertionError(f"no other value for owned field {f.path}: add it to OTHER_VALUE or NOT_DRIFTABLE")


def _driftable(resource: Any) -> list[Owned]:
    return [f for f in resource.owned_fields() if f.mode not in ("refuse", "grow_only") and f.path not in NOT_DRIFTABLE]


@contextlib.contextmanager
def _context(cli: Cli) -> Iterator[Any]:
    """The tool's own resources for this deployment, in-process, with every fact a dry run publishes."""
    from mlflow_gcp.cli.app import App
    from mlflow_gcp.stack import resources

    saved = dict(os.environ)
    os.environ["MLFLOW_GCP_EMULATOR_URL"] = cli.env["MLFLOW_GCP_EMULATOR_URL"]
    try:
        app = App({"local": True, "project": cli.project, "state": str(cli.state_dir)}, {}, 0)
        with app.session("drift test", lock=False) as ctx:
            steps = resources(ctx)
            Engine(ctx).apply(steps, dry_run=True)
            yield ctx, {r.key: r for r in steps}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _left_over_variable(service: Any, value: Any) -> None:
    """The drift of "env (no longer used)": a variable of ours the server does not use (an older tool's)."""
    from mlflow_gcp.resources.run import _container, _env_writer

    _env_writer("MLFLOW_GCP_LEFT_OVER")(_container(service), "1")


# Changes GCP accepts only together with another (backups off needs point-in-time recovery off).
COMPANIONS: dict[str, dict[str, Any]] = {
    "settings.backupConfiguration.enabled": {"settings.backupConfiguration.pointInTimeRecoveryEnabled": False},
}


def _drift(resource: Any, f: Owned) -> None:
    """Write another value of ``f`` through the API with the resource's own writer and update mask (so exactly the
    API field the tool owns), as another tool or a person in the console would."""
    wrong = {f.path: _other(f), **COMPANIONS.get(f.path, {})}
    write = _left_over_variable if f.path == "container.env (no longer used)" else f.write
    original = resource.owned_fields

    def drifted(*args: Any, **kwargs: Any) -> list[Owned]:
        return [
            dataclasses.replace(g, desired=wrong[g.path], write=write if g.path == f.path else g.write)
            if g.path in wrong
            else g
            for g in original(*args, **kwargs)
        ]

    resource.owned_fields = drifted
    try:
        resource.update(resource.find(), [Change(path, None, value) for path, value in wrong.items()])
    except (exceptions.FailedPrecondition, RevisionFailed) as exc:
        # A server that cannot start with the drifted value: Cloud Run keeps serving the last ready revision and
        # the service's template holds the change all the same, which is the drift to find and repair.
        assert "not ready" in str(exc) or "did not become ready" in str(exc), exc
    finally:
        resource.owned_fields = original


@pytest.fixture(scope="module")
def deployed(emulator, tmp_path_factory) -> Cli:
    cli = make_cli(emulator, tmp_path_factory.mktemp("drift"))
    # With Cloud Build, so that its staging bucket and build account are walked too (later runs keep the builder).
    cli("up", "--builder", "cloudbuild")
    return cli


def _rounds(deployed: Cli) -> list[list[tuple[str, str]]]:
    with _context(deployed) as (_, steps):
        fields_of = {key: [f.path for f in _driftable(r)] for key, r in steps.items()}
    depth = max(len(v) for v in fields_of.values())
    return [[(k, paths[i]) for k, paths in fields_of.items() if i < len(paths)] for i in range(depth)]


def _walk(deployed: Cli, admin, chosen: list[tuple[str, str]]) -> None:
    with _context(deployed) as (_, steps):
        for key, path in chosen:
            f = next(g for g in _driftable(steps[key]) if g.path == path)
            _drift(steps[key], f)
    status = deployed("status", "--json", check=False)
    assert status.code == 7, status.stdout
    report = {r["resource"]: r for r in status.json()["resources"]}
    for key, path in chosen:
        named = [d for d in report[key]["drifted_fields"] if d.startswith(path.replace(" (no longer used)", ""))]
        assert report[key]["state"] == "drifted" and named, f"{key} {path}: {report[key]}"
    deployed("up")
    assert mutations_during(admin, lambda: deployed("up")) == [], f"after repairing {chosen}"
    assert deployed("status").code == 0


def test_every_owned_field_has_a_way_to_drift(deployed):
    """The generated walk covers every owned field: each is driftable with a known other value, or exempt."""
    with _context(deployed) as (_, steps):
        for key, resource in steps.items():
            for f in resource.owned_fields():
                if f.mode in ("refuse", "grow_only") or f.path in NOT_DRIFTABLE:
                    continue
                assert _other(f) != f.desired, f"{key} {f.path}"


def test_drift_of_one_field_per_resource_is_named_and_repaired(deployed, admin):
    rounds = _rounds(deployed)
    _walk(deployed, admin, [(k, p) for k, p in rounds[0] if not p.startswith(STOPS_THE_SERVER)])


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_drift_of_every_owned_field_is_named_and_repaired(deployed, admin):
    for chosen in _rounds(deployed):
        _walk(deployed, admin, chosen)


def test_a_new_admin_name_in_the_configuration_is_a_change(deployed, admin):
    env = {**deployed.env, "MLFLOW_GCP_SERVER_ADMIN_USERNAME": "ops-admin"}
    changed = Cli(deployed.project, deployed.state_dir, env, deployed.transcript)
    status = changed("status", "--json", check=False)
    report = {r["resource"]: r for r in status.json()["resources"]}
    assert status.code == 7 and report["secret:admin-username"]["drifted_fields"] == [
        "value (pinned version): 'admin' -> 'ops-admin'"
    ], report["secret:admin-username"]


def test_the_artifacts_soft_delete_retention_is_set_and_follows_the_configuration(deployed, admin, clients):
    gcs = clients.storage(deployed.project)
    bucket = f"{deployed.project}-mlflow-dev"
    assert gcs.get_bucket(bucket).soft_delete_policy.retention_duration_seconds == 7 * 24 * 3600
    assert deployed("status", "--json").json()["artifacts"] == {"bucket": f"gs://{bucket}", "soft_delete_days": 7}

    env = {**deployed.env, "MLFLOW_GCP_ARTIFACTS_SOFT_DELETE_DAYS": "30"}
    longer = Cli(deployed.project, deployed.state_dir, env, deployed.transcript)
    status = longer("status", "--json", check=False)
    report = {r["resource"]: r for r in status.json()["resources"]}
    assert status.code == 7 and report["bucket"]["drifted_fields"] == [
        "softDeletePolicy.retentionDurationSeconds: 604800 -> 2592000"
    ], report["bucket"]
    changed = mutations_during(admin, lambda: longer("up"))
    assert [(e["method"], e["route"]) for e in changed] == [("PATCH", "buckets.patch")], changed
    assert gcs.get_bucket(bucket).soft_delete_policy.retention_duration_seconds == 30 * 24 * 3600
    assert "deleted artifacts restorable for 30 days (Cloud Storage soft delete)" in longer("status").stdout

    deployed("up")  # back to the default, for the module's other tests
    assert gcs.get_bucket(bucket).soft_delete_policy.retention_duration_seconds == 7 * 24 * 3600
