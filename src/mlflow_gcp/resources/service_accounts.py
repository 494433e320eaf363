"""Service accounts: the Cloud Run runtime identity (and, opt-in, a client account with a key)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from ..engine import Change, Resource
from ..retry import http_status
from ._common import field_change


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

    def diff(self, actual: Any) -> list[Change]:
        return field_change("displayName", actual.get("displayName"), self.display_name)

    def create(self) -> Any:
        from googleapiclient.errors import HttpError

        iam = self.ctx.clients.iam
        body = {"accountId": self.account_id, "serviceAccount": {"displayName": self.display_name}}
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
        """A new service account is invisible to IAM for a while (GET answers 403, policy writes 400): wait for
        several consecutive successful reads, as Terraform does, before anything grants it a role."""
        from googleapiclient.errors import HttpError

        iam = self.ctx.clients.iam
        deadline = time.monotonic() + self.ctx.deadline
        streak, delay = 0, 0.2
        while streak < needed:
            try:
                iam.projects().serviceAccounts().get(name=self.id()).execute()
                streak += 1
                time.sleep(0.1)
            except HttpError as exc:
                if http_status(exc) not in (403, 404, 429, 500, 503) or time.monotonic() > deadline:
                    raise
                streak, delay = 0, min(delay * 2, 5.0)
                time.sleep(delay)

    def update(self, actual: Any, changes: list[Change]) -> Any:
        iam = self.ctx.clients.iam
        body = {
            "serviceAccount": {"displayName": self.display_name, "etag": actual.get("etag")},
            "updateMask": "displayName",
        }
        return self.ctx.api(
            f"iam.serviceAccounts.patch {self.email}",
            iam.projects().serviceAccounts().patch(name=self.id(), body=body).execute,
        )

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
