"""Does the server really serve? MLflow's /health stays 200 even when the database refuses the server's password,
so an authenticated API call is made too, and an unauthenticated one must be refused.

In iap mode every request passes Identity-Aware Proxy first: the anonymous one must be refused (by IAP), and the
authenticated ones carry a Google ID token from the operator's Application Default Credentials. Where those
credentials allow no such request (none, or an identity IAP does not admit), the authenticated probe is reported as
not made, with the reason, rather than as a failure: the operator need not be one of the members."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Set on answers IAP itself gives (not the server behind it).
IAP_GENERATED = "x-goog-iap-generated-response"


@dataclass
class Health:
    url: str
    health: int | None
    authenticated: int | None
    unauthenticated: int | None
    detail: str = ""
    mode: str = "basic"

    @property
    def ok(self) -> bool:
        if self.mode == "iap" and self.authenticated is None:
            return self.unauthenticated == 401
        return self.health == 200 and self.authenticated == 200 and self.unauthenticated == 401

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def check(
    url: str,
    username: str | None = None,
    password: str | None = None,
    *,
    token: str | None = None,
    mode: str = "basic",
    timeout: float = 20.0,
    retry_deadline: float = 30.0,
) -> Health:
    """Three requests, each through the retry policy (connection errors and 429/502/503/504, as a revision starting
    or an instance restarting answers, retried with backoff), all within ``retry_deadline`` seconds in total: past
    it, each request is made once and what it answers is reported."""
    import time

    import requests

    from .retry import http_request

    base = url.rstrip("/")
    api = f"{base}/api/2.0/mlflow/experiments/search"
    params = {"max_results": 1}
    until = time.monotonic() + retry_deadline

    def get(target: str, **kwargs: Any) -> Any:
        left = max(0.0, until - time.monotonic())
        return http_request(lambda: requests.get(target, timeout=timeout, **kwargs), deadline=left)

    result = Health(url, None, None, None, mode=mode)
    credentials: dict[str, Any] = (
        {"auth": (username, password)}
        if username is not None
        else {"headers": {"Authorization": f"Bearer {token}"}}
        if token
        else {}
    )
    try:
        if credentials or mode == "basic":
            result.health = get(f"{base}/health", **({} if mode == "basic" else credentials)).status_code
            r = get(api, params=params, **credentials)
            result.authenticated = r.status_code
            if r.status_code != 200:
                # The body names the failure (e.g. the driver's "password authentication failed for user ...").
                result.detail = r.text.strip().splitlines()[0][:300] if r.text.strip() else ""
            if mode == "iap" and r.status_code == 403 and r.headers.get(IAP_GENERATED) == "true":
                result.health = result.authenticated = None
                result.detail = "your Google identity is not one of access.members, so no authenticated request"
        result.unauthenticated = get(api, params=params).status_code
    except requests.RequestException as exc:
        result.detail = f"{type(exc).__name__}: {exc}"
    return result


def serving(ctx: Any, url: str) -> Health:
    """The probe with the credentials ``mlflow-gcp env`` hands out (the pinned secret versions): what `status`
    reports and what `up` must see before it says done."""
    from .resources.secrets import read_secret

    if ctx.config.access.mode == "iap":
        return serving_iap(ctx, url)
    return check(url, read_secret(ctx, "admin-username"), read_secret(ctx, "admin-password"))


def serving_iap(ctx: Any, url: str) -> Health:
    """The iap-mode probe: an ID token from the operator's ADC (see the module docstring)."""
    from . import identity

    try:
        token = identity.id_token(ctx.config.access.audiences[0])
    except identity.NoIdentity as exc:
        result = check(url, mode="iap")
        result.detail = f"no authenticated request: {exc}"
        return result
    return check(url, token=token, mode="iap")


def require_serving(ctx: Any, url: str, what: str, timeout: float = 10.0) -> Health:
    """``serving``, given a few seconds for a revision that just took traffic; an error naming what failed
    otherwise. Only a server that answers the handed-out credentials is done."""
    from .errors import ExitCode, MlflowGcpError
    from .retry import wait_until

    last: list[Health] = []

    def probe() -> Health:
        last[:] = [serving(ctx, url)]
        return last[0]

    try:
        return wait_until("MLflow to serve", probe, lambda h: h.ok, timeout)
    except MlflowGcpError:
        health = last[0]
        raise MlflowGcpError(
            f"{what}, but MLflow does not serve with the credentials `mlflow-gcp env` gives: /health "
            f"{health.health}, authenticated API {health.authenticated}, unauthenticated {health.unauthenticated}"
            + (f" ({health.detail})" if health.detail else ""),
            hint="`mlflow-gcp status` shows each resource; the server's log says why it refuses.",
            exit_code=ExitCode.UNHEALTHY,
        ) from None
