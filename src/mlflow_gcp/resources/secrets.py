"""Secret Manager secrets (automatic replication) holding the generated credentials, and the version Cloud Run
pins. Values are generated here, kept in memory for this run only, and never written to state or logs."""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from .. import fields, reads
from ..engine import Change, Resource
from ..fields import Owned
from ..retry import http_status
from ._common import get_or_none

#: Owned pseudo-fields of a secret: it has an enabled version; that version's value (when configured).
ENABLED_VERSION = "enabled version"
VALUE = "value (pinned version)"


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

    def configured(self) -> str | None:
        """The value the configuration chooses (the admin's name), or None for a generated credential."""
        return self.ctx.config.server.admin_username if self.secret == "admin-username" else None

    def value(self) -> str:
        return self.configured() or generate(self.secret)

    def find(self) -> Any | None:
        """The secret, the version Cloud Run pins and (for a configured value) that value: the secret from the
        stack's one list of secrets, at the same time as the recorded version, so a converged secret costs one read
        of its own. Only when the recorded version is gone or not enabled are all versions listed."""
        secret, recorded = reads.together(self._secret, self._recorded_version)
        if secret is None:
            return None
        if recorded is None:
            version = self._pinned_version()
            value = read_secret(self.ctx, self.secret, version) if self.configured() is not None and version else None
        else:
            version, value = recorded
        found = {"secret": secret, "version": version}
        if value is not None:
            found["value"] = value
        return found

    def _secret(self) -> Any | None:
        listed = stack_secrets(self.ctx)
        if self.secret_id in listed:
            return listed[self.secret_id]
        # Not listed: absent, unless the list's name filter missed it; only NOT_FOUND says absent for sure.
        sm = self.ctx.clients.secrets
        return get_or_none(self.ctx, f"secretmanager.secrets.get {self.secret_id}", sm.get_secret, name=self.id())

    def _recorded_version(self) -> tuple[str, str | None] | None:
        """The version recorded in state if it is still enabled, with its value for a configured secret (accessing
        a version succeeds only when it is enabled: one call says both); None when none is recorded or it is not
        enabled (or the secret is gone)."""
        from google.cloud.secretmanager_v1 import SecretVersion

        recorded = self.ctx.fact(self.key, "version")
        if not str(recorded or "").isdigit():
            return None
        recorded = str(recorded)
        if self.configured() is not None and self.secret not in self.ctx.secret_values:
            try:
                return recorded, self.access(recorded)
            except Exception as exc:  # 404: no such secret or version; 400 FAILED_PRECONDITION: not enabled
                if http_status(exc) in (400, 404):
                    return None
                raise
        sm = self.ctx.clients.secrets
        version = get_or_none(self.ctx, f"secretmanager.versions.get {self.secret_id}/{recorded}",
                              sm.get_secret_version, name=self.version_name(recorded))  # fmt: skip
        if version is None or version.state != SecretVersion.State.ENABLED:
            return None
        return recorded, self.ctx.secret_values.get(self.secret) if self.configured() is not None else None

    def _pinned_version(self) -> str | None:
        """The version the stack uses: the one recorded in state if it is still enabled, else the newest enabled."""
        from google.cloud.secretmanager_v1 import SecretVersion

        enabled = {v for v, state in self.versions() if state == SecretVersion.State.ENABLED}
        recorded = self.ctx.fact(self.key, "version")
        if recorded in enabled:
            return recorded
        return max(enabled, key=int) if enabled else None

    def owned_fields(self) -> list[Owned]:
        owned = [
            Owned(
                "replication",
                {"automatic": {}},
                lambda a: {"automatic": {}} if "automatic" in a["secret"].replication else {"userManaged": {}},
                mode="refuse",
                refusal=f"Secret {self.secret_id} exists with user-managed replication; mlflow-gcp makes its "
                "secrets with automatic replication and never recreates one.",
                hint="Delete that secret if it is not in use, or choose another name or env.",
            ),
            Owned("labels", self.ctx.names.labels, lambda a: dict(a["secret"].labels), mode="labels"),
            # A secret without an enabled version has nothing for Cloud Run to pin: a new version is added.
            Owned(ENABLED_VERSION, True, lambda a: a["version"] is not None),
        ]
        if (configured := self.configured()) is not None:
            owned.append(Owned(VALUE, configured, lambda a: a.get("value")))
        return owned

    def create(self) -> Any:
        sm = self.ctx.clients.secrets
        body = fields.body([f for f in self.owned_fields() if f.path in ("replication", "labels")])
        secret = self.ctx.api(
            f"secretmanager.secrets.create {self.secret_id}",
            sm.create_secret,
            request={"parent": f"projects/{self.ctx.names.project}", "secret_id": self.secret_id, "secret": body},
        )
        return {"secret": secret, "version": self.add_version(self.value())}

    def update(self, actual: Any, changes: list[Change]) -> Any:
        sm = self.ctx.clients.secrets
        paths = {c.field for c in changes}
        secret = actual["secret"]
        if "labels" in paths:
            body = fields.apply(self.owned_fields(), {"name": self.id(), "labels": dict(secret.labels)}, ["labels"])
            secret = self.ctx.api(
                f"secretmanager.secrets.update {self.secret_id}",
                sm.update_secret,
                request={"secret": body, "update_mask": {"paths": ["labels"]}},
            )
        version = actual["version"]
        if paths & {ENABLED_VERSION, VALUE}:
            wanted = next((f.desired for f in self.owned_fields() if f.path == VALUE), None)
            version = self.add_version(wanted if wanted is not None else self.value())
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

    # --- its versions (password rotation adds, reads and retires them one by one) ---------------------------

    def version_name(self, version: str) -> str:
        return f"{self.id()}/versions/{version}"

    def versions(self) -> list[tuple[str, Any]]:
        """Every version as (number, SecretVersion.State)."""
        sm = self.ctx.clients.secrets
        listed = self.ctx.api(
            f"secretmanager.versions.list {self.secret_id}", sm.list_secret_versions, parent=self.id()
        )
        return [(v.name.rsplit("/", 1)[1], v.state) for v in listed]

    def access(self, version: str) -> str:
        """The value at an explicit version (or "latest"), always from Secret Manager."""
        return self._on_version("access", version).payload.data.decode()

    def disable_version(self, version: str) -> None:
        self._on_version("disable", version)

    def destroy_version(self, version: str) -> None:
        """Cannot be undone: the value is gone."""
        self._on_version("destroy", version)

    def _on_version(self, verb: str, version: str) -> Any:
        """``secretmanager.versions.<verb>`` on one version (the client's ``<verb>_secret_version``)."""
        sm = self.ctx.clients.secrets
        return self.ctx.api(
            f"secretmanager.versions.{verb} {self.secret_id}/{version}",
            getattr(sm, f"{verb}_secret_version"),
            name=self.version_name(version),
        )

    def delete(self, actual: Any) -> None:
        sm = self.ctx.clients.secrets
        self.ctx.api(f"secretmanager.secrets.delete {self.secret_id}", sm.delete_secret, name=self.id())

    def facts(self, actual: Any) -> dict[str, Any]:
        if "value" in actual:  # read at the pinned version: what `up`'s serving check logs in with, without a re-read
            self.ctx.secret_values.setdefault(self.secret, actual["value"])
        return {"id": self.id(), "version": actual["version"]}

    def planned_facts(self) -> dict[str, Any]:
        return {"id": self.id(), "version": "(new)"}


