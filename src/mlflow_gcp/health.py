"""Does the server really serve? MLflow's /health stays 200 even when the database refuses the server's password,
so an authenticated API call is made too, and an unauthenticated one must be refused."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Health:
    url: str
    health: int | None
    authenticated: int | None
    unauthenticated: int | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.health == 200 and self.authenticated == 200 and self.unauthenticated == 401

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def check(url: str, username: str, password: str, timeout: float = 20.0) -> Health:
    import requests

    api = f"{url.rstrip('/')}/api/2.0/mlflow/experiments/search"
    params = {"max_results": 1}
    result = Health(url, None, None, None)
    try:
        result.health = requests.get(f"{url.rstrip('/')}/health", timeout=timeout).status_code
        r = requests.get(api, params=params, auth=(username, password), timeout=timeout)
        result.authenticated = r.status_code
        if r.status_code != 200:
            # The body names the failure (e.g. the driver's "password authentication failed for user ...").
            result.detail = r.text.strip().splitlines()[0][:300] if r.text.strip() else ""
        result.unauthenticated = requests.get(api, params=params, timeout=timeout).status_code
    except requests.RequestException as exc:
        result.detail = f"{type(exc).__name__}: {exc}"
    return result
