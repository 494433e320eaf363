"""The invoker check at a service's front end: ``roles/run.invoker`` (or ``allUsers``, or
``invokerIamDisabled``), with the caller named by its identity token."""

from __future__ import annotations

from .common import (
    SERVICE_KIND,
)
from .frontend import decode_jwt_email, google_error_page

INVOKER = "roles/run.invoker"


class Invoker:
    """Who may call a :class:`CloudRunApi` service."""

    def _authorize(self, name: str, headers: dict[str, str], path: str) -> tuple[int, str] | None:
        """Cloud Run's invoker check: allUsers (or invokerIamDisabled) lets anyone in; otherwise the
        caller's identity token must name a member holding roles/run.invoker."""
        svc = self.world.store.get(SERVICE_KIND, name)
        if svc is None:
            return 404, google_error_page(404, "Not Found", f"The requested URL <code>{path}</code> was not found.")
        if svc.get("invokerIamDisabled"):
            return None
        resources = [name, f"projects/{name.split('/')[1]}"]
        if self.world.iam.has_role(resources, "allUsers", INVOKER):
            return None
        forbidden = (
            403,
            google_error_page(
                403,
                "Forbidden",
                f"Your client does not have permission to get URL <code>{path}</code> from this server.",
            ),
        )
        auth = headers.get("x-serverless-authorization") or headers.get("authorization") or ""
        if not auth:
            return forbidden
        scheme, _, token = auth.partition(" ")
        email = decode_jwt_email(token.strip()) if scheme.lower() == "bearer" else None
        if email is None:
            return 401, google_error_page(
                401, "Unauthorized", f"Your client does not have permission to the requested URL <code>{path}</code>."
            )
        member = ("serviceAccount:" if email.endswith(".gserviceaccount.com") else "user:") + email
        for who in (member, "allAuthenticatedUsers"):
            if self.world.iam.has_role(resources, who, INVOKER):
                return None
        return forbidden
