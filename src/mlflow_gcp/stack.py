"""The whole stack, as resource steps with their dependencies (the engine orders and parallelises them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .resources import apis, bucket, iam, image, registry, run, secrets, service_accounts, sql

if TYPE_CHECKING:
    from .context import Context
    from .engine import Resource


def resources(ctx: Context) -> list[Resource]:
    classes: list[type[Resource]] = [
        apis.EnabledApis,
        registry.Repository,
        image.ServerImage,
        sql.Instance,
        sql.TrackingDatabase,
        sql.AuthDatabase,
        *secrets.ALL,
        sql.User,
        service_accounts.RuntimeAccount,
        bucket.ArtifactBucket,
        iam.ProjectBindings,
        iam.SecretBindings,
        iam.BucketBindings,
        run.Service,
        iam.PublicInvoker,
    ]
    return [cls(ctx) for cls in classes]
