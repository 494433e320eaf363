"""Which role a refused call needs, from the shapes Google's 403s take."""

from __future__ import annotations

import pytest

from mlflow_gcp.permissions import denied_permission, permission_hint, role_for


class _Refusal(Exception):
    def __init__(self, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata


@pytest.mark.parametrize(
    ("message", "permission"),
    [
        ("Permission 'run.services.create' denied on resource 'namespaces/p/services/s' (or resource may not exist).",
         "run.services.create"),
        ("me@x.com does not have storage.buckets.create access to the Google Cloud project.", "storage.buckets.create"),
        ("Caller does not have required permission to use project p. Grant the caller the roles/serviceusage."
         "serviceUsageConsumer role, or a custom role with the serviceusage.services.use permission",
         "serviceusage.services.use"),
        ("The client is not authorized to make this request.", None),
        ("The caller does not have permission", None),
    ],
)  # fmt: skip
def test_the_permission_is_read_from_the_message(message: str, permission: str | None) -> None:
    assert denied_permission(_Refusal(message)) == permission


def test_error_info_metadata_wins_over_the_text() -> None:
    exc = _Refusal("The caller does not have permission", {"permission": "iam.serviceAccounts.actAs"})
    assert denied_permission(exc) == "iam.serviceAccounts.actAs"
    assert role_for("iam.serviceAccounts.actAs", "run") == "roles/iam.serviceAccountUser"


@pytest.mark.parametrize(
    ("permission", "step", "role"),
    [
        ("secretmanager.versions.access", None, "roles/secretmanager.secretAccessor"),
        ("secretmanager.secrets.create", None, "roles/secretmanager.admin"),
        ("artifactregistry.repositories.uploadArtifacts", "image", "roles/artifactregistry.writer"),
        ("storage.objects.list", None, "roles/storage.objectAdmin"),
        ("storage.buckets.create", None, "roles/storage.admin"),
        (None, "sql:instance", "roles/cloudsql.admin"),
        (None, "iam:project", "roles/resourcemanager.projectIamAdmin"),
        (None, "secret:db-password", "roles/secretmanager.admin"),
        ("unknown.thing.do", None, None),
        (None, None, None),
    ],
)
def test_longest_prefix_then_step(permission: str | None, step: str | None, role: str | None) -> None:
    assert role_for(permission, step) == role


def test_without_a_role_the_hint_still_says_what_covers_everything() -> None:
    assert "roles/owner" in permission_hint(_Refusal("The caller does not have permission"))
