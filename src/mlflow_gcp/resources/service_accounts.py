"""Service accounts: the Cloud Run runtime identity (and, opt-in, a client account with a key)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from .. import fields
from ..engine import Change, Resource
from ..fields import Owned, reader
from ..retry import http_status


class ServiceAccount(Resource):
    kind = "service account"
    depends_on = ("apis",)
    display_name: ClassVar[str]

    @property
    def account_id(self) -> str:
        raise NotImplementedError

    @property
    def email(self) -> str:
        return f"{self.account_id}@{self.ctx.names.project}.iam.gserviceaccount.com"

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}/serviceAccounts/{self.email}"

    def _get(self) -> Any:
        iam = self.ctx.clients.iam
        return self.ctx.api(
            f"iam.serviceAccounts.get {self.email}", iam.projects().serviceAccounts().get(name=self.id()).execute
        )

    def find(self) -> Any | None:
        from googleapiclient.errors import HttpError

        try:
            return self._get()
        except HttpError as exc:
            if http_status(exc) == 404:
                return None
            raise

    def owned_fields(self) -> list[Owned]:
        return [Owned("displayName", self.display_name, reader("displayName"))]

    def create(self) -> Any:
        from googleapiclient.errors import HttpError

        iam = self.ctx.clients.iam
        body = {"accountId": self.account_id, "serviceAccount": fields.body(self.owned_fields())}
        request = iam.projects().serviceAccounts().create(name=f"projects/{self.ctx.names.project}", body=body)
        try:
            account = self.ctx.api(f"iam.serviceAccounts.create {self.email}", request.execute)
        except HttpError as exc:
            if http_status(exc) != 409:  # created by a run that died before recording it
                raise
            account = self._get()
        self._wait_visible()
        return account

    def _wait_visible(self, needed: int = 3) -> None:
        """A new service account is invisible to IAM for a while (GET answers 403 or 404, policy writes 400): wait
        for ``needed`` consecutive successful reads, as Terraform does, before anything grants it a role. One
        attempt is that streak of reads; a failed read ends it, and the retry policy backs off and starts over."""
        iam = self.ctx.clients.iam

        def streak() -> None:
            for i in range(needed):
                if i:
                    time.sleep(0.1)  # spaced reads, so that several of IAM's replicas answer
                iam.projects().serviceAccounts().get(name=self.id()).execute()

        self.ctx.api(
            f"iam.serviceAccounts.get {self.email} (until visible)",
            streak,
            retry_on=lambda exc: http_status(exc) in (403, 404),
        )

    def update(self, actual: Any, changes: list[Change]) -> Any:
        iam = self.ctx.clients.iam
        paths = [c.field for c in changes]
        body = {
            "serviceAccount": {**fields.body(self.owned_fields(), only=paths), "etag": actual.get("etag")},
            "updateMask": ",".join(paths),
        }
        patched = self.ctx.api(
            f"iam.serviceAccounts.patch {self.email}",
            iam.projects().serviceAccounts().patch(name=self.id(), body=body).execute,
        )
        # The answer holds only the name and the patched fields (recorded: tests/golden/recordings/
        # iam-serviceaccount.log), not uniqueId or email: the rest is as it was.
        return {**actual, **patched}

    def delete(self, actual: Any) -> None:
        iam = self.ctx.clients.iam
        self.ctx.api(
            f"iam.serviceAccounts.delete {self.email}", iam.projects().serviceAccounts().delete(name=self.id()).execute
        )

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "email": self.email, "unique_id": actual.get("uniqueId")}

    def planned_facts(self) -> dict[str, Any]:
        return {"id": self.id(), "email": self.email}


class RuntimeAccount(ServiceAccount):
    key = "sa:runtime"
    display_name = "MLflow server on Cloud Run (mlflow-gcp)"

    @property
    def account_id(self) -> str:
        return self.ctx.names.runtime_account_id
