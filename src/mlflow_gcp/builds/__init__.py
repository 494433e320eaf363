"""How the server image gets built: which builder, chosen once per run and printed.

- ``prebuilt``: ``server.image`` names an image; nothing is built.
- ``docker``: a local Docker daemon builds and pushes (:mod:`.docker`).
- ``cloudbuild``: Cloud Build builds remotely from a source archive in a staging bucket, as a build service account
  of its own (:mod:`.cloudbuild`); no Docker on the user's machine.
- ``auto`` (the default) resolves to ``docker`` when a daemon answers a ping, else ``cloudbuild``; a stack that
  already builds with Cloud Build (its staging bucket is in the state) keeps doing so, so that `status` judges the
  stack as `up` left it and a Docker daemon that comes and goes does not create and revoke the build account's
  roles run after run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..context import Context


def resolve(ctx: Context) -> str:
    """The builder this run uses, cached on the context with why (``ctx.builder_reason``)."""
    if ctx.builder:
        return ctx.builder
    server = ctx.config.server
    if server.image:
        builder, reason = "prebuilt", f"prebuilt image {server.image}"
    elif server.builder != "auto":
        builder, reason = server.builder, "server.builder"
    elif ctx.state.get("build-bucket"):
        builder, reason = "cloudbuild", "auto: this stack builds with Cloud Build"
    elif ctx.clients.docker_answers():
        builder, reason = "docker", "auto: a Docker daemon answered"
    else:
        builder, reason = "cloudbuild", "auto: no Docker daemon answered"
    if builder == "cloudbuild" and not 3 <= len(ctx.names.build_bucket) <= 63:
        raise ConfigError(
            f"The Cloud Build staging bucket name {ctx.names.build_bucket!r} (the artifact bucket's name + '-build') "
            "must be 3-63 characters.",
            hint="Set a shorter artifacts.bucket, or use --builder docker.",
        )
    ctx.builder, ctx.builder_reason = builder, reason
    return builder
