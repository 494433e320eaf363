"""``GET /mlflow-gcp/schema``: which MLflow serves, and the schema revision of both of its databases, for
``mlflow-gcp status`` (``src/mlflow_gcp/server_version.py`` reads it).

Why the server reports it rather than the CLI reading the databases: on Google Cloud the CLI cannot reach Cloud SQL
(no public IP is authorized by default, and the databases' password stays in Secret Manager and the service), while
the server holds a connection to both anyway. The answer is read live on each request (``SELECT version_num`` from
alembic's table in each database, on a connection of its own that is closed right after), so it says what the
databases hold now, also while another revision migrates them (an upgrade), not what they held when this instance
started. The heads are what this MLflow's migration scripts end at: a revision that differs from its head means the
database is older (an upgrade pending) or newer (written by a newer MLflow: this server refuses to serve it) than
the running MLflow.

The tracking database keeps alembic's revision in ``alembic_version``; the auth database in
``alembic_version_auth`` (MLflow 3.6+: ``mlflow/server/auth/db/migrations/env.py``'s ``version_table``).

The route is a Flask route of MLflow's own app, so MLflow's authentication and authorization apply to it like to
any route: with ``MLFLOW_BASIC_AUTH_FAIL_CLOSED`` (MLflow's default since it exists) a route without a permission
rule is for admins only, which suits it. ``mlflow_gcp_serve.py``'s app factory (``mlflow_gcp_artifacts.create_app``)
registers it before MLflow builds the app.
"""

from __future__ import annotations

import os
from typing import Any

ROUTE = "/mlflow-gcp/schema"
TRACKING_TABLE = "alembic_version"
AUTH_TABLE = "alembic_version_auth"


def register(app: Any) -> None:
    """Add the route to MLflow's Flask app (once)."""
    if "mlflow_gcp_schema" not in app.view_functions:
        app.add_url_rule(ROUTE, "mlflow_gcp_schema", _schema, methods=["GET"])


def revision(url: str, table: str) -> str | None:
    """The revision alembic recorded in ``table`` (None: no such table yet), on a connection of its own."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not sqlalchemy.inspect(conn).has_table(table):
                return None
            return conn.execute(sqlalchemy.text(f"SELECT version_num FROM {table}")).scalar()
    finally:
        engine.dispose()


def tracking_head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())


def auth_head() -> str:
    from alembic.script import ScriptDirectory
    from mlflow.server.auth.db.utils import _get_alembic_dir

    return str(ScriptDirectory(str(_get_alembic_dir())).get_current_head())


def report() -> dict[str, Any]:
    import mlflow

    out: dict[str, Any] = {"mlflow_version": mlflow.__version__}
    databases = {
        "tracking": (os.environ.get("MLFLOW_BACKEND_STORE_URI", ""), TRACKING_TABLE, tracking_head),
        "auth": (_auth_uri(), AUTH_TABLE, auth_head),
    }
    for name, (url, table, head) in databases.items():
        entry: dict[str, Any] = {"head": head()}
        try:
            entry["revision"] = revision(url, table) if url else None
        except Exception as exc:  # reported, not raised: status shows what it could read
            # The driver's message names the host and database, never the password (it is not in the message).
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        out[name] = entry
    return out


def _auth_uri() -> str:
    try:
        from mlflow.server.auth import auth_config
    except ImportError:
        return ""
    return str(auth_config.database_uri)


def _schema() -> Any:
    from flask import jsonify

    return jsonify(report())
