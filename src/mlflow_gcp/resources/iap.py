"""Identity-Aware Proxy on the Cloud Run service (``access.mode = "iap"``): who may pass it, and which programs'
ID tokens it takes. IAP itself is turned on by the service's own ``iapEnabled`` (resources/run.py) and the IAP
service agent's invoker binding (resources/iam.py ``ServiceInvoker``).

Cloud Run's direct IAP integration needs no load balancer: the IAP resource of a service is
``projects/PROJECT_NUMBER/iap_web/cloud_run-REGION/services/SERVICE`` (magic-modules
mmv1/products/iap/CloudRunService.yaml; gcloud's --log-http shows the number), with its own IAM policy
(``roles/iap.httpsResourceAccessor``) and settings (iap v1 ``getIapSettings``/``updateIapSettings``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..engine import Change, Resource
from .iam import Grant, _edit_json, _json_pairs, _PolicyBindings

ACCESSOR_ROLE = "roles/iap.httpsResourceAccessor"
CLIENTS_PATH = "accessSettings.oauthSettings.programmaticClients"


def iap_resource(ctx: Any) -> str:
    n = ctx.names
    return f"projects/{ctx.fact('project', 'number')}/iap_web/cloud_run-{n.region}/services/{n.service}"


def audience(ctx: Any) -> str:
    """The ``aud`` of the assertion IAP signs for this service (Cloud Run direct integration:
    ``/projects/PROJECT_NUMBER/locations/REGION/services/SERVICE``; cloud.google.com/iap/docs/signed-headers-howto,
    confirmed by decoded assertions from real deployments)."""
    n = ctx.names
    return f"/projects/{ctx.fact('project', 'number')}/locations/{n.region}/services/{n.service}"


def wanted(ctx: Any) -> bool:
    """Whether the IAP steps belong to this run's stack: in iap mode, and after it while grants we made remain
    (switching back to basic revokes them)."""
    recorded = (ctx.state.get(AccessBindings.key) or {}).get("granted") or {}
    return ctx.config.access.mode == "iap" or any(recorded.values())


class AccessBindings(_PolicyBindings):
    """``access.members`` may pass IAP; in basic mode, the members we granted lose it."""

    key = "iap:access"
    kind = "IAP access bindings"
    depends_on = ("run", "apis")
    roles = (ACCESSOR_ROLE,)
    api_name = "iap"
    _pairs = staticmethod(_json_pairs)
    _apply = staticmethod(_edit_json)

    def id(self) -> str:
        return iap_resource(self.ctx)

    def targets(self) -> list[str]:
        return [self.id()]

    def wanted(self) -> set[Grant]:
        access = self.ctx.config.access
        members = access.members if access.mode == "iap" else []
        return {(self.id(), ACCESSOR_ROLE, m) for m in members}

    def _read(self, target: str) -> Any:
        body = {"options": {"requestedPolicyVersion": 3}}
        return self.ctx.clients.iap.v1().getIamPolicy(resource=target, body=body).execute()

    def _write(self, target: str, policy: Any) -> Any:
        return self.ctx.clients.iap.v1().setIamPolicy(resource=target, body={"policy": policy}).execute()


class ProgrammaticClients(Resource):
    """The OAuth clients whose ID tokens IAP takes from programs (``programmaticClients``): with the Google-managed
    OAuth client "programmatic access is blocked by default. You need to add the OAuth 2.0 client to an allowlist"
    (cloud.google.com/iap/docs/sharing-oauth-clients#programmatic_access). We add ours (config.AccessConfig.audiences)
    and record them; clients others listed stay, and ours that left the config go."""

    key = "iap:clients"
    kind = "IAP programmatic clients"
    depends_on = ("run", "apis")
    deleted_with = "run"
    fact_name: ClassVar[str] = "clients"

    def id(self) -> str:
        return f"{iap_resource(self.ctx)}:iapSettings"

    def _wanted(self) -> list[str]:
        return self.ctx.config.access.audiences if self.ctx.config.access.mode == "iap" else []

    def _recorded(self) -> list[str]:
        return list(self.ctx.fact(self.key, self.fact_name) or [])

    @staticmethod
    def _live(settings: dict[str, Any]) -> list[str]:
        return list(settings.get("accessSettings", {}).get("oauthSettings", {}).get("programmaticClients", []))

    def _read(self) -> dict[str, Any]:
        return self.ctx.clients.iap.v1().getIapSettings(name=iap_resource(self.ctx)).execute()

    def _desired(self, settings: dict[str, Any]) -> list[str]:
        live = self._live(settings)
        wanted = self._wanted()
        gone = set(self._recorded()) - set(wanted)
        return [c for c in live if c not in gone] + [c for c in wanted if c not in live]

    def find(self) -> Any | None:
        from ..retry import http_status

        try:
            return self.ctx.api("iap.getIapSettings", self._read)
        except Exception as exc:
            if http_status(exc) == 404:
                return None
            raise

    def diff(self, actual: Any) -> list[Change]:
        live, desired = self._live(actual), self._desired(actual)
        return [] if live == desired else [Change(CLIENTS_PATH, live, desired)]

    def create(self) -> Any:
        return self.update({}, [])

    def update(self, actual: Any, changes: list[Change]) -> Any:
        def write() -> Any:
            current = self._read()
            body = {"accessSettings": {"oauthSettings": {"programmaticClients": self._desired(current)}}}
            return (
                self.ctx.clients.iap.v1()
                .updateIapSettings(name=iap_resource(self.ctx), updateMask=CLIENTS_PATH, body=body)
                .execute()
            )

        return self.ctx.api("iap.updateIapSettings", write)

    def delete(self, actual: Any) -> None:
        # The settings go with the service; nothing of ours outlives it.
        return None

    def facts(self, actual: Any) -> dict[str, Any]:
        live = set(self._live(actual))
        ours = [c for c in dict.fromkeys([*self._wanted(), *self._recorded()]) if c in live]
        return {"id": self.id(), self.fact_name: ours}
