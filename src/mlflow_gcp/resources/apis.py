"""Service Usage: the APIs the stack needs, enabled in one batchEnable call (at most 20 ids)."""

from __future__ import annotations

from typing import Any

from ..engine import Change, Standing
from ..fields import Owned
from ..naming import BUILD_SERVICES, IAP_SERVICES, SERVICES


class EnabledApis(Standing):
    key = "apis"
    kind = "enabled APIs"
    kept_on_down = "other workloads in the project may use these APIs"

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}/services"

    @property
    def services(self) -> tuple[str, ...]:
        """What the stack needs; Cloud Build (and Logging, where its logs go) only when it builds the image, IAP only
        in iap mode. An API the config no longer needs stays enabled (other workloads may use it)."""
        from .. import builds

        iap = IAP_SERVICES if self.ctx.config.access.mode == "iap" else ()
        return SERVICES + (BUILD_SERVICES if builds.resolve(self.ctx) == "cloudbuild" else ()) + iap

    def find(self) -> dict[str, bool]:
        su = self.ctx.clients.service_usage
        parent = f"projects/{self.ctx.names.project}"
        response = self.ctx.api(
            "serviceusage.services.batchGet",
            su.batch_get_services,
            request={"parent": parent, "names": [f"{parent}/services/{s}" for s in self.services]},
        )
        from google.cloud.service_usage_v1 import State

        return {s.config.name: s.state == State.ENABLED for s in response.services}

    def owned_fields(self) -> list[Owned]:
        services = self.services
        return [Owned("enabled", sorted(services), lambda actual: sorted(s for s in services if actual.get(s)))]

    def update(self, actual: dict[str, bool], changes: list[Change]) -> dict[str, bool]:
        su = self.ctx.clients.service_usage
        disabled = [s for s in self.services if not actual.get(s)]
        op = self.ctx.api(
            "serviceusage.services.batchEnable",
            su.batch_enable_services,
            request={"parent": f"projects/{self.ctx.names.project}", "service_ids": disabled},
        )
        self.ctx.wait(op, self.kind)
        # Calls to a just-enabled API can still answer SERVICE_DISABLED for a while; every later call retries
        # on that (see retry.is_eventually_consistent).
        return {s: True for s in self.services}

    def facts(self, actual: Any) -> dict[str, Any]:
        self.ctx.services_enabled = all(actual.get(s) for s in self.services)
        return {"id": self.id(), "services": list(self.services)}
