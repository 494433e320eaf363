"""Refusals that retrying cannot fix end at once with Google's message and what to do about it: the role a
missing permission belongs to, the org-policy constraint behind a refused binding."""

from __future__ import annotations

import pytest

from mlflow_gcp.errors import ExitCode
from tests.e2e.conftest import Cli


@pytest.mark.parametrize(
    ("permission", "role"),
    [
        # Named in an ErrorInfo by Secret Manager.
        ("secretmanager.secrets.create", "roles/secretmanager.admin"),
        # Cloud SQL only says "not authorized": the failing step names the role.
        ("cloudsql.instances.create", "roles/cloudsql.admin"),
        # Cloud Storage names it in its message text.
        ("storage.buckets.create", "roles/storage.admin"),
    ],
)
def test_a_missing_permission_names_the_role(cli: Cli, admin, permission: str, role: str):
    admin.settings(denied_permissions=[permission])
    start = len(admin.requests())
    result = cli("up", check=False)
    assert result.code == ExitCode.PERMISSION, result.stderr
    assert role in result.stderr and "Traceback" not in result.stderr
    refused = [e["path"] for e in admin.requests(start) if e["status"] == 403]
    assert refused and len(refused) == len(set(refused)), "a refusal is not retried"
    if permission.startswith(("secretmanager.", "storage.")):
        assert permission in result.stderr

    admin.settings(denied_permissions=[])
    assert cli("up").code == 0  # granted: the next run finishes the job


def test_an_org_policy_refusal_names_the_constraint(cli: Cli, admin):
    admin.settings(domain_restricted_sharing=True)
    result = cli("up", check=False)
    assert result.code == ExitCode.PERMISSION, result.stderr
    assert "iam.allowedPolicyMemberDomains" in result.stderr and "Traceback" not in result.stderr
    assert 'access.mode = "iap"' in result.stderr  # the way out that needs no allUsers
