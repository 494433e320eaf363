"""Opt-in (`--create-client-key`): a client service account that may write and read artifacts directly, and a JSON
key for it, kept in Secret Manager (never on disk or in state). Off by default: many organizations forbid key
creation (constraint iam.disableServiceAccountKeyCreation, enforced by default on organizations created since 2024)."""

from __future__ import annotations

import base64
import json
from typing import Any

from ..engine import Change, Resource
from ..errors import GcpPermissionError
from ..retry import error_text, http_status
from ._common import get_or_none, is_not_found
from .service_accounts import ServiceAccount

KEY_SECRET_SUFFIX = "client-key"


class ClientAccount(ServiceAccount):
    key = "sa:client"
    display_name = "MLflow client with direct artifact access (mlflow-gcp)"

    @property
    def account_id(self) -> str:
        return self.ctx.names.client_account_id


#: The client account's user-managed keys, as one owned pseudo-field: exactly the key held in the secret.
KEYS = "user-managed keys"


class ClientKey(Resource):
    """The key's JSON lives only in the secret `<name>-<env>-client-key`; state records the secret version and the
    key's id (never the key). The account has exactly one user-managed key, the one in the newest enabled version
    of the secret (its JSON's ``private_key_id`` names it): a key created by a run killed before storing it is
    held by nobody and is deleted by the next run, as is any other key of the account."""

    key = "client-key"
    kind = "client service account key"
    depends_on = ("sa:client",)

    @property
    def secret_name(self) -> str:
        return f"projects/{self.ctx.names.project}/secrets/{self.ctx.names.prefix}-{KEY_SECRET_SUFFIX}"

    @property
    def account(self) -> str:
        return f"projects/{self.ctx.names.project}/serviceAccounts/{self.ctx.names.client_account}"

    def id(self) -> str:
        return self.secret_name

    # --- reading ------------------------------------------------------------------------------------------

    def _versions(self) -> list[tuple[int, bool]] | None:
        """The secret's versions (number, enabled), or None when there is no secret."""
        from google.cloud.secretmanager_v1 import SecretVersion

        sm = self.ctx.clients.secrets
        listed = get_or_none(
            self.ctx, "secretmanager.versions.list client-key", sm.list_secret_versions, parent=self.secret_name
        )
        if listed is None:
            return None
        return [(int(v.name.rsplit("/", 1)[1]), v.state == SecretVersion.State.ENABLED) for v in listed]

    def _held_key_id(self, version: int) -> str | None:
        """The id of the key stored in ``version`` (its JSON's ``private_key_id``); None if it holds no key JSON.
        The value is parsed in memory only; nothing of it is kept or shown."""
        sm = self.ctx.clients.secrets
        response = self.ctx.api(
            "secretmanager.versions.access client-key",
            sm.access_secret_version,
            name=f"{self.secret_name}/versions/{version}",
        )
        try:
            key_id = json.loads(response.payload.data).get("private_key_id")
        except (ValueError, AttributeError):
            return None
        return key_id if isinstance(key_id, str) and key_id else None

    def _user_keys(self) -> list[str]:
        """The ids of the client account's user-managed keys ([] if the account is gone)."""
        iam = self.ctx.clients.iam
        listed = get_or_none(
            self.ctx,
            "iam.serviceAccounts.keys.list client",
            iam.projects().serviceAccounts().keys().list(name=self.account, keyTypes=["USER_MANAGED"]).execute,
        )
        return sorted(k["name"].rsplit("/", 1)[1] for k in (listed or {}).get("keys", []))

    def find(self) -> Any | None:
        versions = self._versions()
        enabled = [n for n, on in versions or [] if on]
        if not enabled:
            return None  # no secret, or one a killed run left without a version: create makes the key and stores it
        version = max(enabled)
        return {"version": str(version), "key_id": self._held_key_id(version), "keys": self._user_keys()}

    def diff(self, actual: Any) -> list[Change]:
        held = actual["key_id"]
        desired = [held] if held in actual["keys"] else ["(a new key, stored in the secret)"]
        return [] if actual["keys"] == desired else [Change(KEYS, actual["keys"], desired)]

    # --- changing -----------------------------------------------------------------------------------------

    def create(self) -> Any:
        from google.api_core import exceptions

        key_id, data = self._new_key()
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
        version = self._store(data)
        return {"version": version, "key_id": key_id, "keys": self._keep_only(key_id)}

    def update(self, actual: Any, changes: list[Change]) -> Any:
        if actual["key_id"] in actual["keys"]:
            return {**actual, "keys": self._keep_only(actual["key_id"])}
        # The key in the secret is gone (deleted outside mlflow-gcp): a new one, then the old versions go.
        key_id, data = self._new_key()
        version = self._store(data)
        self._disable_versions_before(int(version))
        return {"version": version, "key_id": key_id, "keys": self._keep_only(key_id)}

    def _new_key(self) -> tuple[str, bytes]:
        """A new user-managed key: its id and its JSON (memory only)."""
        from googleapiclient.errors import HttpError

        iam = self.ctx.clients.iam
        try:
            created = self.ctx.api(
                "iam.serviceAccounts.keys.create",
                iam.projects().serviceAccounts().keys().create(name=self.account, body={}).execute,
            )
        except HttpError as exc:
            if http_status(exc) in (400, 403) and "not allowed" in error_text(exc).lower():
                raise GcpPermissionError(
                    f"Google refused to create a service account key: {error_text(exc)}",
                    hint="Your organization enforces iam.disableServiceAccountKeyCreation; drop --create-client-key "
                    "and use your own identity (gcloud auth application-default login) or workload identity.",
                ) from None
            raise
        return created["name"].rsplit("/", 1)[1], base64.b64decode(created["privateKeyData"])

    def _store(self, data: bytes) -> str:
        """A new version of the secret holding ``data``, with its CRC32C so Secret Manager checks what it got."""
        import google_crc32c

        sm = self.ctx.clients.secrets
        version = self.ctx.api(
            "secretmanager.secrets.addVersion client-key",
            sm.add_secret_version,
            request={"parent": self.secret_name, "payload": {"data": data, "data_crc32c": google_crc32c.value(data)}},
        )
        return version.name.rsplit("/", 1)[1]

    def _keep_only(self, key_id: str) -> list[str]:
        """Delete every user-managed key of the account but ``key_id`` (only once that one is stored)."""
        iam = self.ctx.clients.iam
        for other in self._user_keys():
            if other == key_id:
                continue
            try:
                self.ctx.api(
                    f"iam.serviceAccounts.keys.delete client {other}",
                    iam.projects().serviceAccounts().keys().delete(name=f"{self.account}/keys/{other}").execute,
                )
            except Exception as exc:
                if not is_not_found(exc):  # gone already: an earlier attempt's answer was lost
                    raise
        return [key_id]

    def _disable_versions_before(self, version: int) -> None:
        sm = self.ctx.clients.secrets
        for n, enabled in self._versions() or []:
            if enabled and n < version:
                self.ctx.api(
                    f"secretmanager.versions.disable client-key/{n}",
                    sm.disable_secret_version,
                    name=f"{self.secret_name}/versions/{n}",
                )

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
