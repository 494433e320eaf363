"""The serve process of the MLflow server image: ``python /app/entrypoint.py serve <mlflow server options>``, which
PID 1 (entrypoint.py) starts with the environment ``mlflow_gcp_config.server_env`` makes. It imports MLflow, upgrades
both databases in-process under a PostgreSQL advisory lock (several instances start at once), makes the admin, then
runs MLflow's own ``server`` command, serving the app from this very process when it can.

Large artifacts. Cloud Run refuses HTTP/1 request bodies over 32 MiB (413) unless the container port is
declared end-to-end HTTP/2 (port name ``h2c``); then the front end forwards every request to the container over
h2c, whatever protocol the client spoke. Two ways out were weighed:

- (a) h2c: serve the very app ``mlflow server`` builds over an h2c-capable server. MLflow's native FastAPI
  artifact routes stream request bodies to a temporary file and responses back out in chunks, so one code path
  serves every client (the Python client, the UI's upload, curl) with no size cap and no extra permission.
- (b) ``MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD``: the client asks the server for per-part signed URLs and uploads
  straight to GCS. On Cloud Run there is no key file, so signing goes through IAM ``signBlob`` and needs
  ``roles/iam.serviceAccountTokenCreator`` for the runtime account on itself; it covers only uploads from
  MLflow's Python client above a size threshold (the UI and downloads still go through the server), and it is
  one more moving part (XML multipart API, signed-URL expiry, clock skew) to fail.

(a) is the more robust one and is what this image does: with ``MLFLOW_GCP_HTTP2=1`` the server is hypercorn
serving ``mlflow.server.auth:create_app()`` with exactly the environment ``mlflow server`` prepares. To keep that
parity we do not rebuild the app ourselves: we run MLflow's own ``server`` command in-process and substitute only
the step that turns its settings into the uvicorn command line (``mlflow.server._build_uvicorn_command``) and,
with one worker, the step that starts that command (``mlflow.server._exec_cmd``, see below). The same app object,
security middleware (allowed hosts, CORS), basic-auth app and artifact proxying result. The memory cost: an
upload is spooled to the (in-memory) temp file system, so size the instance memory above the largest artifact.

Cold start. Cloud Run scales to zero, so the first request after a quiet spell waits for a whole start, and almost
all of a start is importing MLflow (``python -c "import mlflow.server.auth"``, the floor: 3-4 s on a test machine).
``mlflow server`` then starts a server whose workers import MLflow again and build the app, each in a process of
its own: a second import in sequence, and with two workers on one vCPU three imports' worth of CPU. So with one
worker (the default: on one vCPU a second process adds no throughput, MLflow's Flask handlers run in threads of
one process either way) the ``serve`` process serves the app itself: where MLflow would start
``hypercorn ... mlflow.server.auth:create_app()``, it applies the environment MLflow prepared for that command
(``env_map`` in ``mlflow/server/__init__.py:_run_server``), calls the same factory and serves the result with
hypercorn's own API (``hypercorn.asyncio.serve``, configured as the command line would: same bind, graceful
timeout, logs; HTTP/1.1 and h2c on the one port), in this very process. An instance then starts in about one
MLflow import plus the database checks; it listens only once the databases are migrated and the app is built, so
Cloud Run's startup probe on /health passes exactly when requests can be served.

One thing differs from a worker process: MLflow is imported before the ``server`` command has set its variables,
and ``mlflow.server`` configures some things while it is imported (whether it runs as a server, which turns on the
Flask app's Host and CORS checks, and their allowlists). PID 1 therefore sets the variables the command will set,
from the very options it passes it (``mlflow_gcp_config.server_env``), and ``serve`` records every variable MLflow
reads while the worker's modules are imported (:func:`environment_reads`); it serves from its own process only if
each had the value the worker would have seen, and otherwise logs which ones differ and starts a worker process as
before. Each substituted step of MLflow is looked up first: a MLflow that no longer has it fails the start, loudly.
``MLFLOW_GCP_HTTP2=0`` (MLflow's uvicorn) and more than one worker keep MLflow's own process tree: the ``serve``
process, hypercorn's (or uvicorn's) supervisor and its workers.

Database ownership and password rotation. ``mlflow-gcp rotate-password`` alternates between two login roles
(``MLFLOW_GCP_DB_USERS``, e.g. ``mlflow_a,mlflow_b``): a new revision logs in as the inactive one while the old
revision still serves as the active one, so both must be able to use, migrate and own every table. PostgreSQL
lets only a table's owner (or a member of the owning role) alter or drop it, so no login role owns anything:
the NOLOGIN role ``mlflow_owner`` does, and both login roles are members of it. At every start the ``serve``
process, as the login user and under the upgrade lock of each database, (1) creates ``mlflow_owner`` if it is
missing, (2) grants it to every configured login role that exists and lacks it (to the others ``WITH ADMIN
OPTION``, so whichever is active later can administer it), (3) grants it ``USAGE, CREATE`` on schema
``public``, (4) ``REASSIGN OWNED BY <itself> TO mlflow_owner`` (moves the tables of a deployment made before this
scheme; a no-op otherwise), and (5) ``ALTER ROLE <itself> SET role = mlflow_owner``, so every later session of
that login (migrations, the workers' pools, an operator's psql) acts as ``mlflow_owner`` and whatever MLflow
creates, in both databases, is owned by it.

Why this works with only what Cloud SQL gives an API-created user (``LOGIN CREATEROLE CREATEDB``, a member of
``cloudsqlsuperuser``, which owns the API-created databases; no superuser):

- PostgreSQL 15 (the emulator): ``CREATEROLE`` may create roles and grant membership in any non-superuser role.
- PostgreSQL 16 (Cloud SQL's default): ``CREATEROLE`` alone no longer allows granting a role; the creator of a
  role gets ``ADMIN OPTION`` on it (but neither inherits it nor may ``SET ROLE`` to it), which lets it grant the
  role to itself and, with ``ADMIN OPTION``, to the other login role, which may then administer it too.
- Schema ``public`` belongs to ``pg_database_owner``, i.e. to ``cloudsqlsuperuser`` here; since PostgreSQL 15
  nobody else may create in it. Members of ``cloudsqlsuperuser`` may grant on it, hence step (3).
- ``REASSIGN OWNED`` needs the privileges of both roles, and ``ALTER ROLE <self> SET`` is allowed to every role
  for itself; both run after ``SET ROLE NONE`` (the login's own identity: a session that already acts as
  ``mlflow_owner`` lacks the privileges of the login role).
- A role default of ``role`` that cannot be applied (membership revoked) is skipped at login, not an error; so
  if the server's own login cannot get ``mlflow_owner``'s privileges, startup fails here, clearly, and Cloud
  Run keeps traffic on the previous revision.

Connection pools. Every worker has up to three SQLAlchemy engines (tracking store, model registry store, auth
store), each sized by ``MLFLOW_SQLALCHEMYSTORE_POOL_SIZE``/``MAX_OVERFLOW``; see ``mlflow_gcp_config.plan_pools``.
The ``serve`` process migrates with ``NullPool`` (no idle connection held for the life of the instance); the pool
settings are put back before the stores that serve are made: before MLflow's ``server`` command when this process
serves, else just before the workers are started. Connections carry ``application_name`` ``mlflow-gcp-setup`` or
``mlflow-gcp-worker`` (``PGAPPNAME``), so ``pg_stat_activity`` shows who holds what.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlflow_gcp_config import (
    APP_WORKER,
    AUTH_IAP,
    ENV_AUTH_MODE,
    ENV_HTTP2,
    MAX_OVERFLOW,
    MLFLOW_BACKEND_STORE_URI,
    OWNER_ROLE,
    PGAPPNAME,
    POOL_SIZE,
    POOLCLASS,
    _flag,
    log,
    login_roles,
)

#: Builds MLflow's app after making artifact uploads stream to GCS (mlflow_gcp_artifacts.py, next to this file);
#: the app MLflow chose is passed to it in ENV_APP.
STREAMING_APP = "mlflow_gcp_artifacts:create_app"
ENV_APP = "MLFLOW_GCP_APP"
#: Seconds the server gives in-flight requests after SIGTERM; Cloud Run kills the container 10 s after it.
GRACEFUL_SECONDS = 8
#: Session-level advisory lock key taken around schema upgrades (per database, so one key serves both).
UPGRADE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlflow-gcp/schema-upgrade").digest()[:8], "big", signed=True)


def _with_advisory_lock(url: str, what: str, action: Callable[[Any], None]) -> None:
    """Run ``action(connection)`` while holding this database's upgrade lock (released with the session, even on
    a crash). The connection is in autocommit mode."""
    import sqlalchemy
    from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry

    engine = create_sqlalchemy_engine_with_retry(url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            key = {"key": UPGRADE_LOCK_KEY}
            if not conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
                log(f"another instance is upgrading the {what} database; waiting for it")
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                action(conn)
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
    finally:
        engine.dispose()


def login_refused(url: str) -> str:
    """PostgreSQL's reason if it refuses this login for good (wrong password, a role that may not log in), else
    "". MLflow would retry such a login for minutes; failing at once lets Cloud Run fail the revision quickly and
    keep traffic where it is. Other errors (the socket not there yet) are left to MLflow's retries."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            return ""
    except sqlalchemy.exc.OperationalError as exc:
        text = str(exc.orig)
        for marker in ("password authentication failed", "is not permitted to log in", "does not exist"):
            if marker in text:
                # The FATAL line names the role or database, never the password.
                return next((line.strip() for line in text.splitlines() if marker in line), marker)
        return ""
    finally:
        engine.dispose()