def stack_secrets(ctx: Any) -> dict[str, Any]:
    """The project's secrets whose names hold the stack's prefix, by secret id: one secrets.list (filtered by name,
    cloud.google.com/secret-manager/docs/filtering) that, in the read wave, answers every secret step (reads.py)."""
    n = ctx.names
    parent = f"projects/{n.project}"
    what = "secretmanager.secrets.list"
    name_filter = f'name:"{n.prefix}-"'

    def read() -> dict[str, Any]:
        sm = ctx.clients.secrets
        listed = ctx.api(what, lambda: list(sm.list_secrets(request={"parent": parent, "filter": name_filter})))
        # Names come back with the project's number, not its id: matched by the secret id.
        return {s.name.rsplit("/", 1)[1]: s for s in listed}

    return reads.shared(what, f"{parent}/secrets?filter={name_filter}", read)


def read_secret(ctx: Any, secret: str, version: str | None = None) -> str:
    """A secret's value: from this run's memory when we just made (or read) it, else from Secret Manager."""
    if secret in ctx.secret_values:
        return ctx.secret_values[secret]
    return resource(ctx, secret).access(str(version or ctx.fact(f"secret:{secret}", "version") or "latest"))


def resource(ctx: Any, secret: str) -> Secret:
    """The resource of one of Names.secrets, by its name there ("db-password")."""
    return next(cls for cls in ALL if cls.secret == secret)(ctx)


class DbPassword(Secret):
    key = "secret:db-password"
    secret = "db-password"
    # The only way into the kept database: kept with the data.
    holds_data = True


class AdminUsername(Secret):
    key = "secret:admin-username"
    secret = "admin-username"
    # The kept auth database knows the admin by these credentials: they stay with it (a new pair after
    # `down` would lock the admin out of the kept data).
    holds_data = True


class AdminPassword(Secret):
    key = "secret:admin-password"
    secret = "admin-password"
    holds_data = True


class FlaskSecretKey(Secret):
    key = "secret:flask-secret-key"
    secret = "flask-secret-key"


ALL: tuple[type[Secret], ...] = (DbPassword, AdminUsername, AdminPassword, FlaskSecretKey)
