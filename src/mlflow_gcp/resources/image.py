"""The server image: docker/ built and pushed with the Docker SDK, tagged by a hash of its inputs so an unchanged
image is never rebuilt; or a prebuilt image given with --image."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from ..engine import Resource
from ..errors import ExitCode, MlflowGcpError

_AR_IMAGE = re.compile(
    r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repo>[^/]+)/[^@:]+(?:/[^@:]+)*"
    r"(?::(?P<tag>[\w][\w.-]*))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def docker_dir() -> Path:
    """docker/ of the source tree this package runs from."""
    path = Path(__file__).resolve().parents[3] / "docker"
    if not (path / "Dockerfile").is_file():
        raise MlflowGcpError(
            f"The server image sources (docker/Dockerfile) are not at {path}.",
            hint="Run mlflow-gcp from its source checkout (pip install -e .), or pass --image with a prebuilt image.",
        )
    return path


def input_hash(directory: Path) -> str:
    """A content hash of every file the build sends, so the tag changes exactly when the image would."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


class ServerImage(Resource):
    key = "image"
    kind = "server image"
    depends_on = ("registry",)

    @property
    def prebuilt(self) -> str | None:
        return self.ctx.config.server.image

    @property
    def tag(self) -> str:
        return input_hash(docker_dir())

    def id(self) -> str:
        return self.prebuilt or f"{self.ctx.names.image_repo}:{self.tag}"

    def find(self) -> Any | None:
        if self.prebuilt:
            return self._find_prebuilt(self.prebuilt)
        n = self.ctx.names
        return self._find_in(f"projects/{n.project}/locations/{n.region}/repositories/{n.repository}", n.image_repo,
                             tag=self.tag)  # fmt: skip

    def _find_in(self, parent: str, repo_uri: str, *, tag: str | None = None, digest: str | None = None) -> Any:
        from google.api_core import exceptions

        ar = self.ctx.clients.artifact_registry
        try:
            for image in self.ctx.api("artifactregistry.dockerImages.list", ar.list_docker_images, parent=parent):
                name, _, image_digest = image.uri.partition("@")
                if name == repo_uri and (tag in image.tags if tag else image_digest == digest):
                    return {"uri": image.uri}
        except exceptions.NotFound:
            return None
        return None

    def _find_prebuilt(self, uri: str) -> Any:
        """An image in Artifact Registry is looked up (a missing one would only fail at deploy time, with a
        less clear message); one elsewhere (Docker Hub, gcr.io) cannot be, and Cloud Run checks it."""
        m = _AR_IMAGE.match(uri)
        if m is None:
            return {"uri": uri}
        parent = f"projects/{m['project']}/locations/{m['location']}/repositories/{m['repo']}"
        repo_uri = uri.split("@")[0].rsplit(":", 1)[0] if m["tag"] else uri.split("@")[0]
        found = self._find_in(parent, repo_uri, tag=m["tag"] or None, digest=m["digest"] or None)
        if found is None:
            raise MlflowGcpError(
                f"The image {uri} is not in Artifact Registry.",
                hint="Push it first, or check the --image URI (REGION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG).",
                exit_code=ExitCode.CONFIG,
            )
        return found

    def create(self) -> Any:
        if self.prebuilt:  # pragma: no cover - find always finds a prebuilt image
            return {"uri": self.prebuilt}
        import docker

        client = self.ctx.clients.docker()
        repo, tag = self.ctx.names.image_repo, self.tag
        try:
            self.ctx.note(f"docker build {repo}:{tag}")
            image, _ = client.images.build(path=str(docker_dir()), tag=f"{repo}:{tag}", rm=True, platform="linux/amd64")
        except docker.errors.BuildError as exc:
            raise MlflowGcpError(f"Building the server image failed: {exc.msg}") from None
        except docker.errors.APIError as exc:  # a Dockerfile the daemon cannot parse is refused before streaming
            raise MlflowGcpError(f"Building the server image failed: {exc.explanation or exc}") from None
        auth = {"username": "oauth2accesstoken", "password": self.ctx.clients.access_token()}
        digest = None
        self.ctx.note(f"docker push {repo}:{tag}")
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

    def delete(self, actual: Any) -> None:
        """Images go with their repository."""

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "uri": actual["uri"]}

    def planned_facts(self) -> dict[str, Any]:
        return {"id": self.id(), "uri": self.id()}
