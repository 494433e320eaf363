"""The whole stack, as resource steps with their dependencies (the engine orders and parallelises them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import builds
from .resources import (
    apis,
    bucket,
    build,
    client_key,
    iam,
    iap,
    image,
    registry,
    run,
    secrets,
    service_accounts,
    sql,
    sql_backups,
)

if TYPE_CHECKING:
    from .context import Context
    from .engine import Step


def resources(ctx: Context, *, removing: bool = False) -> list[Step]:
    """The steps of the stack. Opt-in parts are included when configured, and always when removing (so `down` finds
    them even after the option was turned off)."""
    classes: list[type[Step]] = [
        apis.EnabledApis,
        registry.Repository,
        image.ServerImage,
        sql.Instance,
        sql.TrackingDatabase,
        sql.AuthDatabase,
        *secrets.ALL,
        sql.User,
        sql.StandbyUser,
        service_accounts.RuntimeAccount,
        bucket.ArtifactBucket,
        iam.ProjectBindings,
        iam.SecretBindings,
        iam.BucketBindings,
        run.Service,
        iam.ServiceInvoker,
    ]
    if iap.wanted(ctx):
        classes += [iap.AccessBindings, iap.ProgrammaticClients]
    if removing or builds.resolve(ctx) == "cloudbuild":
        classes += list(build.ALL)
    if removing or ctx.config.create_client_key:
        classes += [client_key.ClientAccount, client_key.ClientKey]
    steps = [cls(ctx) for cls in classes]
    if removing:
        steps += sql_backups.kept(ctx)  # the instances a restore or a rollback moved off: data, like the live one
    return steps
