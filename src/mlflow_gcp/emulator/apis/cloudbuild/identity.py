"""Who a build runs as, and what that identity may do: read its source, push its images, write its logs.

A build runs as its ``serviceAccount`` (``projects/P/serviceAccounts/EMAIL``) or, when none is given, as the
project's default build account, here the Compute Engine default service account
``NUMBER-compute@developer.gserviceaccount.com`` (the default for projects created since 2024:
https://cloud.google.com/build/docs/cloud-build-service-account-updates). That account is treated as
holding roles/editor on its project, as it does in projects where the automatic Editor grant to default
service accounts was not turned off -- so a build without ``serviceAccount`` may do everything below.

A user-specified account holds only what IAM grants it (``world.iam.has_role``, which counts only grants
IAM has propagated):

- reading the source object needs ``storage.objects.get`` on it: roles/storage.objectViewer (or a role
  including it, see ``IMPLIED_BY`` in core/iam.py) on the bucket or its project;
- pushing needs ``artifactregistry.repositories.uploadArtifacts``: roles/artifactregistry.writer (or
  repoAdmin/admin, owner/editor) on the repository (its IAM key is the repository's resource name) or the
  project;
- writing build logs to Cloud Logging needs roles/logging.logWriter on the build's project. Without it the
  build still runs and succeeds, but no entry reaches Cloud Logging (the documented reason to grant it:
  https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...core.world import World

OBJECT_VIEWER = "roles/storage.objectViewer"
LOG_WRITER = "roles/logging.logWriter"


def default_account(number: str) -> str:
    return f"{number}-compute@developer.gserviceaccount.com"


@dataclass(frozen=True)
class BuildIdentity:
    world: World
    project_id: str
    number: str
    email: str

    @property
    def member(self) -> str:
        return f"serviceAccount:{self.email}"

    @property
    def is_default(self) -> bool:
        return self.email == default_account(self.number)

    def _has(self, resources: list[str], role: str) -> bool:
        return self.is_default or self.world.iam.has_role(resources, self.member, role)

    def can_read_object(self, bucket: str) -> bool:
        storage = self.world.apis.get("storage")
        resources = [f"projects/{self.project_id}"]
        if storage is not None:
            resources.insert(0, storage.policy_resource(bucket))
            from ..storage import BUCKET_KIND

            record = self.world.store.get(BUCKET_KIND, bucket)
            owner = self.world.find_project(str(record.get("projectNumber", ""))) if record else None
            if owner is not None:
                resources.append(f"projects/{owner['projectId']}")
        return self._has(resources, OBJECT_VIEWER)

    def object_denied(self) -> str:
        """Cloud Storage's 403 for a caller without ``storage.objects.get`` (the JSON API's wording, as
        quoted in e.g. https://github.com/GoogleCloudPlatform/bigquery-dlp-remote-function/issues/70 for a
        build's own account)."""
        return (
            f"{self.email} does not have storage.objects.get access to the Google Cloud Storage object. "
            "Permission 'storage.objects.get' denied on resource (or it may not exist)."
        )

    def can_push(self, project: str, location: str, repository: str) -> bool:
        owner = self.world.find_project(project)
        pid = owner["projectId"] if owner else project
        registry = self.world.apis.get("artifactregistry")
        if self.is_default or registry is None:
            return self.is_default
        # The registry owns the rule (its policy key and the roles that include writer).
        return bool(registry.may_push(self.member, f"projects/{pid}/locations/{location}/repositories/{repository}"))

    def can_write_logs(self) -> bool:
        return self._has([f"projects/{self.project_id}"], LOG_WRITER)