def ensure_ownership(conn: Any, users: tuple[str, ...], owner: str = OWNER_ROLE, *, database: str) -> None:
    """Make ``owner`` own everything and every login role in ``users`` act as it (the module docstring says
    why and how). ``conn`` is an autocommit connection as ``users[0]``; run under the upgrade lock."""
    import sqlalchemy

    def run(statement: str, **params: Any) -> Any:
        return conn.execute(sqlalchemy.text(statement), params)

    quote = conn.dialect.identifier_preparer.quote_identifier
    run("SET ROLE NONE")  # act as the login itself, not as a role default set by an earlier start
    me = run("SELECT current_user").scalar()
    if not run("SELECT 1 FROM pg_roles WHERE rolname = :r", r=owner).scalar():
        run(f"CREATE ROLE {quote(owner)} NOLOGIN")
        log(f"created the ownership role {owner}")
    for user in (me, *(u for u in users if u != me)):
        if not run("SELECT 1 FROM pg_roles WHERE rolname = :r", r=user).scalar():
            continue
        if run("SELECT pg_has_role(:u, :o, 'USAGE')", u=user, o=owner).scalar():
            continue
        # Granting ADMIN OPTION back to oneself is refused on PostgreSQL 16 (and not needed: see above).
        admin = "" if user == me else " WITH ADMIN OPTION"
        try:
            run(f"GRANT {quote(owner)} TO {quote(user)}{admin}")
            log(f"granted {owner} to {user}")
        except sqlalchemy.exc.DBAPIError as exc:
            if user == me:
                raise RuntimeError(
                    f"the database user {me} cannot get the privileges of {owner}, which owns MLflow's tables "
                    f"({type(exc.orig).__name__}); grant it with: GRANT {owner} TO {me}"
                ) from None
            log(f"could not grant {owner} to {user} ({type(exc.orig).__name__}); it will try itself when it is used")
    run(f"GRANT USAGE, CREATE ON SCHEMA public TO {quote(owner)}")
    run(f"REASSIGN OWNED BY {quote(me)} TO {quote(owner)}")
    current = run(
        "SELECT 1 FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE r.rolname = :me AND s.setdatabase = 0 AND :setting = ANY(s.setconfig)",
        me=me,
        setting=f"role={owner}",
    ).scalar()
    if not current:
        run(f"ALTER ROLE {quote(me)} SET role = {quote(owner)}")
        log(f"sessions of {me} now act as {owner}")
    log(f"{database}: tables are owned by {owner}, shared by {', '.join(users)}")


