"""What `up` asks about: a plan that creates a billable resource or changes a field its price depends on; never a
plan that changes nothing billable, never --yes, never the local emulator (unless MLFLOW_GCP_CONFIRM_LOCAL=1). And
`status`'s estimate prices only what exists, drifted fields as they are live."""

from __future__ import annotations

import pytest

from mlflow_gcp import config as cfg
from mlflow_gcp.cost import asks, billable, billable_changes, describe, footprint, marks
from mlflow_gcp.engine import Change, Outcome
from mlflow_gcp.pricing import estimate


def _o(key: str, action: str, *fields: tuple[str, object, object]) -> Outcome:
    return Outcome(key, "kind", f"id/{key}", action, [Change(f, cur, want) for f, cur, want in fields])  # type: ignore[arg-type]


def test_creating_a_billable_resource_or_changing_its_price_is_billable_anything_else_is_not():
    assert billable(_o("sql:instance", "would create"))
    assert billable(_o("secret:db-password", "would create"))
    assert billable(_o("image", "would create"))  # a build and registry storage
    assert billable(_o("sql:instance", "would update", ("settings.tier", "db-f1-micro", "db-custom-1-3840")))
    assert billable(_o("run", "would update", ("template.scaling.min_instance_count", 0, 1)))
    assert billable(_o("secret:admin-password", "would update", ("enabled version", False, True)))
    # Not billable: labels, IAM, an environment variable, enabling APIs, a database or user; nothing at all.
    assert not billable(_o("sql:instance", "would update", ("settings.userLabels", {}, {"a": "b"})))
    assert not billable(_o("run", "would update", ("container.env.MLFLOW_GCP_WORKERS", "2", "4")))
    assert not billable(_o("iam:bucket", "would update", ("roles/storage.objectViewer for user:a@b.c", "absent", "x")))
    assert not billable(_o("apis", "would update", ("enabled", [], ["run.googleapis.com"])))
    assert not billable(_o("sql:db-tracking", "would create"))
    assert not billable(_o("sa:runtime", "would create"))
    assert not billable(_o("sql:instance", "unchanged"))
    plan = [_o("iam:project", "would update", ("x", 1, 2)), _o("bucket", "would create"), _o("run", "unchanged")]
    assert [o.key for o in billable_changes(plan)] == ["bucket"]


def test_up_asks_only_on_google_cloud_without_yes_or_locally_when_told_to():
    assert asks(local=False, yes=False, environ={})
    assert not asks(local=False, yes=True, environ={})
    assert not asks(local=True, yes=False, environ={})
    assert asks(local=True, yes=False, environ={"MLFLOW_GCP_CONFIRM_LOCAL": "1"})
    assert not asks(local=True, yes=True, environ={"MLFLOW_GCP_CONFIRM_LOCAL": "1"})


@pytest.fixture
def config() -> cfg.Config:
    return cfg.load(None, flags={"project": "my-project"}, environ={})


def test_the_plan_is_the_configured_stack_and_marks_what_it_creates_or_changes(config: cfg.Config):
    est = estimate(footprint(config, "docker"))
    assert est.total == pytest.approx(51.8815)
    plan = [
        _o("sql:instance", "would create"),
        _o("run", "would update", ("template.scaling.min_instance_count", 1, 0)),
    ]
    lines = describe(est, marks(plan))
    assert lines[1].split()[:4] == ["+", "sql:instance", "$49.31", "Cloud"]
    assert any(line.startswith("  ~ run") for line in lines)
    assert lines[-1].split() == ["total", "$51.88", "a", "month"]


def test_what_exists_is_priced_as_it_is_live(config: cfg.Config):
    # Found: the instance, drifted to db-g1-small on a 20 GB disk; the service with one minimum instance; two secrets.
    # Missing: registry, bucket, the other secrets. Priced: 730 × $0.035 = $25.55; 20 × $0.17 = $3.40; backups 20 ×
    # $0.08 = $1.60; one idle instance $13.14; 2 versions, 6 free: $0.
    found = [
        _o("sql:instance", "would update", ("settings.tier", "db-g1-small", "db-custom-1-3840"),
           ("settings.dataDiskSizeGb", "20", "30")),
        _o("run", "would update", ("template.scaling.min_instance_count", 1, 0),
           ("container.resources.limits", {"cpu": "1000m", "memory": "1Gi"}, {"cpu": "1", "memory": "1Gi"})),
        _o("secret:db-password", "unchanged"),
        _o("secret:flask-secret-key", "unchanged"),
        _o("registry", "would create"),
        _o("bucket", "would create"),
    ]  # fmt: skip
    est = estimate(footprint(config, "docker", found))
    assert [i.resource for i in est.items] == ["sql:instance"] * 3 + ["run", "secrets"]
    assert est.total == pytest.approx(25.55 + 3.40 + 1.60 + 13.14)
    assert estimate(footprint(config, "docker", [])).total == 0
