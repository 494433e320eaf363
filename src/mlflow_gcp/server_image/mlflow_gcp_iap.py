"""IAP sign-in for the mlflow-gcp MLflow server: MLflow's ``authorization_function`` in iap mode.

entrypoint.py writes ``authorization_function = mlflow_gcp_iap:authenticate_request_iap`` into the basic-auth ini
and puts this file's directory on the workers' ``PYTHONPATH``; MLflow's auth app imports it in each worker
(``get_auth_func``) and calls :func:`authenticate_request_iap` for every protected request, from Flask's
``_before_request`` and, through MLflow's Flask-context bridge, from the FastAPI middleware that guards the native
artifact routes. Validators call it again while authorizing the same request, so after the first call for an
assertion it costs a hash and two dictionary lookups.

Trust. Identity-Aware Proxy in front of the Cloud Run service signs every request it lets through: header
``x-goog-iap-jwt-assertion``, an ES256 JWT whose ``kid`` names one of the keys published at
https://www.gstatic.com/iap/verify/public_key (a JSON object kid -> PEM public key), with ``iss`` =
``https://cloud.google.com/iap``, ``aud`` = ``/projects/{PROJECT_NUMBER}/locations/{REGION}/services/{SERVICE}``
for a Cloud Run service (IAP's signed-header docs) and ``exp`` = ``iat`` + 600. That signature is the only thing
trusted: not ``X-Goog-Authenticated-User-Email`` (any client can send it to a service reached another way), not
basic auth (the accounts this module creates have passwords nobody knows), not a token of the client's own. A
request without a valid assertion gets 401 from this server even when it reaches it directly.

Settings (environment, set by entrypoint.py from the service's):

- ``MLFLOW_GCP_IAP_AUDIENCE``: the expected ``aud``.
- ``MLFLOW_GCP_IAP_ADMINS``: comma-separated lower-case emails that are MLflow admins.
- ``MLFLOW_GCP_IAP_CERTS_URL`` (default Google's key URL): where the keys are fetched; the local emulator points
  it at its own key.

Keys are cached as long as the response's ``Cache-Control: max-age`` says (at least ``MIN_FETCH_INTERVAL``), and
fetched again, at most once per ``MIN_FETCH_INTERVAL``, when an assertion names a key we do not have (Google
rotates them). When they cannot be fetched at all the answer is 503 (retry), not 401 (not signed in).

Users. The verified email (lower-cased) is the MLflow username, so MLflow's permission model (experiments,
registered models, the default permission, admins) works per person. The first time a process sees an email it
creates the MLflow user if missing, with a random password nobody knows (MLflow requires one; basic auth is not
accepted in this mode anyway), and makes ``is_admin`` match ``MLFLOW_GCP_IAP_ADMINS``, creating or updating.
This is done again every ``USER_SYNC_SECONDS`` per process, so a user an admin deleted comes back (without the
deleted grants) and the admin list stays the only source of IAP admins. The ini's basic admin is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.auth import jwt
from werkzeug.datastructures import Authorization

ASSERTION_HEADER = "x-goog-iap-jwt-assertion"
IAP_ISSUER = "https://cloud.google.com/iap"
#: IAP signs with ES256 only; any other ``alg`` is refused before a key is looked at.
IAP_ALGORITHM = "ES256"
DEFAULT_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key"

ENV_AUDIENCE = "MLFLOW_GCP_IAP_AUDIENCE"
ENV_ADMINS = "MLFLOW_GCP_IAP_ADMINS"
ENV_CERTS_URL = "MLFLOW_GCP_IAP_CERTS_URL"

#: Seconds of clock difference tolerated on ``iat`` and ``exp``.
CLOCK_SKEW_SECONDS = 30
#: Key cache lifetime when the response has no ``max-age``.
DEFAULT_KEYS_MAX_AGE = 300
#: Never keep keys longer than this, whatever the response says.
MAX_KEYS_MAX_AGE = 24 * 3600
#: At most one key fetch per this many seconds (an unknown ``kid`` is attacker-controlled).
MIN_FETCH_INTERVAL = 10.0
FETCH_TIMEOUT_SECONDS = 10
MAX_KEYS_BYTES = 1 << 20
#: Verified assertions remembered per process (until their ``exp``).
TOKEN_CACHE_SIZE = 4096
#: How often a process re-checks a user it has seen (exists, admin flag).
USER_SYNC_SECONDS = 300.0
LOG_PREFIX = "[mlflow-gcp]"

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


def log(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", file=sys.stderr, flush=True)


def _shown(value: Any, limit: int = 120) -> str:
    """An untrusted value as it may appear in a log line: quoted, escaped, bounded."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Refused(Exception):
    """The assertion is not acceptable; the message (for the log) never contains the token."""