def tracking_schema_is_current(conn: Any) -> bool:
    """Whether the tracking database already has MLflow's newest schema: the revision alembic recorded is the head
    of the pinned MLflow's migration scripts, the test MLflow's own store makes before it serves
    (``mlflow.store.db.utils._verify_schema``). Then ``mlflow db upgrade`` has nothing to do, and skipping it saves
    its engine, its emptiness check and alembic's upgrade run (measured 100-180 ms against 40-60 ms for this). Read
    on the lock's connection, after :func:`ensure_ownership` (which gave this login the owner's privileges)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision() == tracking_head()


def tracking_head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())


def upgrade_tracking_db(url: str) -> None:
    """``mlflow db upgrade``, in-process."""
    import mlflow.db

    assert mlflow.db.upgrade.callback is not None
    mlflow.db.upgrade.callback(url)


def bootstrap_auth_db() -> None:
    """What the basic-auth app does on start (migrate the auth schema, create the admin if missing), then make the
    admin match the pinned secrets: MLflow creates the admin only once, so an auth database kept across
    `down`/`up` (or restored) would otherwise still hold an older password, and the credentials `mlflow-gcp env`
    hands out would get 401.

    MLflow's ``bootstrap_admin_user`` is ``store.init_db`` (migrations) then ``create_admin_user``. On the usual
    start the admin exists and answers to the pinned password, and ``create_admin_user`` would only try MLflow's old
    default password on it twice (its legacy-password upgrade and warning), two password hashes (scrypt, 0.1-0.2 s
    each on one vCPU) that cannot match: the admin's password is the pinned one. So the pinned password is checked
    first, and MLflow's full bootstrap runs only when it does not answer (first start, a changed secret)."""
    from mlflow.server.auth import auth_config, bootstrap_admin_user, store

    name, password = auth_config.admin_username, auth_config.admin_password
    store.init_db(auth_config.database_uri, read_db_uri=auth_config.read_database_uri)
    if not store.authenticate_user(name, password):
        bootstrap_admin_user()
        if not store.authenticate_user(name, password):
            store.update_user(name, password=password)
            log(f"the admin {name}'s password was reset to the pinned secret")
    if not store.get_user(name).is_admin:
        store.update_user(name, is_admin=True)
        log(f"{name} made an admin again")


