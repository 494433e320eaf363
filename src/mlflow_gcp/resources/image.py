"""The server image: the sources the package ships (image_source), built by the run's builder (builds: a local
Docker daemon or Cloud Build) and tagged by a hash of exactly what the build sends, so an unchanged image is never
rebuilt; or a prebuilt image given with --image, looked up in Artifact Registry."""

from __future__ import annotations

import re
from typing import Any

from .. import builds
from ..engine import Resource
from ..errors import ExitCode, MlflowGcpError
from ..image_source import input_hash

_AR_IMAGE = re.compile(
    r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repo>[^/]+)/[^@:]+(?:/[^@:]+)*"
    r"(?::(?P<tag>[\w][\w.-]*))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


class ServerImage(Resource):
    key = "image"
    kind = "server image"

    @property
    def depends_on(self) -> tuple[str, ...]:  # type: ignore[override]
        if builds.resolve(self.ctx) == "cloudbuild":
            # The build account must hold its roles before the build runs as it.
            return ("registry", "build-bucket", "sa:build", "iam:registry", "iam:build-bucket", "iam:project")
        return ("registry",)

    @property
    def prebuilt(self) -> str | None:
        return self.ctx.config.server.image

    @property
    def tag(self) -> str:
        """A hash of the build context, whose requirements.txt pins the MLflow release this run deploys (the one
        serving, unless an upgrade or a rollback moves it: upgrade.py)."""
        return input_hash(self.ctx.mlflow_version)

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
        builder = builds.resolve(self.ctx)
        if builder == "cloudbuild":
            from ..builds import cloudbuild

            return {**cloudbuild.build(self.ctx, self.ctx.names.image_repo, self.tag), "builder": builder}
        from ..builds import docker

        return {**docker.build(self.ctx, self.ctx.names.image_repo, self.tag), "builder": builder}

    def delete(self, actual: Any) -> None:
        """Images go with their repository."""

    def facts(self, actual: Any) -> dict[str, Any]:
        # The builder that made it when this run built it; else the one recorded (a found image was built before).
        recorded = (self.ctx.state.get(self.key) or {}).get("builder")
        built_by = actual.get("builder") or recorded or builds.resolve(self.ctx)
        facts = {"id": self.id(), "uri": actual["uri"], "builder": built_by}
        if not self.prebuilt:
            facts["mlflow_version"] = self.ctx.mlflow_version
        return facts

    def planned_facts(self) -> dict[str, Any]:
        return {"id": self.id(), "uri": self.id(), "builder": builds.resolve(self.ctx)}
