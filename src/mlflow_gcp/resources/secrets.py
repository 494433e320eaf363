"""Secret Manager secrets (automatic replication) holding the generated credentials, and the version Cloud Run
pins. Values are generated here, kept in memory for this run only, and never written to state or logs."""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from ..engine import Change, Resource
from ._common import get_or_none, label_changes, merged_labels


def generate(kind: str) -> str:
    """URL-safe alphabet: safe in a database URL and in a configparser file (no `%`, `@`, `:` or `/`)."""
    if kind == "flask-secret-key":
        return secrets.token_hex(32)
    return secrets.token_urlsafe(24)  # 32 characters; MLflow wants admin passwords of 12+


class Secret(Resource):
    kind = "secret"
    depends_on = ("apis",)
    #: Which secret of Names.secrets this is; subclasses set it.
    secret: ClassVar[str]

    @property
    def secret_id(self) -> str:
        return self.ctx.names.secrets[self.secret]

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}/secrets/{self.secret_id}"

    def value(self) -> str:
        if self.secret == "admin-username":
            return self.ctx.config.server.admin_username
        return generate(self.secret)

    def find(self) -> Any | None:
        sm = self.ctx.clients.secrets
        secret = get_or_none(self.ctx, f"secretmanager.secrets.get {self.secret_id}", sm.get_secret, name=self.id())
        return None if secret is None else {"secret": secret, "version": self._pinned_version()}

    def _pinned_version(self) -> str | None:
        """The version the stack uses: the one recorded in state if it is still enabled, else the newest enabled."""
        from google.cloud.secretmanager_v1 import SecretVersion

        sm = self.ctx.clients.secrets
        versions = list(
            self.ctx.api(f"secretmanager.versions.list {self.secret_id}", sm.list_secret_versions, parent=self.id())
        )
        enabled = {v.name.rsplit("/", 1)[1] for v in versions if v.state == SecretVersion.State.ENABLED}
        recorded = self.ctx.fact(self.key, "version")
        if recorded in enabled:
            return recorded
        return max(enabled, key=int) if enabled else None

    def diff(self, actual: Any) -> list[Change]:
        changes = label_changes(actual["secret"].labels, self.ctx.names.labels)
        if actual["version"] is None:
            changes.append(Change("enabled version", None, "new"))
        return changes

    def create(self) -> Any:
        sm = self.ctx.clients.secrets
        secret = self.ctx.api(
            f"secretmanager.secrets.create {self.secret_id}",
            sm.create_secret,
            request={
                "parent": f"projects/{self.ctx.names.project}",
                "secret_id": self.secret_id,
                "secret": {"replication": {"automatic": {}}, "labels": self.ctx.names.labels},
            },
        )
        return {"secret": secret, "version": self.add_version(self.value())}

    def update(self, actual: Any, changes: list[Change]) -> Any:
        sm = self.ctx.clients.secrets
        fields = {c.field for c in changes}
        secret = actual["secret"]
        if "labels" in fields:
            secret = self.ctx.api(
                f"secretmanager.secrets.update {self.secret_id}",
                sm.update_secret,
                request={
                    "secret": {"name": self.id(), "labels": merged_labels(secret.labels, self.ctx.names.labels)},
                    "update_mask": {"paths": ["labels"]},
                },
            )
        version = actual["version"]
        if "enabled version" in fields:
            version = self.add_version(self.value())
        return {"secret": secret, "version": version}

    def add_version(self, value: str) -> str:
        import google_crc32c

        sm = self.ctx.clients.secrets
        data = value.encode()
        version = self.ctx.api(
            f"secretmanager.secrets.addVersion {self.secret_id}",
            sm.add_secret_version,
            request={"parent": self.id(), "payload": {"data": data, "data_crc32c": google_crc32c.value(data)}},
        )
        self.ctx.secret_values[self.secret] = value
        return version.name.rsplit("/", 1)[1]

    def delete(self, actual: Any) -> None:
        sm = self.ctx.clients.secrets
        self.ctx.api(f"secretmanager.secrets.delete {self.secret_id}", sm.delete_secret, name=self.id())

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "version": actual["version"]}

    def planned_facts(self) -> dict[str, Any]:
        return {"id": self.id(), "version": "(new)"}


def read_secret(ctx: Any, secret: str, version: str | None = None) -> str:
    """A secret's value: from this run's memory when we just made it, else from Secret Manager."""
    if secret in ctx.secret_values:
        return ctx.secret_values[secret]
    sm = ctx.clients.secrets
    version = version or ctx.fact(f"secret:{secret}", "version") or "latest"
    name = f"projects/{ctx.names.project}/secrets/{ctx.names.secrets[secret]}/versions/{version}"
    response = ctx.api(
        f"secretmanager.versions.access {ctx.names.secrets[secret]}", sm.access_secret_version, name=name
    )
    return response.payload.data.decode()


class DbPassword(Secret):
    key = "secret:db-password"
    secret = "db-password"
    # The only way into the kept database: kept with the data.
    holds_data = True


class AdminUsername(Secret):
    key = "secret:admin-username"
    secret = "admin-username"


class AdminPassword(Secret):
    key = "secret:admin-password"
    secret = "admin-password"


class FlaskSecretKey(Secret):
    key = "secret:flask-secret-key"
    secret = "flask-secret-key"


ALL: tuple[type[Secret], ...] = (DbPassword, AdminUsername, AdminPassword, FlaskSecretKey)
