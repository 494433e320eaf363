"""Opt-in (`--create-client-key`): a client service account that may write and read artifacts directly, and a JSON
key for it, kept in Secret Manager (never on disk or in state). Off by default: many organizations forbid key
creation (constraint iam.disableServiceAccountKeyCreation, enforced by default on organizations created since 2024)."""

from __future__ import annotations

import base64
from typing import Any

from ..engine import Resource
from ..errors import GcpPermissionError
from ..retry import error_text, http_status
from ._common import get_or_none
from .service_accounts import ServiceAccount

KEY_SECRET_SUFFIX = "client-key"


class ClientAccount(ServiceAccount):
    key = "sa:client"
    display_name = "MLflow client with direct artifact access (mlflow-gcp)"

    @property
    def account_id(self) -> str:
        return self.ctx.names.client_account_id


class ClientKey(Resource):
    """The key's JSON lives only in the secret `<name>-<env>-client-key`; state records the key's id."""

    key = "client-key"
    kind = "client service account key"
    depends_on = ("sa:client",)

    @property
    def secret_name(self) -> str:
        return f"projects/{self.ctx.names.project}/secrets/{self.ctx.names.prefix}-{KEY_SECRET_SUFFIX}"

    def id(self) -> str:
        return self.secret_name

    def find(self) -> Any | None:
        sm = self.ctx.clients.secrets
        listed = get_or_none(
            self.ctx, "secretmanager.versions.list client-key", sm.list_secret_versions, parent=self.secret_name
        )
        if listed is None:
            return None
        versions = list(listed)
        enabled = [v for v in versions if v.state == 1]
        return {"version": enabled[0].name.rsplit("/", 1)[1]} if enabled else None

    def create(self) -> Any:
        from google.api_core import exceptions
        from googleapiclient.errors import HttpError

        iam = self.ctx.clients.iam
        account = f"projects/{self.ctx.names.project}/serviceAccounts/{self.ctx.names.client_account}"
        try:
            created = self.ctx.api(
                "iam.serviceAccounts.keys.create",
                iam.projects().serviceAccounts().keys().create(name=account, body={}).execute,
            )
        except HttpError as exc:
            if http_status(exc) in (400, 403) and "not allowed" in error_text(exc).lower():
                raise GcpPermissionError(
                    f"Google refused to create a service account key: {error_text(exc)}",
                    hint="Your organization enforces iam.disableServiceAccountKeyCreation; drop --create-client-key "
                    "and use your own identity (gcloud auth application-default login) or workload identity.",
                ) from None
            raise
        sm = self.ctx.clients.secrets
        try:
            self.ctx.api(
                "secretmanager.secrets.create client-key",
                sm.create_secret,
                request={
                    "parent": f"projects/{self.ctx.names.project}",
                    "secret_id": self.secret_name.rsplit("/", 1)[1],
                    "secret": {"replication": {"automatic": {}}, "labels": self.ctx.names.labels},
                },
            )
        except exceptions.Conflict:
            pass  # left by a run that died before adding the version
        data = base64.b64decode(created["privateKeyData"])
        version = self.ctx.api(
            "secretmanager.secrets.addVersion client-key",
            sm.add_secret_version,
            request={"parent": self.secret_name, "payload": {"data": data}},
        )
        return {"version": version.name.rsplit("/", 1)[1], "key_id": created["name"].rsplit("/", 1)[1]}

    def delete(self, actual: Any) -> None:
        sm = self.ctx.clients.secrets
        self.ctx.api("secretmanager.secrets.delete client-key", sm.delete_secret, name=self.secret_name)
        # The key goes with its service account, deleted by the next step.

    def facts(self, actual: Any) -> dict[str, Any]:
        facts = {"id": self.id(), "version": actual["version"]}
        key_id = actual.get("key_id") or self.ctx.fact(self.key, "key_id")
        if key_id:
            facts["key_id"] = key_id
        return facts
