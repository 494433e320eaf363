"""Secret environment variables: reading a container's ``secretKeyRef`` from Secret Manager as the
revision's runtime service account, failing the revision as Cloud Run does when it may not."""

from __future__ import annotations

from typing import Any

from ...core.errors import GcpError
from .common import (
    _RevisionFailure,
)


class SecretEnv:
    """Resolves a revision's secret env vars for :class:`CloudRunApi`."""

    def _secret_value(
        self, project_id: str, container: int, index: int, var: dict[str, Any], member: str, account: str
    ) -> str:
        ref = var["valueSource"]["secretKeyRef"]
        secret = ref["secret"]
        if secret.startswith("projects/"):
            secret_name = secret
        else:
            # A short id names a secret of the service's project; GCP spells it with the project number.
            project = self.world.find_project(project_id) or {"name": f"projects/{project_id}"}
            secret_name = f"{project['name']}/secrets/{secret}"
        version = f"{secret_name}/versions/{ref.get('version') or 'latest'}"
        field = f"spec.template.spec.containers[{container}].env[{index}].value_from.secret_key_ref.name"
        sm = self.world.apis.get("secretmanager")
        if sm is None:
            raise _RevisionFailure(f"{field}: Secret {version} was not found", reason="SECRETS_ACCESS_CHECK_FAILED")
        try:
            allowed = sm.can_access(member, secret_name)
        except GcpError:
            raise _RevisionFailure(
                f"{field}: Secret {version} was not found", reason="SECRETS_ACCESS_CHECK_FAILED"
            ) from None
        if not allowed:
            raise _RevisionFailure(
                f"{field}: Permission denied on secret: {version} for Revision service account {account}. The "
                "service account used must be granted the 'Secret Manager Secret Accessor' role "
                "(roles/secretmanager.secretAccessor) at the secret, project or higher level.",
                reason="SECRETS_ACCESS_CHECK_FAILED",
            )
        try:
            data: bytes = sm.access(version)
        except GcpError as err:
            if err.code == 404:
                raise _RevisionFailure(
                    f"{field}: Secret {version} was not found", reason="SECRETS_ACCESS_CHECK_FAILED"
                ) from None
            raise _RevisionFailure(f"{field}: {err.message}", reason="SECRETS_ACCESS_CHECK_FAILED") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            # The message names the secret, never its bytes.
            raise _RevisionFailure(
                f"{field}: Secret {version} is not valid UTF-8 and cannot be used as an environment variable.",
                reason="SECRETS_ACCESS_CHECK_FAILED",
            ) from None
