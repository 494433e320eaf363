"""What Cloud Build needs to build the server image (only when the run's builder is ``cloudbuild``): a staging
bucket for the source archives, a build service account of its own, and exactly the roles that account needs:

- ``roles/artifactregistry.writer`` on the stack's repository (push the image),
- ``roles/storage.objectViewer`` on the staging bucket (fetch the source),
- ``roles/logging.logWriter`` on the project (write the build's log; granted by iam.ProjectBindings).

Cloud Build's documented minimum for a user-specified service account
(https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts), never the default
Compute Engine account with roles/editor.
"""

from __future__ import annotations

from typing import Any

from ..builds.cloudbuild import SOURCE_PREFIX, SOURCE_RETENTION_DAYS
from ..fields import Owned
from .bucket import Bucket, _setter
from .iam import Grant, _BucketPolicyBindings, _PolicyBindings
from .service_accounts import ServiceAccount

REGISTRY_WRITER = "roles/artifactregistry.writer"
STAGING_READER = "roles/storage.objectViewer"


class BuildAccount(ServiceAccount):
    key = "sa:build"
    display_name = "Builds the MLflow server image on Cloud Build (mlflow-gcp)"

    @property
    def account_id(self) -> str:
        return self.ctx.names.build_account_id


def _lifecycle(bucket: Any) -> list[dict[str, Any]]:
    return [dict(rule) for rule in bucket.lifecycle_rules]


class StagingBucket(Bucket):
    """Source archives for Cloud Build; a lifecycle rule deletes them after a few days (a successful build deletes
    its own at once; this catches those of failed and killed runs)."""

    key = "build-bucket"
    kind = "Cloud Build staging bucket"

    @property
    def name(self) -> str:
        return self.ctx.names.build_bucket

    def owned_fields(self) -> list[Owned]:
        rule = {
            "action": {"type": "Delete"},
            "condition": {"age": SOURCE_RETENTION_DAYS, "matchesPrefix": [SOURCE_PREFIX]},
        }
        return [
            *super().owned_fields(),
            Owned("lifecycle.rule", [rule], _lifecycle, write=_setter("lifecycle_rules")),
        ]


class RegistryBindings(_PolicyBindings):
    """The build account may push to the stack's repository, and to nothing else in Artifact Registry."""

    key = "iam:registry"
    kind = "registry IAM bindings"
    depends_on = ("registry", "sa:build")
    roles = (REGISTRY_WRITER,)
    api_name = "artifactregistry.repositories"

    def id(self) -> str:
        n = self.ctx.names
        return f"projects/{n.project}/locations/{n.region}/repositories/{n.repository}"

    def targets(self) -> list[str]:
        return [self.id()]

    def wanted(self) -> set[Grant]:
        return {(self.id(), REGISTRY_WRITER, f"serviceAccount:{self.ctx.names.build_account}")}

    def _read(self, target: str) -> Any:
        return self.ctx.clients.artifact_registry.get_iam_policy(request={"resource": target})

    def _write(self, target: str, policy: Any) -> Any:
        return self.ctx.clients.artifact_registry.set_iam_policy(request={"resource": target, "policy": policy})


class StagingBucketBindings(_BucketPolicyBindings):
    """The build account may read the staged sources."""

    key = "iam:build-bucket"
    kind = "staging bucket IAM bindings"
    depends_on = ("build-bucket", "sa:build")
    roles = (STAGING_READER,)

    @property
    def bucket_name(self) -> str:
        return self.ctx.names.build_bucket

    def wanted(self) -> set[Grant]:
        return {(self.id(), STAGING_READER, f"serviceAccount:{self.ctx.names.build_account}")}


ALL = (BuildAccount, StagingBucket, RegistryBindings, StagingBucketBindings)
