"""Artifact Registry: the Docker repository for the server image."""

from __future__ import annotations

from typing import Any

from ..engine import Change, Resource
from ._common import field_change, get_or_none, label_changes, merged_labels

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

    def diff(self, actual: Any) -> list[Change]:
        return label_changes(actual.labels, self.ctx.names.labels) + field_change(
            "description", actual.description, DESCRIPTION
        )

    def create(self) -> Any:
        from google.api_core import exceptions
        from google.cloud import artifactregistry_v1

        n = self.ctx.names
        ar = self.ctx.clients.artifact_registry
        repo = artifactregistry_v1.Repository(
            format_=artifactregistry_v1.Repository.Format.DOCKER, description=DESCRIPTION, labels=n.labels
        )
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
        repo = artifactregistry_v1.Repository(
            name=self.id(), labels=merged_labels(actual.labels, self.ctx.names.labels), description=DESCRIPTION
        )
        return self.ctx.api(
            "artifactregistry.repositories.patch",
            ar.update_repository,
            repository=repo,
            update_mask={"paths": ["labels", "description"]},
        )

    def delete(self, actual: Any) -> None:
        ar = self.ctx.clients.artifact_registry
        op = self.ctx.api("artifactregistry.repositories.delete", ar.delete_repository, name=self.id())
        self.ctx.wait(op, self.kind)

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "host": self.ctx.names.registry_host}
