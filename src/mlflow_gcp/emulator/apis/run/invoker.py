"""The invoker check at a service's front end: ``roles/run.invoker`` (or ``allUsers``, or
``invokerIamDisabled``), with the caller named by its identity token; or, when the service has
``iapEnabled``, Identity-Aware Proxy in front of it (``iapgate.py``)."""

from __future__ import annotations

from .common import INVOKER, SERVICE_KIND
from .frontend import Verdict, decode_jwt_email, forbidden_page, google_error_page
from .iapgate import IapGate


class Invoker(IapGate):
    """Who may call a :class:`CloudRunApi` service."""

    def _authorize(self, name: str, headers: dict[str, str], target: str) -> Verdict | None:
        """Cloud Run's invoker check: allUsers (or invokerIamDisabled) lets anyone in; otherwise the
        caller's identity token must name a member holding roles/run.invoker. With IAP on, IAP decides
        (and its service agent is the one that needs roles/run.invoker)."""
        path = target.split("?", 1)[0]
        svc = self.world.store.get(SERVICE_KIND, name)
        if svc is None:
            return Verdict(
                404, google_error_page(404, "Not Found", f"The requested URL <code>{path}</code> was not found.")
            )
        if svc.get("iapEnabled"):
            return self._iap_gate(svc, headers, target)
        if svc.get("invokerIamDisabled"):
            return None
        resources = [name, f"projects/{name.split('/')[1]}"]
        if self.world.iam.has_role(resources, "allUsers", INVOKER):
            return None
        forbidden = Verdict(403, forbidden_page(path))
        auth = headers.get("x-serverless-authorization") or headers.get("authorization") or ""
        if not auth:
            return forbidden
        scheme, _, token = auth.partition(" ")
        email = decode_jwt_email(token.strip()) if scheme.lower() == "bearer" else None
        if email is None:
            return Verdict(
                401,
                google_error_page(
                    401,
                    "Unauthorized",
                    f"Your client does not have permission to the requested URL <code>{path}</code>.",
                ),
            )
        member = ("serviceAccount:" if email.endswith(".gserviceaccount.com") else "user:") + email
        for who in (member, "allAuthenticatedUsers"):
            if self.world.iam.has_role(resources, who, INVOKER):
                return None
        return forbidden
