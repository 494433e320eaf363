"""Cloud Storage buckets: uniform bucket-level access, public access prevention enforced, labelled. The artifact
bucket holds data (`down` deletes it, with its objects, only with --delete-data); the Cloud Build staging bucket
(resources/build.py) shares the same base."""

from __future__ import annotations

from typing import Any

from .. import fields
from ..engine import Change, Resource
from ..errors import MlflowGcpError
from ..fields import Owned
from ..retry import http_status


def _setter(attribute: str) -> Any:
    return lambda bucket, value: setattr(bucket, attribute, value)


class Bucket(Resource):
    """A bucket of the stack, in ``artifacts.location`` (default: the region)."""

    depends_on = ("apis",)

    @property
    def name(self) -> str:
        raise NotImplementedError

    def id(self) -> str:
        return f"gs://{self.name}"

    def find(self) -> Any | None:
        from google.api_core import exceptions

        storage = self.ctx.clients.storage
        try:
            return self.ctx.api(f"storage.buckets.get {self.name}", storage.get_bucket, self.name)
        except exceptions.NotFound:
            return None
        except exceptions.Forbidden as exc:
            raise MlflowGcpError(
                f"Bucket {self.name} exists but you cannot read it ({exc.message}); bucket names are "
                "global, so another project may own it.",
                hint="Set artifacts.bucket to a name of your own.",
            ) from None

    def owned_fields(self) -> list[Owned]:
        location = self.ctx.config.bucket_location
        return [
            Owned("storageClass", "STANDARD", lambda b: b.storage_class, write=_setter("storage_class")),
            Owned(
                "iamConfiguration.uniformBucketLevelAccess.enabled",
                True,
                lambda b: bool(b.iam_configuration.uniform_bucket_level_access_enabled),
                write=lambda b, v: setattr(b.iam_configuration, "uniform_bucket_level_access_enabled", v),
            ),
            Owned(
                "iamConfiguration.publicAccessPrevention",
                "enforced",
                lambda b: b.iam_configuration.public_access_prevention,
                write=lambda b, v: setattr(b.iam_configuration, "public_access_prevention", v),
            ),
            Owned("labels", self.ctx.names.labels, lambda b: b.labels, mode="labels", write=_setter("labels")),
            Owned(
                "location",
                location,
                lambda b: b.location,
                mode="refuse",
                normalize=lambda v: (v or "").upper(),
                refusal=f"Bucket {self.name} is in another location than the configured {location}; "
                "a bucket cannot move.",
                hint="Set artifacts.location to match, or use another bucket name.",
                write=lambda b, v: None,  # given to create_bucket, never patched
            ),
        ]

    def create(self) -> Any:
        from google.api_core import exceptions

        storage = self.ctx.clients.storage
        bucket = fields.apply(self.owned_fields(), storage.bucket(self.name))
        try:
            return self.ctx.api(
                f"storage.buckets.insert {self.name}",
                storage.create_bucket,
                bucket,
                location=self.ctx.config.bucket_location,
            )
        except exceptions.Conflict as exc:
            found = self.find()  # ours, created by a run that died before recording it
            if found is None or http_status(exc) != 409:
                raise
            return found

    def update(self, actual: Any, changes: list[Change]) -> Any:
        fields.apply(self.owned_fields(), actual, only=[c.field for c in changes])
        self.ctx.api(f"storage.buckets.patch {self.name}", actual.patch)
        return actual

    def delete(self, actual: Any) -> None:
        storage = self.ctx.clients.storage
        blobs = list(self.ctx.api("storage.objects.list", lambda: list(storage.list_blobs(actual, versions=True))))
        for blob in blobs:
            self.ctx.api(f"storage.objects.delete {blob.name}", blob.delete)
        self.ctx.api(f"storage.buckets.delete {self.name}", actual.delete)

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "bucket": self.name, "location": actual.location}

    def planned_facts(self) -> dict[str, Any]:
        return {"id": self.id(), "bucket": self.name}


DAY_SECONDS = 24 * 3600


def _write_soft_delete(bucket: Any, seconds: int) -> None:
    bucket.soft_delete_policy.retention_duration_seconds = seconds  # the setter marks the field for the patch


class ArtifactBucket(Bucket):
    """The artifacts. Its soft-delete retention (``artifacts.soft_delete_days``) is set explicitly, not left to GCS's
    default (7 days, or whatever an organization's default tag says): a deleted or overwritten artifact can be
    restored for that long (``list_blobs(soft_deleted=True)``, ``restore_blob``), and drift is repaired by ``up``."""

    key = "bucket"
    kind = "artifact bucket"
    holds_data = True

    @property
    def name(self) -> str:
        return self.ctx.names.bucket

    def owned_fields(self) -> list[Owned]:
        return [
            *super().owned_fields(),
            Owned(
                "softDeletePolicy.retentionDurationSeconds",
                self.ctx.config.artifacts.soft_delete_days * DAY_SECONDS,
                lambda b: b.soft_delete_policy.retention_duration_seconds,
                normalize=lambda v: int(v or 0),
                write=_write_soft_delete,
            ),
        ]

    def facts(self, actual: Any) -> dict[str, Any]:
        seconds = actual.soft_delete_policy.retention_duration_seconds or 0
        days = seconds // DAY_SECONDS if seconds % DAY_SECONDS == 0 else round(seconds / DAY_SECONDS, 2)
        return {**super().facts(actual), "soft_delete_days": days}

    def planned_facts(self) -> dict[str, Any]:
        return {**super().planned_facts(), "soft_delete_days": self.ctx.config.artifacts.soft_delete_days}
