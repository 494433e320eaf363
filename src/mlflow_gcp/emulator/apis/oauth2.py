"""Google's OAuth 2.0 token endpoint and the credential files that point at it, on the control plane.

Google's official libraries get tokens from ``token_uri`` (https://oauth2.googleapis.com/token). The emulator
serves that protocol at ``/_emulator/oauth2/token``, signing ID tokens with the emulator's Google key
(``core/identity.py``), and hands out credential files whose ``token_uri`` is its own:

- ``POST /_emulator/identities`` ``{"email", "type": "authorized_user" | "service_account"}`` -> the content of an
  Application Default Credentials file. ``authorized_user`` is what ``gcloud auth application-default login``
  writes: the ADC login client's id, a secret and a refresh token naming the user. google-auth ignores the
  ``token_uri`` of an authorized_user file ("always overrides" with Google's, google/oauth2/credentials.py
  ``from_authorized_user_info``), so a caller sets it with ``credentials.with_token_uri(...)``.
  ``service_account`` is a JSON key of an existing user-managed account, made as IAM's keys.create makes one
  (it is one of the account's keys); google-auth honours its ``token_uri``.
- ``POST /_emulator/oauth2/token`` (form-encoded, RFC 6749):

  - ``grant_type=refresh_token`` with the file's ``client_id``/``client_secret``/``refresh_token`` -> ``{access_token,
    expires_in, token_type, scope, id_token}``, the ID token's ``aud`` and ``azp`` being the client id (what Google
    answers a client that was granted the ``openid`` scope, as the ADC login is).
  - ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` (RFC 7523) with an ``assertion`` a service account
    key signed: checked against the public certificate IAM kept for the key named by ``kid`` (RS256), issued by
    the account (``iss``), for Google's token endpoint (``aud``, https://oauth2.googleapis.com/token as
    google-auth sets it whatever ``token_uri`` is), at most an hour long. With a ``target_audience`` claim (what
    ``google.oauth2.id_token.fetch_id_token`` sends) the answer is ``{"id_token"}`` with that ``aud``; otherwise
    an access token.
  - Failures answer 400 with ``{"error", "error_description"}`` in Google's words where known (an unknown
    refresh token: invalid_grant "Token has been expired or revoked."; a bad signature or a deleted key:
    invalid_grant "Invalid JWT Signature.").

- ``GET /_emulator/oauth2/v1/certs`` -> ``{kid: PEM certificate}`` of the emulator's Google key, the shape of
  https://www.googleapis.com/oauth2/v1/certs (give it to ``google.oauth2.id_token.verify_token(certs_url=...)``).
- ``POST /_emulator/identities/id-token`` ``{"email", "audience"}`` -> ``{"id_token"}``: a token for any principal,
  for tests that do not need a credential file.

Access tokens are opaque and checked nowhere: the emulated APIs take anonymous credentials.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography import x509
from werkzeug.wrappers import Request, Response

from ..core.errors import GcpError
from ..core.http import ApiModule, json_response
from ..core.identity import ID_TOKEN_SECONDS, TokenError, parse_jwt, verify_rs256

#: The OAuth client of ``gcloud auth application-default login``: a user's ADC ID token has this ``aud``
#: (contract of issue 12; the client id is public, in every ADC file gcloud writes).
ADC_CLIENT_ID = "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com"
#: Not gcloud's: the emulator issues its own files, and checks only that a refresh comes back with this.
ADC_CLIENT_SECRET = "emulator-adc-client-secret"
_USER_SCOPES = "openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/cloud-platform"
_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The ``aud`` a key file's assertion may carry: Google's token endpoint (google-auth always sends the first;
#: the second is the legacy one); the emulator's own URL is accepted as well.
_TOKEN_AUDIENCES = ("https://oauth2.googleapis.com/token", "https://accounts.google.com/o/oauth2/token")
#: Google refuses assertions that live longer than an hour.
_MAX_ASSERTION_SECONDS = 3600


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    """RFC 6749 §5.2 error answer, as Google's token endpoint sends it."""
    return json_response({"error": error, "error_description": description}, status)


def _admin_error(code: int, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, code)


