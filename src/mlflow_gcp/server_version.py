"""What the deployed server runs: its MLflow version and the schema revision of both databases, as the server reports
them, for `status` and `upgrade`.

The source is the server itself, the same way on Google Cloud and on the emulator: ``GET /mlflow-gcp/schema``
(``server_image/mlflow_gcp_schema.py``) reads alembic's revision of the tracking and the auth database live, with
the connection the server has. The CLI cannot read them itself on GCP (Cloud SQL has no authorized network by
default, and the database password is the service's), and a value the tool wrote down at deploy time (a label, the
state) would say what was meant to run, not what runs: a failed migration, an upgrade half done or a restored
database would go unnoticed. An image without the route (built by an older mlflow-gcp) still answers MLflow's own
``GET /version``; the revisions are then unknown, and ``detail`` says why.

The route is MLflow's, behind its authentication and, with MLflow's fail-closed default, for admins only: basic mode
signs in as the admin whose credentials the tool keeps (as ``health.serving`` does); iap mode sends the operator's
Google ID token, and an operator who is not one of ``access.admins`` gets the version but no revisions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ROUTE = "/mlflow-gcp/schema"


@dataclass
class Running:
    mlflow_version: str | None = None
    tracking_revision: str | None = None
    auth_revision: str | None = None
    #: The newest revision the running MLflow's migration scripts know: a revision that differs is an upgrade pending
    #: (older) or a database written by a newer MLflow (which this server refuses to serve).
    tracking_head: str | None = None
    auth_head: str | None = None
    #: Why something is unknown (an answer's status, an error), "" when everything was read.
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def running(ctx: Any, url: str) -> dict[str, Any]:
    """``{mlflow_version, tracking_revision, auth_revision, tracking_head, auth_head, detail}`` of the server at
    ``url`` with the credentials `mlflow-gcp env` hands out; what cannot be read is None (see ``detail``)."""
    from .resources.secrets import read_secret

    if ctx.config.access.mode == "iap":
        from . import identity

        try:
            credentials: dict[str, Any] = {
                "headers": {"Authorization": f"Bearer {identity.id_token(ctx.config.access.audiences[0])}"}
            }
        except identity.NoIdentity as exc:
            return Running(detail=f"no authenticated request: {exc}").as_dict()
    else:
        credentials = {"auth": (read_secret(ctx, "admin-username"), read_secret(ctx, "admin-password"))}
    return read(url, credentials).as_dict()


def read(url: str, credentials: dict[str, Any], *, timeout: float = 20.0, deadline: float = 30.0) -> Running:
    """The two requests (the route, and ``/version`` when the route gives no version), retried as every request to
    the server is (``retry.http_request``)."""
    import requests

    from .retry import http_request

    base = url.rstrip("/")
    result = Running()

    def get(path: str) -> Any:
        return http_request(lambda: requests.get(base + path, timeout=timeout, **credentials), deadline=deadline)

    try:
        response = get(ROUTE)
        if response.status_code == 200:
            body = response.json()
            result.mlflow_version = body.get("mlflow_version")
            problems = []
            for name in ("tracking", "auth"):
                entry = body.get(name) or {}
                setattr(result, f"{name}_revision", entry.get("revision"))
                setattr(result, f"{name}_head", entry.get("head"))
                if entry.get("error"):
                    problems.append(f"{name} database: {entry['error']}")
            result.detail = "; ".join(problems)
        else:
            result.detail = f"{ROUTE} answered {response.status_code}" + (
                " (only MLflow admins may read the schema revisions)" if response.status_code == 403 else ""
            )
        if result.mlflow_version is None:
            version = get("/version")
            if version.status_code == 200:
                result.mlflow_version = version.text.strip()
    except (requests.RequestException, ValueError) as exc:
        result.detail = f"{type(exc).__name__}: {exc}"
    return result
