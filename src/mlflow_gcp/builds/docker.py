"""Build the server image with a local Docker daemon (docker-py) and push it to Artifact Registry."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from ..errors import MlflowGcpError
from ..image_source import context_tar_gz

if TYPE_CHECKING:
    from ..context import Context

#: Lines of a failed build's output shown with its error.
BUILD_LOG_LINES = 12


def build(ctx: Context, repo: str, tag: str) -> dict[str, Any]:
    """Build ``repo:tag`` from the shipped sources and push it; answer ``{"uri": repo@digest, ...}``."""
    import docker

    client = ctx.clients.docker()
    try:
        ctx.note(f"docker build {repo}:{tag}")
        # The context the tag hashes (the shipped sources less .dockerignore, requirements.txt pinning the configured
        # MLflow), sent as a custom context: the daemon reads it as it would the directory.
        context = io.BytesIO(context_tar_gz(ctx.mlflow_version))
        image, _ = client.images.build(
            fileobj=context, custom_context=True, encoding="gzip", tag=f"{repo}:{tag}", rm=True,
            platform="linux/amd64",
        )  # fmt: skip
    except docker.errors.BuildError as exc:
        # The error line only says which step failed; the step's own output before it says why (pip's resolver
        # naming the conflicting pins, say).
        output = [e["stream"].rstrip() for e in exc.build_log if isinstance(e, dict) and e.get("stream", "").strip()]
        why = "\n".join(f"    {line}" for line in output[-BUILD_LOG_LINES:])
        raise MlflowGcpError(
            f"Building the server image failed: {exc.msg}" + (f"\n  the build's last lines:\n{why}" if why else "")
        ) from None
    except docker.errors.APIError as exc:  # a Dockerfile the daemon cannot parse is refused before streaming
        raise MlflowGcpError(f"Building the server image failed: {exc.explanation or exc}") from None
    auth = {"username": "oauth2accesstoken", "password": ctx.clients.access_token()}
    digest = None
    ctx.note(f"docker push {repo}:{tag}")
    for line in client.images.push(repo, tag=tag, auth_config=auth, stream=True, decode=True):
        # docker-py does not raise on a refused push: the error is a line in the stream.
        if "errorDetail" in line or "error" in line:
            message = line.get("errorDetail", {}).get("message") or line.get("error")
            raise MlflowGcpError(
                f"Pushing {repo}:{tag} was refused: {message}",
                hint="You need roles/artifactregistry.writer on the repository.",
            )
        digest = (line.get("aux") or {}).get("Digest") or digest
    if not digest:
        raise MlflowGcpError(f"Pushing {repo}:{tag} reported no digest.")
    return {"uri": f"{repo}@{digest}", "built": image.id}
