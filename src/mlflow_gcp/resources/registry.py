"""Artifact Registry: the Docker repository for the server image."""

from __future__ import annotations

from typing import Any

from .. import fields
from ..engine import Change, Resource
from ..fields import Owned
from ._common import get_or_none


def _setter(attribute: str) -> Any:
    return lambda repo, value: setattr(repo, attribute, value)


DESCRIPTION = "MLflow server images (managed by mlflow-gcp)"


class Repository(Resource):
    key = "registry"
    kind = "Artifact Registry repository"
    depends_on = ("apis",)

    def id(self) -> str:
        n = self.ctx.names
        return f"projects/{n.project}/locations/{n.region}/repositories/{n.repository}"

    def find(self) -> Any | None:
        ar = self.ctx.clients.artifact_registry
        return get_or_none(self.ctx, "artifactregistry.repositories.get", ar.get_repository, name=self.id())

    def owned_fields(self) -> list[Owned]:
        from google.cloud import artifactregistry_v1

        docker = artifactregistry_v1.Repository.Format.DOCKER
        return [
            Owned(
                "format_",
                docker,
                lambda r: r.format_,
                mode="refuse",
                refusal=f"Repository {self.ctx.names.repository} exists but is not a Docker repository.",
                hint="Set a repository name of your own (registry.repository) or delete that repository.",
                write=_setter("format_"),
            ),
            Owned("description", DESCRIPTION, lambda r: r.description, write=_setter("description")),
            Owned("labels", self.ctx.names.labels, lambda r: dict(r.labels), mode="labels", write=_setter("labels")),
        ]

    def create(self) -> Any:
        from google.api_core import exceptions
        from google.cloud import artifactregistry_v1

        n = self.ctx.names
        ar = self.ctx.clients.artifact_registry
        repo = fields.apply(self.owned_fields(), artifactregistry_v1.Repository())
        try:
            op = self.ctx.api(
                "artifactregistry.repositories.create",
                ar.create_repository,
                parent=f"projects/{n.project}/locations/{n.region}",
                repository=repo,
                repository_id=n.repository,
            )
            return self.ctx.wait(op, self.kind)
        except exceptions.Conflict:  # created by a run that died before recording it
            return self.find()

    def update(self, actual: Any, changes: list[Change]) -> Any:
        from google.cloud import artifactregistry_v1

        ar = self.ctx.clients.artifact_registry
        paths = [c.field for c in changes]
        repo = artifactregistry_v1.Repository(name=self.id(), labels=dict(actual.labels))
        fields.apply(self.owned_fields(), repo, only=paths)
        return self.ctx.api(
            "artifactregistry.repositories.patch",
            ar.update_repository,
            repository=repo,
            update_mask={"paths": paths},
        )

    def delete(self, actual: Any) -> None:
        ar = self.ctx.clients.artifact_registry
        op = self.ctx.api("artifactregistry.repositories.delete", ar.delete_repository, name=self.id())
        self.ctx.wait(op, self.kind)

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "host": self.ctx.names.registry_host}
