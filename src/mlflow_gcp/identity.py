"""Google ID tokens for a deployment behind Identity-Aware Proxy, from Application Default Credentials; and which
tracking URIs are such deployments.

IAP takes an OIDC ID token in ``Authorization: Bearer`` whose audience is an OAuth client on the resource's
programmatic allowlist (cloud.google.com/iap/docs/authentication-howto, "Authenticating from a service account" /
"from a desktop app"; allowlist: cloud.google.com/iap/docs/sharing-oauth-clients#programmatic_access). Where the
token comes from depends on the kind of ADC, as google-auth 2.63 offers them:

- a user's ``gcloud auth application-default login`` (``authorized_user``): google-auth's ``fetch_id_token`` refuses
  that type (oauth2/id_token.py: only ``service_account`` and ``impersonated_service_account`` files, then the
  metadata server), but refreshing the credentials returns Google's ID token for the ADC client
  (oauth2/credentials.py ``id_token``): its audience is that client, which `up` allowlists
  (config.ADC_CLIENT_ID), so the audience asked for is ignored;
- a service account key, an impersonated account, or the metadata server (Cloud Run, GCE, Vertex AI, GKE
  workload identity): ``fetch_id_token`` mints a token for the audience asked for.

A token is sent only to deployments known to be behind IAP (:func:`audience_for`), never to any URL: the same
audience is accepted by every IAP application that allowlists the ADC client, so a token handed to a stranger could
be replayed there. Known means registered by ``mlflow-gcp up``/``env`` on this machine (a small JSON file in the
user's config directory) or listed in ``MLFLOW_GCP_IAP_URLS`` (comma-separated ``URL[=AUDIENCE]``, for CI jobs
that never run mlflow-gcp).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import ADC_CLIENT_ID

URLS_ENV = "MLFLOW_GCP_IAP_URLS"
CONFIG_DIR_ENV = "MLFLOW_GCP_CONFIG_DIR"
REGISTRY_FILE = "iap-services.json"
#: A token is renewed this long before it expires (Google's ID tokens live an hour).
RENEW_SECONDS = 300


class NoIdentity(Exception):
    """No Application Default Credentials that can produce an ID token."""


def _origin(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def config_dir() -> Path:
    explicit = os.environ.get(CONFIG_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mlflow-gcp"


def _registry_path() -> Path:
    return config_dir() / REGISTRY_FILE


_registry_cache: dict[Path, tuple[tuple[int, int, int], dict[str, str]]] = {}


def _read_registry() -> dict[str, str]:
    """The registry, re-read only when the file changed: the plugin asks on every MLflow request."""
    path = _registry_path()
    try:
        stat = path.stat()
    except OSError:
        return {}
    stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    cached = _registry_cache.get(path)
    if cached and cached[0] == stamp:
        return dict(cached[1])
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    registry = (
        {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}
    )
    _registry_cache[path] = (stamp, registry)
    return dict(registry)


def _write_registry(registry: dict[str, str]) -> None:
    """Replace the file atomically (a reader never sees half of it)."""
    path = _registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    _registry_cache.pop(path, None)  # a write within the file system's timestamp granularity must not look unchanged


def register(url: str, audience: str = ADC_CLIENT_ID) -> None:
    """Remember that ``url`` is a deployment behind IAP taking ID tokens for ``audience``."""
    registry = _read_registry()
    if registry.get(_origin(url)) != audience:
        _write_registry({**registry, _origin(url): audience})


def unregister(url: str) -> None:
    registry = _read_registry()
    if registry.pop(_origin(url), None) is not None:
        _write_registry(registry)


def audience_for(url: str) -> str | None:
    """The audience to request for a deployment at ``url``, or None when it is not one we know is behind IAP."""
    origin = _origin(url)
    for entry in os.environ.get(URLS_ENV, "").split(","):
        target, _, audience = entry.strip().partition("=")
        if target and _origin(target) == origin:
            return audience.strip() or ADC_CLIENT_ID
    return _read_registry().get(origin)


def _expiry(token: str) -> float:
    """The ``exp`` claim (unverified: the token is ours to send, IAP verifies it)."""
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, KeyError, ValueError, TypeError):
        return 0.0


_cache: dict[str, tuple[str, float]] = {}
_lock = threading.Lock()


def id_token(audience: str) -> str:
    """A Google ID token from ADC for ``audience`` (see the module docstring), reused until shortly before it
    expires. Raises NoIdentity when ADC cannot produce one."""
    with _lock:
        cached = _cache.get(audience)
        if cached and cached[1] - RENEW_SECONDS > time.time():
            return cached[0]
        token = _fetch(audience)
        _cache[audience] = (token, _expiry(token))
        return token


def _fetch(audience: str) -> str:
    import google.auth
    import google.oauth2.credentials
    from google.auth import exceptions
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token as google_id_token

    request = Request()
    try:
        with warnings.catch_warnings():
            # "authenticated using end user credentials ... without a quota project": about quota on API calls; an ID
            # token needs none.
            warnings.simplefilter("ignore", UserWarning)
            credentials, _ = google.auth.default()
    except exceptions.DefaultCredentialsError as exc:
        raise NoIdentity(f"no Application Default Credentials ({exc})") from None
    try:
        if isinstance(credentials, google.oauth2.credentials.Credentials):
            token_uri = _named_token_uri()
            if token_uri:
                credentials = credentials.with_token_uri(token_uri)
            credentials.refresh(request)
            token: Any = credentials.id_token
            if not token:
                raise NoIdentity(
                    "these user credentials carry no ID token: run `gcloud auth application-default login` again"
                )
            return str(token)
        return str(google_id_token.fetch_id_token(request, audience))
    except (exceptions.RefreshError, exceptions.TransportError, exceptions.DefaultCredentialsError) as exc:
        raise NoIdentity(f"could not get an ID token ({exc})") from None


def _named_token_uri() -> str | None:
    """The ``token_uri`` an ``authorized_user`` file in GOOGLE_APPLICATION_CREDENTIALS names, if any. google-auth
    replaces it with Google's own endpoint (oauth2/credentials.py ``from_authorized_user_info``: "always
    overrides"); gcloud's files name none, so honouring it changes nothing for them, and it is how the local
    emulator's identities refresh against the emulator (``POST /_emulator/identities``)."""
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        return None
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    uri = info.get("token_uri") if isinstance(info, dict) and info.get("type") == "authorized_user" else None
    return uri if isinstance(uri, str) and uri else None


def forget() -> None:
    """Drop cached tokens (tests switch identities)."""
    with _lock:
        _cache.clear()