class OAuth2Api(ApiModule):
    """No API routes: the token endpoint and credential files live on the control plane (see module docstring)."""

    REFRESH_KIND = "oauth2.refreshToken"

    @property
    def token_uri(self) -> str:
        return f"{self.world.base_url}/_emulator/oauth2/token"

    # --- control plane ----------------------------------------------------------------------------

    def admin(self, request: Request, subpath: str) -> Response:
        if subpath == "/token" and request.method == "POST":
            return self._token(request)
        if subpath == "/v1/certs" and request.method == "GET":
            return json_response(self.world.identity.oidc_certs())
        if subpath == "/identities" and request.method == "POST":
            return self._identity_file(request.get_json(silent=True) or {})
        if subpath == "/identities/id-token" and request.method == "POST":
            body = request.get_json(silent=True) or {}
            email, audience = body.get("email"), body.get("audience")
            if not isinstance(email, str) or "@" not in email or not isinstance(audience, str) or not audience:
                return _admin_error(400, "email and audience are required")
            return json_response({"id_token": self.world.identity.id_token(email, audience)})
        return _admin_error(404, f"no admin endpoint {subpath}")

    def _identity_file(self, body: dict[str, Any]) -> Response:
        email, kind = body.get("email"), body.get("type", "authorized_user")
        if not isinstance(email, str) or "@" not in email:
            return _admin_error(400, "email is required")
        if kind == "authorized_user":
            refresh = "1//" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
            self.world.store.put(self.REFRESH_KIND, refresh, {"email": email, "clientId": ADC_CLIENT_ID})
            return json_response(
                {
                    "account": "",
                    "client_id": ADC_CLIENT_ID,
                    "client_secret": ADC_CLIENT_SECRET,
                    "refresh_token": refresh,
                    "type": "authorized_user",
                    "universe_domain": "googleapis.com",
                    # Ignored by google-auth for this type (see the module docstring); kept for other readers.
                    "token_uri": self.token_uri,
                }
            )
        if kind == "service_account":
            try:
                key = self.world.api("iam").new_key_file(email)
            except GcpError as err:
                return _admin_error(err.code, err.message)
            key["token_uri"] = self.token_uri
            return json_response(key)
        return _admin_error(400, f"unknown identity type {kind!r}: authorized_user or service_account")

    # --- the token endpoint -----------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        form = request.form if request.form else (request.get_json(silent=True) or {})
        grant = form.get("grant_type", "")
        if grant == "refresh_token":
            return self._refresh_grant(form)
        if grant == _JWT_BEARER:
            return self._jwt_grant(form.get("assertion", ""))
        if not grant:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type: ")
        return _oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant}")

    @staticmethod
    def _access_token() -> str:
        return "ya29.emulator-" + base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")

    def _refresh_grant(self, form: Any) -> Response:
        token = form.get("refresh_token", "")
        if not token:
            return _oauth_error("invalid_request", "Missing required parameter: refresh_token")
        grant = self.world.store.get(self.REFRESH_KIND, token)
        if grant is None:
            return _oauth_error("invalid_grant", "Token has been expired or revoked.")
        client_id = form.get("client_id", "")
        if client_id != grant["clientId"] or form.get("client_secret", "") != ADC_CLIENT_SECRET:
            return _oauth_error("unauthorized_client", "Unauthorized", 401)
        return json_response(
            {
                "access_token": self._access_token(),
                "expires_in": ID_TOKEN_SECONDS - 1,
                "scope": _USER_SCOPES,
                "token_type": "Bearer",
                "id_token": self.world.identity.id_token(grant["email"], client_id),
            }
        )

    def _jwt_grant(self, assertion: str) -> Response:
        if not assertion:
            return _oauth_error("invalid_request", "Missing required parameter: assertion")
        try:
            header, claims, _, _ = parse_jwt(assertion)
        except TokenError:
            return _oauth_error("invalid_grant", "Invalid JWT: Unable to parse the assertion.")
        email = claims.get("iss")
        iam = self.world.api("iam")
        cert = iam.key_certificate(email, header.get("kid", "")) if isinstance(email, str) else None
        if cert is None:
            # What Google answers for a deleted or disabled key, or one it never issued.
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        public = x509.load_pem_x509_certificate(cert).public_key()
        short_lived = (
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
            "Check your iat and exp values in the JWT claim."
        )
        try:
            claims = verify_rs256(assertion, {header["kid"]: public})
        except TokenError as exc:
            if exc.reason == "expired":
                return _oauth_error("invalid_grant", short_lived)
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        if int(claims["exp"]) - int(claims["iat"]) > _MAX_ASSERTION_SECONDS:
            return _oauth_error("invalid_grant", short_lived)
        if claims.get("aud") not in (*_TOKEN_AUDIENCES, self.token_uri):
            return _oauth_error(
                "invalid_grant", f"Invalid JWT: Failed audience check. The expected value was {_TOKEN_AUDIENCES[0]}"
            )
        target = claims.get("target_audience")
        if target:
            account = iam.find_account(email) or {}
            token = self.world.identity.id_token(email, str(target), azp=str(account.get("uniqueId") or email))
            return json_response({"id_token": token})
        return json_response(
            {"access_token": self._access_token(), "expires_in": ID_TOKEN_SECONDS - 1, "token_type": "Bearer"}
        )


__all__ = ["ADC_CLIENT_ID", "OAuth2Api"]