class KeysUnavailable(Exception):
    """IAP's public keys could not be fetched and none are cached."""


# --- IAP's public keys ------------------------------------------------------------------------------------------


def parse_max_age(cache_control: str | None) -> int | None:
    """``max-age`` of a Cache-Control header, 0 for ``no-store``/``no-cache``, None when it says neither."""
    if not cache_control:
        return None
    match = _MAX_AGE.search(cache_control)
    if match:
        return int(match.group(1))
    if re.search(r"no-store|no-cache", cache_control, re.IGNORECASE):
        return 0
    return None


def fetch_keys(url: str) -> tuple[dict[str, str], int | None]:
    """GET the key set: ({kid: PEM}, max-age)."""
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT_SECONDS) as resp:
        body = resp.read(MAX_KEYS_BYTES + 1)
        cache_control = resp.headers.get("Cache-Control")
    if len(body) > MAX_KEYS_BYTES:
        raise ValueError("the key set is larger than 1 MiB")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the key set is not a JSON object")
    keys = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and "-----BEGIN" in v}
    if not keys:
        raise ValueError("the key set holds no PEM key")
    return keys, parse_max_age(cache_control)


class KeyCache:
    """IAP's public keys by ``kid``, fetched on demand, kept for ``max-age``, refetched (rate-limited) when an
    unknown ``kid`` shows up; thread-safe."""

    def __init__(
        self,
        url: str,
        fetch: Callable[[str], tuple[dict[str, str], int | None]] = fetch_keys,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = MIN_FETCH_INTERVAL,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._keys: dict[str, str] | None = None
        self._expires_at = 0.0
        self._last_attempt: float | None = None
        self._last_error = ""

    def get(self, kid: str) -> str | None:
        """The PEM key for ``kid``, None if IAP does not publish it; KeysUnavailable if no key set is at hand."""
        with self._lock:
            now = self._clock()
            stale = self._keys is None or now >= self._expires_at
            unknown = self._keys is not None and kid not in self._keys
            may_fetch = self._last_attempt is None or now - self._last_attempt >= self._min_interval
            if (stale or unknown) and may_fetch:
                self._refresh(now, "unknown key id" if unknown and not stale else "")
            if self._keys is None:
                raise KeysUnavailable(self._last_error)
            return self._keys.get(kid)

    def _refresh(self, now: float, why: str) -> None:
        self._last_attempt = now
        try:
            keys, max_age = self._fetch(self.url)
        except Exception as exc:  # network, HTTP status, JSON: keep what we have, retry after the interval
            self._last_error = f"{type(exc).__name__}: {exc}"
            if self._keys is not None:
                self._expires_at = now + self._min_interval
            log(
                f"could not fetch IAP's public keys from {self.url} ({self._last_error}); "
                + ("still using the previous ones" if self._keys is not None else "refusing requests until it works")
            )
            return
        ttl = DEFAULT_KEYS_MAX_AGE if max_age is None else max_age
        self._expires_at = now + min(MAX_KEYS_MAX_AGE, max(self._min_interval, ttl))
        if why and self._keys is not None and set(keys) != set(self._keys):
            log(f"IAP's keys changed ({why}): now {', '.join(sorted(keys))}")
        self._keys = keys


# --- verifying the assertion ------------------------------------------------------------------------------------


def _reason(exc: BaseException, token: str) -> str:
    """Why google-auth refused the assertion, without the token (some of its messages quote it)."""
    message = str(exc)
    if message.startswith("Could not verify token signature"):
        return "bad signature"
    if message.startswith("Token expired"):
        return "expired"
    if message.startswith("Token used too early"):
        return "issued in the future (clock skew?)"
    if message.startswith("Token does not contain required claim"):
        return "no iat/exp claim"
    if message.startswith("Token has wrong audience"):
        try:
            claimed = jwt.decode(token, verify=False).get("aud")
        except Exception:
            claimed = "?"
        return f"wrong audience {_shown(claimed)}"
    return f"invalid assertion ({type(exc).__name__})"


@dataclass(frozen=True)
class Verified:
    email: str
    expires: float


class Verifier:
    """Verifies IAP assertions for one audience and remembers the verified ones until they expire."""

    def __init__(
        self,
        audience: str,
        keys: KeyCache,
        clock: Callable[[], float] = time.time,
        cache_size: int = TOKEN_CACHE_SIZE,
    ) -> None:
        self.audience = audience
        self.keys = keys
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, Verified] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str) -> str:
        """The lower-cased email the assertion was issued for; Refused or KeysUnavailable otherwise."""
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                if hit.expires > now:
                    self._cache.move_to_end(key)
                    return hit.email
                del self._cache[key]
        verified = self._verify(token)
        with self._lock:
            self._cache[key] = verified
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verified.email

    def _verify(self, token: str) -> Verified:
        try:
            header = jwt.decode_header(token)
        except Exception:
            raise Refused("not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg != IAP_ALGORITHM:
            raise Refused(f"algorithm {_shown(alg)}, not {IAP_ALGORITHM}")
        if not isinstance(kid, str) or not kid:
            raise Refused("no key id")
        pem = self.keys.get(kid)
        if pem is None:
            raise Refused(f"signed with a key IAP does not publish (kid {_shown(kid)})")
        try:
            # Signature (against this kid's key only), iat/exp with the skew, aud.
            claims = jwt.decode(
                token, certs={kid: pem}, audience=self.audience, clock_skew_in_seconds=CLOCK_SKEW_SECONDS
            )
        except Exception as exc:
            raise Refused(_reason(exc, token)) from None
        if claims.get("iss") != IAP_ISSUER:
            raise Refused(f"wrong issuer {_shown(claims.get('iss'))}")
        email = claims.get("email")
        if not isinstance(email, str) or not email.strip():
            raise Refused("no email claim")
        exp = claims.get("exp")
        return Verified(email.strip().lower(), float(exp) if isinstance(exp, (int, float)) else 0.0)


# --- settings and per-process state -----------------------------------------------------------------------------


def parse_admins(spec: str) -> frozenset[str]:
    return frozenset(part.strip().lower() for part in spec.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    audience: str
    admins: frozenset[str]
    certs_url: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        audience = env.get(ENV_AUDIENCE, "").strip()
        if not audience:
            raise ValueError(f"{ENV_AUDIENCE} is not set")
        return cls(
            audience=audience,
            admins=parse_admins(env.get(ENV_ADMINS, "")),
            certs_url=env.get(ENV_CERTS_URL, "").strip() or DEFAULT_CERTS_URL,
        )


class _State:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = Verifier(settings.audience, KeyCache(settings.certs_url))
        #: email -> monotonic time until which the user is known to exist with the right admin flag.
        self.synced: dict[str, float] = {}
        self.sync_lock = threading.Lock()


_state: _State | None = None
_state_error = ""
_state_lock = threading.Lock()


def _get_state() -> _State | None:
    global _state, _state_error
    if _state is None:
        with _state_lock:
            if _state is None and not _state_error:
                try:
                    _state = _State(Settings.from_env(os.environ))
                except ValueError as exc:
                    _state_error = str(exc)
                    log(f"IAP sign-in is misconfigured, refusing every request: {exc}")
    return _state


def _reset_for_tests() -> None:
    global _state, _state_error
    with _state_lock:
        _state, _state_error = None, ""


# --- MLflow users -----------------------------------------------------------------------------------------------


def ensure_user(state: _State, email: str, store: Any, basic_admin: str | None) -> None:
    """Make the MLflow user ``email`` exist with ``is_admin`` as the admin list says (see the module docstring);
    a no-op for ``USER_SYNC_SECONDS`` after it was done in this process."""
    if state.synced.get(email, 0.0) > time.monotonic():
        return
    from mlflow.exceptions import MlflowException

    with state.sync_lock:
        if state.synced.get(email, 0.0) > time.monotonic():
            return
        if email == basic_admin:
            # The ini's admin (mlflow_gcp_serve.py pins its password and admin flag): not ours to change.
            state.synced[email] = time.monotonic() + USER_SYNC_SECONDS
            return
        admin = email in state.settings.admins
        try:
            user = store.get_user(email)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            user = None
        if user is None:
            try:
                # MLflow requires a password (12+ characters); this one is never shown, stored only hashed.
                store.create_user(email, secrets.token_urlsafe(32), is_admin=admin)
                log(f"first sign-in of {email}: created the MLflow user{' (an MLflow admin)' if admin else ''}")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                user = store.get_user(email)  # another worker or instance created it just now
        if user is not None and bool(user.is_admin) != admin:
            store.update_user(email, is_admin=admin)
            log(f"{email} is {'now' if admin else 'no longer'} an MLflow admin ({ENV_ADMINS})")
        state.synced[email] = time.monotonic() + USER_SYNC_SECONDS


# --- MLflow's authorization_function ----------------------------------------------------------------------------


def _error(status: int, code: str, message: str) -> Any:
    """An error in MLflow's JSON style. No WWW-Authenticate: a Basic challenge would make a browser show a
    password dialog, and no password is accepted here."""
    from flask import Response

    return Response(json.dumps({"error_code": code, "message": message}), status=status, mimetype="application/json")


def unauthenticated() -> Any:
    return _error(
        401,
        "UNAUTHENTICATED",
        "This MLflow server accepts only requests signed by Identity-Aware Proxy: open it through the service URL "
        "and sign in with Google.",
    )


def authenticate_request_iap() -> Authorization | Any:
    """MLflow ``authorization_function``: werkzeug Authorization (username = the verified email) or a response."""
    from flask import request

    state = _get_state()
    if state is None:
        return _error(500, "INTERNAL_ERROR", "IAP sign-in is misconfigured on this server; see its log.")
    token = request.headers.get(ASSERTION_HEADER, "")
    try:
        if not token:
            raise Refused("no IAP assertion")
        email = state.verifier.verify(token)
    except Refused as exc:
        log(f"refused {request.method} {_shown(request.path)}: {exc}")
        return unauthenticated()
    except KeysUnavailable:
        return _error(
            503, "TEMPORARILY_UNAVAILABLE", "IAP's public keys cannot be fetched right now; try again shortly."
        )
    from mlflow.server.auth import auth_config, store

    ensure_user(state, email, store, auth_config.admin_username)
    return Authorization("bearer", {"username": email})


def check_runtime() -> str:
    """Empty if this Python can verify IAP assertions (ES256 needs google-auth's cryptography-based verifier),
    else why not. mlflow_gcp_serve.py calls it before starting the workers."""
    try:
        from google.auth.crypt import es  # noqa: F401
    except ImportError as exc:
        return f"google-auth cannot verify ES256 signatures here ({exc}); install cryptography"
    return ""