def hypercorn_command(host: str, port: int, workers: int, app: str, is_factory: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--graceful-timeout",
        str(GRACEFUL_SECONDS),
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
        f"{app}()" if is_factory else app,
    ]


def hypercorn_config(host: str, port: int) -> Any:
    """What :func:`hypercorn_command`'s options make of hypercorn's configuration, for serving in this process."""
    from hypercorn.config import Config as HypercornConfig

    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = GRACEFUL_SECONDS
    config.accesslog = "-"
    config.errorlog = "-"
    return config


@contextmanager
def environment_reads() -> Iterator[dict[str, str | None]]:
    """Every variable read from ``os.environ`` inside the block, with the value it had then (None: unset).

    ``os.environ`` keeps its identity (modules that did ``from os import environ`` see the same object); only its
    class is swapped for the block, to one whose ``__getitem__`` (behind ``get``, ``in`` and ``os.getenv``) also
    records."""
    reads: dict[str, str | None] = {}
    environ_class = type(os.environ)

    class Recording(environ_class):  # type: ignore[valid-type, misc]
        def __getitem__(self, key: str) -> str:
            try:
                value: str = super().__getitem__(key)
            except KeyError:
                reads.setdefault(key, None)
                raise
            reads.setdefault(key, value)
            return value

    os.environ.__class__ = Recording
    try:
        yield reads
    finally:
        os.environ.__class__ = environ_class


