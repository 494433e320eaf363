"""The emulator's stand-in for Google's identity: the keys Google signs with and the tokens it issues.

Two keys stand for Google's own:

- Google's OpenID Connect key (RS256) signs ID tokens (``iss`` ``https://accounts.google.com``). Google
  publishes its keys at https://www.googleapis.com/oauth2/v1/certs as ``{kid: PEM certificate}``; the
  emulator publishes its key the same way at ``/_emulator/oauth2/v1/certs``.
- IAP's key (ES256) signs the ``x-goog-iap-jwt-assertion`` header IAP adds to the requests it lets through.
  Google publishes IAP's keys at https://www.gstatic.com/iap/verify/public_key as ``{kid: PEM public key}``
  (https://cloud.google.com/iap/docs/signed-headers-howto); the emulator at ``/_emulator/iap/verify/public_key``.

Each key is generated once per data directory and kept in ``<data_dir>/identity/`` (reset keeps it), so a
token issued before an emulator restart still verifies after it. Nothing here reaches Google: a token the
emulator verifies must have been signed by the emulator.

A principal's ``sub`` is stable: a service account's ``uniqueId`` when the emulator's IAM knows the account
(as Google puts it in the account's ID tokens), otherwise a 21-digit number derived from the email.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt
from google.auth.crypt import es256

if TYPE_CHECKING:
    from .world import World

#: ``iss`` of Google's ID tokens (google-auth's ``verify_oauth2_token`` accepts this and the bare host).
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
#: ``iss`` of IAP's signed header (https://cloud.google.com/iap/docs/signed-headers-howto).
IAP_ISSUER = "https://cloud.google.com/iap"
#: Lifetime of an ID token Google issues (exp = iat + 3600) and of IAP's assertion (exp = iat + 600).
ID_TOKEN_SECONDS = 3600
ASSERTION_SECONDS = 600
#: Leeway for the clocks of a token's issuer and its verifier, as Google's verifiers allow.
CLOCK_SKEW_SECONDS = 30


class TokenError(Exception):
    """A token that does not verify; ``reason`` is one of parse, signature, issuer, expired."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def parse_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signed bytes, signature) of a compact JWS, without verifying anything."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("parse", "Unable to parse JWT")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
    except (ValueError, binascii.Error):
        raise TokenError("parse", "Unable to parse JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("parse", "Unable to parse JWT")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), signature


def verify_rs256(token: str, public_keys: dict[str, Any]) -> dict[str, Any]:
    """The claims of an RS256 token signed by one of ``public_keys`` (kid -> RSA public key), after checking
    its signature, ``iat`` and ``exp``. The caller checks ``iss`` and ``aud``."""
    header, claims, signed, signature = parse_jwt(token)
    if header.get("alg") != "RS256":
        raise TokenError("signature", f"Unsupported JWT algorithm {header.get('alg')!r}")
    key = public_keys.get(header.get("kid", "")) if header.get("kid") else None
    candidates = [key] if key is not None else list(public_keys.values())
    for candidate in candidates:
        try:
            candidate.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            break
        except InvalidSignature:
            continue
    else:
        raise TokenError("signature", "Invalid JWT signature")
    now = time.time()
    try:
        iat, exp = int(claims["iat"]), int(claims["exp"])
    except (KeyError, TypeError, ValueError):
        raise TokenError("parse", "JWT has no valid iat and exp") from None
    if iat > now + CLOCK_SKEW_SECONDS:
        raise TokenError("expired", "JWT was issued in the future")
    if exp < now - CLOCK_SKEW_SECONDS:
        raise TokenError("expired", "JWT has expired")
    return claims


def _kid(public_key: Any) -> str:
    """A key id derived from the public key (Google's kids are 40 hex digits too)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(der).hexdigest()


def self_signed(key: rsa.RSAPrivateKey, name: str, *, backdate: timedelta = timedelta(days=1)) -> bytes:
    """A self-signed X.509 certificate (PEM) for ``key``, valid from ``backdate`` ago for ten years: how Google
    publishes its token-signing keys, and what IAM hands out with a service account key."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class Identity:
    """The two signing keys (loaded or made on first use) and the tokens signed with them."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.directory: Path = world.data_dir / "identity"
        self._lock = threading.Lock()
        self._oidc: rsa.RSAPrivateKey | None = None
        self._oidc_cert = b""
        self._iap: ec.EllipticCurvePrivateKey | None = None

    # --- keys -------------------------------------------------------------------------------------

    def _load(self, name: str, make: Any) -> Any:
        path = self.directory / name
        if path.exists():
            return serialization.load_pem_private_key(path.read_bytes(), password=None)
        key = make()
        self.directory.mkdir(parents=True, exist_ok=True)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, path)
        return key

    def _oidc_key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._oidc is None:
                key = self._load(
                    "oidc-rs256.pem", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
                )
                cert_path = self.directory / "oidc-rs256.crt"
                if cert_path.exists():
                    self._oidc_cert = cert_path.read_bytes()
                else:
                    self._oidc_cert = self_signed(key, "emulated accounts.google.com")
                    cert_path.write_bytes(self._oidc_cert)
                self._oidc = key
            return self._oidc

    def _iap_key(self) -> ec.EllipticCurvePrivateKey:
        with self._lock:
            if self._iap is None:
                self._iap = self._load("iap-es256.pem", lambda: ec.generate_private_key(ec.SECP256R1()))
            return self._iap

    def oidc_certs(self) -> dict[str, str]:
        """``{kid: PEM certificate}``, the shape of https://www.googleapis.com/oauth2/v1/certs."""
        key = self._oidc_key()
        return {_kid(key.public_key()): self._oidc_cert.decode()}

    def iap_public_keys(self) -> dict[str, str]:
        """``{kid: PEM public key}``, the shape of https://www.gstatic.com/iap/verify/public_key."""
        public = self._iap_key().public_key()
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {_kid(public): pem.decode()}

    # --- principals -------------------------------------------------------------------------------

    def subject(self, email: str) -> str:
        """The principal's stable id: a known service account's uniqueId, else derived from the email."""
        iam = self.world.apis.get("iam")
        account = iam.find_account(email) if iam is not None else None  # type: ignore[attr-defined]
        if account is not None:
            return str(account["uniqueId"])
        digest = int(hashlib.sha256(email.lower().encode()).hexdigest(), 16)
        return "1" + str(digest % 10**20).zfill(20)

    # --- tokens -----------------------------------------------------------------------------------

    def _sign(self, key: Any, claims: dict[str, Any], es: bool = False) -> str:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        kid = _kid(key.public_key())
        signer = es256.ES256Signer.from_string(pem, kid) if es else crypt.RSASigner.from_string(pem, kid)
        return jwt.encode(signer, claims).decode()

    def id_token(self, email: str, audience: str, *, azp: str | None = None, lifetime: int = ID_TOKEN_SECONDS) -> str:
        """An OpenID Connect ID token for ``email``, as Google's token endpoint issues it."""
        now = int(time.time())
        claims = {
            "iss": GOOGLE_ISSUERS[0],
            "azp": azp or audience,
            "aud": audience,
            "sub": self.subject(email),
            "email": email,
            "email_verified": True,
            "iat": now,
            "exp": now + lifetime,
        }
        return self._sign(self._oidc_key(), claims)

    def verify_id_token(self, token: str) -> dict[str, Any]:
        """The claims of an ID token the emulator's Google issued (signature, iss, iat/exp checked; the
        caller checks ``aud``). Raises :class:`TokenError`."""
        public = self._oidc_key().public_key()
        claims = verify_rs256(token, {_kid(public): public})
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise TokenError("issuer", "Invalid JWT issuer")
        if not isinstance(claims.get("email"), str):
            raise TokenError("parse", "JWT has no email claim")
        return claims

    def iap_assertion(self, email: str, audience: str) -> str:
        """The ``x-goog-iap-jwt-assertion`` IAP signs for a request it lets through
        (https://cloud.google.com/iap/docs/signed-headers-howto: ES256 with ``kid``; iss, aud, email,
        sub ``accounts.google.com:<id>``, iat, exp = iat + 600, identity_source, google). ``hd`` is only
        set for Workspace accounts, which the emulator does not model."""
        now = int(time.time())
        claims = {
            "iss": IAP_ISSUER,
            "aud": audience,
            "email": email,
            "sub": f"accounts.google.com:{self.subject(email)}",
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
            "identity_source": "GOOGLE",
            "google": {},
        }
        return self._sign(self._iap_key(), claims, es=True)
