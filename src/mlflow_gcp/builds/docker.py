"""Build the server image with a local Docker daemon (docker-py) and push it to Artifact Registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import MlflowGcpError
from ..image_source import source_dir

if TYPE_CHECKING:
    from ..context import Context


def build(ctx: Context, repo: str, tag: str) -> dict[str, Any]:
    """Build ``repo:tag`` from the shipped sources and push it; answer ``{"uri": repo@digest, ...}``."""
    import docker

    client = ctx.clients.docker()
    try:
        ctx.note(f"docker build {repo}:{tag}")
        # docker-py applies the directory's .dockerignore itself, with the matcher image_source hashes with.
        image, _ = client.images.build(path=str(source_dir()), tag=f"{repo}:{tag}", rm=True, platform="linux/amd64")
    except docker.errors.BuildError as exc:
        raise MlflowGcpError(f"Building the server image failed: {exc.msg}") from None
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