def close_pools() -> None:
    """Close every SQLAlchemy pool of this process (before it hands serving to worker processes and only waits)."""
    import gc

    import sqlalchemy

    for obj in gc.get_objects():
        if isinstance(obj, sqlalchemy.engine.Engine):
            obj.dispose()


@dataclass
class Served:
    """What ``mlflow server`` gets back from starting its server (a ``Popen`` where it spawns one) once this
    process has served and stopped: ``_run_server`` only waits for it and forwards signals while it runs."""

    returncode: int

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode

    def poll(self) -> int:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        pass


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args[:-1] else None


def serve(args: list[str]) -> int:
    started = time.monotonic()
    # This process needs the database only briefly: hold no idle connection for the life of the instance.
    worker_pool = {k: os.environ.pop(k) for k in (POOL_SIZE, MAX_OVERFLOW) if k in os.environ}
    os.environ[POOLCLASS] = "NullPool"
    http2 = _flag(os.environ, ENV_HTTP2, True)
    in_process = http2 and _option(args, "--workers") == "1"

    def worker_settings() -> None:
        os.environ.pop(POOLCLASS, None)
        os.environ.update(worker_pool)
        os.environ[PGAPPNAME] = APP_WORKER

    # What the server's workers import (`hypercorn mlflow.server.auth:create_app()`; create_app builds the FastAPI
    # app), imported while recording what it reads from the environment: see start_server below.
    with environment_reads() as import_reads:
        import mlflow.server.auth
        import mlflow.server.fastapi_app
    import mlflow.server
    from mlflow.cli import server as server_command
    from mlflow.server.auth import auth_config

    imported = time.monotonic()

    if os.environ.get(ENV_AUTH_MODE) == AUTH_IAP:
        # Fail the revision now rather than answer every request with an error: the server imports this module.
        try:
            import mlflow_gcp_iap
        except ImportError as exc:
            log(f"IAP mode, but its module cannot be imported: {exc}")
            return 1
        problem = mlflow_gcp_iap.check_runtime()
        if problem:
            log(f"IAP mode, but {problem}")
            return 1

    tracking_uri = os.environ[MLFLOW_BACKEND_STORE_URI]
    users = login_roles(os.environ)
    refused = login_refused(tracking_uri)
    if refused:
        log(f"the database refuses the login of {users[0]}: {refused}")
        return 3

    def tracking(conn: Any) -> None:
        ensure_ownership(conn, users, database="tracking")
        if not tracking_schema_is_current(conn):
            from alembic.runtime.migration import MigrationContext

            before = MigrationContext.configure(conn).get_current_revision()
            upgrade_tracking_db(tracking_uri)  # new sessions: they act as the owner
            # Said once per migration (under the lock, only the instance that found the schema behind migrates):
            # what `mlflow-gcp upgrade` and its tests read back from the revision's log.
            log(f"tracking schema migrated from {before or 'empty'} to {tracking_head()}")

    def auth(conn: Any) -> None:
        ensure_ownership(conn, users, database="auth")
        bootstrap_auth_db()

    _with_advisory_lock(tracking_uri, "tracking", tracking)
    _with_advisory_lock(auth_config.database_uri, "auth", auth)
    migrated = time.monotonic()

    # The steps of `mlflow server` we substitute. Each exists in the pinned MLflow; tests/server check the process
    # tree, the pools and the app's behaviour, should a new MLflow stop calling one.
    build_uvicorn = getattr(mlflow.server, "_build_uvicorn_command", None)
    exec_cmd = getattr(mlflow.server, "_exec_cmd", None)
    if build_uvicorn is None or exec_cmd is None:
        log("this MLflow lacks mlflow.server._build_uvicorn_command or _exec_cmd: use the one requirements.txt pins")
        return 1
    app_spec: dict[str, Any] = {}

    def build_command(
        uvicorn_opts: str | None,
        host: str,
        port: int,
        workers: int,
        app_name: str,
        env_file: str | None = None,
        is_factory: bool = False,
    ) -> list[str]:
        # Called once the stores are initialised, right before the server starts. The app MLflow names is built
        # by mlflow_gcp_artifacts.create_app, which first gives gs:// destinations the streaming repository.
        os.environ[ENV_APP] = f"{app_name}()" if is_factory else app_name
        app_name, is_factory = STREAMING_APP, True
        app_spec.update(app_name=app_name, is_factory=is_factory, host=host, port=port)
        worker_settings()
        if http2:
            return hypercorn_command(host, port, workers, app_name, is_factory)
        return build_uvicorn(uvicorn_opts, host, port, workers, app_name, env_file, is_factory)

    def start_server(cmd: list[str], *, extra_env: dict[str, str] | None = None, **kwargs: Any) -> Any:
        env = {**os.environ, **(extra_env or {})}
        if in_process:
            # MLflow configures parts of itself while it is imported (mlflow.server: the Flask app's Host and CORS
            # checks, whether it runs as a server). Its workers import it with this environment; this process did
            # before the command ran. Serve here only if every variable MLflow read then had the value the workers
            # would see (the entrypoint sets what `mlflow server` sets before MLflow is imported: server_env).
            differ = sorted(k for k, v in import_reads.items() if env.get(k) != v)
            if not differ:
                return Served(serve_here(app_spec, extra_env or {}, started, imported, migrated))
            log(f"MLflow read {', '.join(differ)} when imported, before `mlflow server` set them: serving "
                "from a worker process instead")  # fmt: skip
            close_pools()
        return exec_cmd(cmd, extra_env=extra_env, **kwargs)

    def bootstrap_basic_auth() -> None:
        # MLflow's validates the Flask secret key and bootstraps the admin before it starts its workers; this
        # process bootstrapped the admin moments ago, under the upgrade lock (bootstrap_auth_db). Only the key is
        # left to check: doing the rest again cost an auth migration check and two password hashes. (MLflow 3.16
        # has _bootstrap_basic_auth without get_flask_server_secret_key: its app checks the key when it is built.)
        from mlflow.server import auth

        if hasattr(auth, "get_flask_server_secret_key"):
            auth.get_flask_server_secret_key()

    if in_process:
        # The stores `mlflow server` initialises before it starts the server are the ones this process serves with.
        worker_settings()
    mlflow.server._build_uvicorn_command = build_command
    mlflow.server._exec_cmd = start_server
    if hasattr(mlflow.server, "_bootstrap_basic_auth"):
        mlflow.server._bootstrap_basic_auth = bootstrap_basic_auth
    server_command.main(args=args, prog_name="mlflow server")
    return 0


def serve_here(app_spec: Mapping[str, Any], extra_env: Mapping[str, str], *marks: float) -> int:
    """Serve, from this process, the app `mlflow server` would have its worker load (same app, same environment),
    over hypercorn's API as :func:`hypercorn_command` configures it; its exit status once SIGTERM stopped it."""
    import asyncio
    import importlib

    from hypercorn.asyncio import serve as hypercorn_serve

    os.environ.update(extra_env)
    module, _, name = app_spec["app_name"].partition(":")
    app = getattr(importlib.import_module(module), name)
    if app_spec["is_factory"]:
        app = app()
    started, imported, migrated = marks
    now = time.monotonic()
    log(
        f"serving from this process {now - started:.1f} s after it started (MLflow imported in "
        f"{imported - started:.1f} s, databases {migrated - imported:.1f} s, server command and app "
        f"{now - migrated:.1f} s)"
    )
    # Installs SIGTERM/SIGINT handlers: stop accepting, finish requests for up to GRACEFUL_SECONDS, then return.
    asyncio.run(hypercorn_serve(app, hypercorn_config(app_spec["host"], app_spec["port"])))
    return 0
