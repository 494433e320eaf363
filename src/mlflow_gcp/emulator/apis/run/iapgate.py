"""Identity-Aware Proxy in front of a Cloud Run service that has ``iapEnabled`` (Cloud Run's direct IAP
integration, GA since 2026-02: magic-modules commit ec55feb9c0).

For each request, as IAP does (answers measured by third parties, see the issue 12 contract; IAP's own answers
carry ``x-goog-iap-generated-response: true``):

1. The credential: an OIDC ID token in ``Proxy-Authorization: Bearer`` (which leaves ``Authorization`` to the
   application), else ``Authorization: Bearer``, else IAP's session cookie from the browser sign-in. None:
   a browser (``Accept: text/html``) is redirected (302) to the sign-in page, which stands for Google's at
   ``/_emulator/iap/signin``; anything else gets 401 "Invalid IAP credentials: empty token".
2. The token must be signed by the emulator's Google key (``core/identity.py``; unlike the plain invoker check,
   which trusts an identity token unverified), unexpired, from ``https://accounts.google.com``, and for an
   audience IAP takes: a program's token one of ``programmaticClients`` in the resource's iapSettings (or its
   custom OAuth client), the cookie's token the browser client. 401 "Invalid IAP credentials: Unable to parse
   JWT" / "Invalid JWT audience" / (signature, issuer, expiry: wording not recorded) otherwise.
3. The principal must hold roles/iap.httpsResourceAccessor on the IAP resource or the project, as itself, a
   ``group:`` it is in (control setting ``groups``) or its ``domain:`` -- else 403.
4. IAP then calls the service as its service agent ``service-NUMBER@gcp-sa-iap.iam.gserviceaccount.com``,
   which needs roles/run.invoker on it (unless ``invokerIamDisabled``) -- else Cloud Run's own 403.
5. The request goes on without the client's IAP credential (``Authorization`` only when it carried the token;
   ``Proxy-Authorization``, a hop-by-hop header, never goes on; the session cookie is removed from
   ``Cookie``) and without any client-sent ``x-goog-iap-jwt-assertion``/``x-goog-authenticated-user-*``,
   with ``X-Goog-Authenticated-User-Email``/``-Id: accounts.google.com:...`` and a fresh
   ``X-Goog-IAP-JWT-Assertion`` signed with the emulator's IAP key (aud
   ``/projects/NUMBER/locations/REGION/services/SERVICE``).

The browser flow ends at the service's ``/_gcp_iap/callback?code=...&continue=PATH``, answered here: the code
from the sign-in page is redeemed, a session cookie ``GCP_IAP_AUTH_TOKEN_...`` (HttpOnly; not Secure, the
front ends speak plain HTTP) gets an ID token for the browser client, and the browser goes back to PATH.
``/_gcp_iap/clear_login_cookie`` signs out (IAP's special URL, cloud.google.com/iap/docs/special-urls-howto).
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import parse_qs

from ...core.identity import TokenError
from .common import INVOKER
from .frontend import Verdict, forbidden_page, request_cookies

#: Marks the answers IAP itself gives (third-party measurements of IAP in front of Cloud Run).
_GENERATED = ("x-goog-iap-generated-response", "true")
#: Identity headers a client may not forge: IAP removes what the client sent and sets its own.
_IAP_HEADERS = frozenset(
    {"x-goog-iap-jwt-assertion", "x-goog-authenticated-user-email", "x-goog-authenticated-user-id"}
)
_REASONS = {
    "parse": "Unable to parse JWT",
    # The three below are the emulator's words: IAP's are not recorded.
    "signature": "Invalid JWT signature",
    "issuer": "Invalid JWT issuer",
    "expired": "Expired JWT",
}


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _iap_answer(status: int, message: str, *headers: tuple[str, str]) -> Verdict:
    return Verdict(status, message, (_GENERATED, *headers))


def _access_denied(email: str) -> Verdict:
    # IAP answers an ungranted principal with 403 and an HTML page saying access is denied; its exact body is
    # not confirmed, so this one only says the same.
    page = (
        "<!doctype html>\n<html><head><title>Access denied</title></head>\n<body>\n"
        "<h1>You don't have access</h1>\n"
        f"<p>{html.escape(email)} does not have access to this resource. Ask its administrator for the "
        "IAP-secured Web App User role.</p>\n</body></html>\n"
    )
    return _iap_answer(403, page)


class IapGate:
    """IAP's decisions for :class:`CloudRunApi` services with ``iapEnabled`` (a mixin; see the module docstring)."""

    def _iap_gate(self, svc: dict[str, Any], headers: dict[str, str], target: str) -> Verdict:
        iap = self.world.api("iap")
        name = svc["name"]
        resource = iap.resource_for(name)
        cookie = iap.cookie_name(resource)
        path, _, query = target.partition("?")
        if path == "/_gcp_iap/callback":
            return self._iap_callback(svc, resource, cookie, query)
        if path == "/_gcp_iap/clear_login_cookie":
            expired = ("Set-Cookie", f"{cookie}=; Path=/; Max-Age=0; HttpOnly")
            return _iap_answer(200, "<html><body>You have been signed out.</body></html>\n", expired)

        browser = "text/html" in headers.get("accept", "")
        token, source = _bearer(headers.get("proxy-authorization", "")), "proxy-authorization"
        if token is None:
            token, source = _bearer(headers.get("authorization", "")), "authorization"
        if token is None:
            token, source = request_cookies(headers.get("cookie", "")).get(cookie) or None, "cookie"
        if token is None:
            if browser:
                location = iap.signin_url(f"{svc.get('uri', '')}{target}")
                return _iap_answer(302, "", ("Location", location))
            return _iap_answer(401, "Invalid IAP credentials: empty token")
        try:
            claims = self.world.identity.verify_id_token(token)
        except TokenError as exc:
            if source == "cookie" and browser:
                # An expired session sends the browser to sign in again.
                return _iap_answer(302, "", ("Location", iap.signin_url(f"{svc.get('uri', '')}{target}")))
            return _iap_answer(401, f"Invalid IAP credentials: {_REASONS.get(exc.reason, 'Unable to parse JWT')}")
        allowed = {iap.browser_client(resource)} if source == "cookie" else iap.programmatic_audiences(resource)
        if claims.get("aud") not in allowed:
            return _iap_answer(401, "Invalid IAP credentials: Invalid JWT audience")
        email = claims["email"]
        project_id = name.split("/")[1]
        if not iap.allows(resource, project_id, email):
            return _access_denied(email)

        number = resource.split("/")[1]
        agent = f"serviceAccount:{iap.agent(number)}"
        resources = [name, f"projects/{project_id}"]
        if not svc.get("invokerIamDisabled") and not any(
            self.world.iam.has_role(resources, who, INVOKER) for who in (agent, "allUsers", "allAuthenticatedUsers")
        ):
            # Cloud Run refuses IAP's call, not IAP: Cloud Run's own page, without IAP's marker.
            return Verdict(403, forbidden_page(path))

        parts = name.split("/")
        audience = f"/projects/{number}/locations/{parts[3]}/services/{parts[5]}"
        drop = _IAP_HEADERS | ({"authorization"} if source == "authorization" else frozenset())
        return Verdict(
            drop=frozenset(drop),
            drop_cookies=frozenset({cookie}),
            add=(
                ("X-Goog-Authenticated-User-Email", f"accounts.google.com:{email}"),
                ("X-Goog-Authenticated-User-Id", f"accounts.google.com:{claims['sub']}"),
                ("X-Goog-IAP-JWT-Assertion", self.world.identity.iap_assertion(email, audience)),
            ),
        )

    def _iap_callback(self, svc: dict[str, Any], resource: str, cookie: str, query: str) -> Verdict:
        """The end of the browser sign-in: a session cookie for the signed-in account, then back to the page."""
        iap = self.world.api("iap")
        args = parse_qs(query)
        code = (args.get("code") or [""])[0]
        back = (args.get("continue") or ["/"])[0]
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        email = iap.redeem(code, svc["name"])
        if email is None:
            return _iap_answer(401, "Invalid IAP credentials: the sign-in could not be completed; sign in again.")
        token = self.world.identity.id_token(email, iap.browser_client(resource))
        return _iap_answer(
            302,
            "",
            ("Set-Cookie", f"{cookie}={token}; Path=/; HttpOnly; SameSite=Lax"),
            ("Location", back),
        )
