"""The GCS artifact bucket: uniform bucket-level access, public access prevention enforced, no force-destroy
(`down` deletes it, with its objects, only with --delete-data)."""

from __future__ import annotations

from typing import Any

from ..engine import Change, Resource
from ..errors import MlflowGcpError
from ..retry import http_status
from ._common import field_change, label_changes, merged_labels


class ArtifactBucket(Resource):
    key = "bucket"
    kind = "artifact bucket"
    depends_on = ("apis",)
    holds_data = True

    def id(self) -> str:
        return f"gs://{self.ctx.names.bucket}"

    def find(self) -> Any | None:
        from google.api_core import exceptions

        storage = self.ctx.clients.storage
        try:
            return self.ctx.api("storage.buckets.get", storage.get_bucket, self.ctx.names.bucket)
        except exceptions.NotFound:
            return None
        except exceptions.Forbidden as exc:
            raise MlflowGcpError(
                f"Bucket {self.ctx.names.bucket} exists but you cannot read it ({exc.message}); bucket names are "
                "global, so another project may own it.",
                hint="Set artifacts.bucket to a name of your own.",
            ) from None

    def diff(self, actual: Any) -> list[Change]:
        iam = actual.iam_configuration
        return [
            *field_change("uniformBucketLevelAccess", bool(iam.uniform_bucket_level_access_enabled), True),
            *field_change("publicAccessPrevention", iam.public_access_prevention, "enforced"),
            *label_changes(actual.labels, self.ctx.names.labels),
            *field_change("location", actual.location, self.ctx.config.bucket_location),
        ]

    def create(self) -> Any:
        from google.api_core import exceptions

        storage = self.ctx.clients.storage
        bucket = storage.bucket(self.ctx.names.bucket)
        bucket.storage_class = "STANDARD"
        bucket.labels = self.ctx.names.labels
        bucket.iam_configuration.uniform_bucket_level_access_enabled = True
        bucket.iam_configuration.public_access_prevention = "enforced"
        try:
            return self.ctx.api(
                "storage.buckets.insert", storage.create_bucket, bucket, location=self.ctx.config.bucket_location
            )
        except exceptions.Conflict as exc:
            found = self.find()  # ours, created by a run that died before recording it
            if found is None or http_status(exc) != 409:
                raise
            return found

    def update(self, actual: Any, changes: list[Change]) -> Any:
        fields = {c.field for c in changes}
        if "location" in fields:
            raise MlflowGcpError(
                f"Bucket {self.ctx.names.bucket} is in {actual.location}, the configuration says "
                f"{self.ctx.config.bucket_location}; a bucket cannot move.",
                hint="Set artifacts.location to match, or use another bucket name.",
            )
        actual.iam_configuration.uniform_bucket_level_access_enabled = True
        actual.iam_configuration.public_access_prevention = "enforced"
        actual.labels = merged_labels(actual.labels, self.ctx.names.labels)
        self.ctx.api("storage.buckets.patch", actual.patch)
        return actual

    def delete(self, actual: Any) -> None:
        storage = self.ctx.clients.storage
        blobs = list(self.ctx.api("storage.objects.list", lambda: list(storage.list_blobs(actual, versions=True))))
        for blob in blobs:
            self.ctx.api(f"storage.objects.delete {blob.name}", blob.delete)
        self.ctx.api("storage.buckets.delete", actual.delete)

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "bucket": self.ctx.names.bucket, "location": actual.location}

    def planned_facts(self) -> dict[str, Any]:
        return {"id": self.id(), "bucket": self.ctx.names.bucket}
