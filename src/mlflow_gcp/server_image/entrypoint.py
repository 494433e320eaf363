"""Entrypoint of the mlflow-gcp MLflow tracking server image, as Cloud Run runs it.

Configuration comes only from the environment, which mlflow-gcp sets on the Cloud Run service.

Secrets (Secret Manager, ``secretKeyRef``; pin versions, they are read once per instance start):

- ``MLFLOW_GCP_DB_PASSWORD``: password of the Cloud SQL user.
- ``MLFLOW_GCP_ADMIN_USERNAME`` / ``MLFLOW_GCP_ADMIN_PASSWORD``: MLflow's admin. MLflow creates this user only
  when it does not exist yet (first start); later changes go through ``/api/2.0/mlflow/users/update-password``.
  The password must have at least 12 characters (MLflow's rule).
- ``MLFLOW_FLASK_SERVER_SECRET_KEY``: Flask/CSRF key, required, identical on every instance (MLflow's own name).

Plain settings:

- ``MLFLOW_GCP_DB_USER``: the Cloud SQL user.
- ``MLFLOW_GCP_DB_NAME`` (default ``mlflow``): tracking and model-registry database.
- ``MLFLOW_GCP_AUTH_DB_NAME`` (default ``mlflow_auth``): basic-auth users and permissions. It lives in
  PostgreSQL too: MLflow's default is a sqlite file, which Cloud Run loses on every restart (and which each
  instance would have its own copy of).
- ``MLFLOW_GCP_CLOUDSQL_CONNECTION``: the instance's connection name, ``project:region:instance``.
- ``MLFLOW_GCP_CLOUDSQL_DIR`` (default ``/cloudsql``): where Cloud Run mounts the Cloud SQL sockets; the socket
  is ``<dir>/<connection name>/.s.PGSQL.5432``. Only the local emulator changes it.
- ``MLFLOW_GCP_ARTIFACTS_DESTINATION``: ``gs://bucket[/prefix]``; artifacts are proxied through the server
  (clients need no bucket access; the runtime service account writes).
- ``MLFLOW_GCP_ALLOWED_HOSTS``: comma-separated service URLs (``https://svc-abc-uc.a.run.app``) or
  ``host[:port]`` names. They feed MLflow's Host-header check (``--allowed-hosts``, plus localhost for probes
  and local use) and its CORS check (``--cors-allowed-origins``): browsers send ``Origin`` on same-origin POSTs,
  and MLflow blocks a state-changing request from a non-localhost origin that is not listed, which would break
  the UI on the service URL. A bare host means ``https://host``.
- ``MLFLOW_GCP_WORKERS`` (default 1): server worker processes per instance. One is served from the process that
  migrated the databases (see "Process tree" below); more are hypercorn's worker processes.
- ``MLFLOW_GCP_MAX_INSTANCES`` (required): the service's maximum instance count (count a rollout's overlap of
  old and new revisions in it if you want that covered too).
- ``MLFLOW_GCP_DB_MAX_CONNECTIONS`` (required): the Cloud SQL tier's ``max_connections`` (25 for db-f1-micro).
- ``MLFLOW_GCP_DB_RESERVED_CONNECTIONS`` (optional): connections left for everything but this service;
  default ``max(5, 10 %)``: PostgreSQL keeps 3 for superusers, Cloud SQL's own agents and an operator's
  psql or backup need a few more.
- ``MLFLOW_GCP_AUTH_CACHE_TTL`` (default 60): seconds MLflow caches a successful basic-auth check
  (``auth_cache_ttl_seconds``). Without it every authenticated request re-hashes the password (PBKDF2, 0.3–2 s
  per request on small instances). The cost: a password changed or user deleted through one worker is still
  accepted by the others for up to this long. ``0`` turns the cache off.
- ``MLFLOW_GCP_DEFAULT_PERMISSION`` (default ``READ``): what a user may do on experiments and models nobody
  granted them anything on. READ (MLflow's default) suits a team server: every user is an account the admin
  created, reading each other's results is the point of sharing a tracking server, and writes still need
  ownership (creators get MANAGE) or an explicit grant. ``NO_PERMISSIONS`` isolates users instead.
- ``MLFLOW_GCP_HTTP2`` (default ``1``): serve over hypercorn, which speaks HTTP/1.1 *and* cleartext HTTP/2
  (h2c, prior knowledge) on the same port; ``0`` runs MLflow's default uvicorn (HTTP/1.1 only).
- ``MLFLOW_GCP_AUTH_MODE`` (default ``basic``): ``basic`` (MLflow's accounts and passwords) or ``iap`` (sign-in
  through Identity-Aware Proxy, below).
- ``MLFLOW_GCP_IAP_AUDIENCE`` (required in iap mode): the ``aud`` IAP puts in its assertion for this service,
  ``/projects/{PROJECT_NUMBER}/locations/{REGION}/services/{SERVICE}`` (the project *number*).
- ``MLFLOW_GCP_IAP_ADMINS`` (iap mode, optional): comma-separated emails that are MLflow admins (a ``user:`` or
  ``serviceAccount:`` prefix is dropped; matched case-insensitively).
- ``MLFLOW_GCP_IAP_CERTS_URL`` (iap mode, default ``https://www.gstatic.com/iap/verify/public_key``): IAP's
  public keys. Only the local emulator changes it (plain http is accepted for a loopback host only).
- ``PORT`` (default 8080): set by Cloud Run.

IAP mode. The service sits behind Identity-Aware Proxy, which signs in users with their Google accounts and
forwards only the ones granted access, adding ``x-goog-iap-jwt-assertion``: a JWT signed with one of IAP's
published ES256 keys. ``mlflow_gcp_iap.py`` (next to this file, on the workers' ``PYTHONPATH``) is MLflow's
``authorization_function`` then. It trusts that assertion and nothing else: the signature against IAP's keys, the
issuer, the audience of *this* service (an assertion IAP made for another service is refused) and the expiry are
checked. Not the plain ``X-Goog-Authenticated-User-Email`` header, which anybody reaching the container another
way could send, and not basic auth; a request without a valid assertion gets 401 even if it reaches the server
directly. The verified email is the MLflow user, created on first visit with a random password nobody knows:
MLflow needs one, and none may work, since in this mode identity comes from Google, not from a password (should
the service go back to basic mode, the admin sets passwords for those who need one). MLflow's permission model
(per-user experiment and model permissions, the default permission) applies unchanged. The admins list is the
source of truth for admins: a user's ``is_admin`` is made to match it when a worker first sees them (and every
few minutes after), so removing someone from the list takes effect on the next deploy. The ini's basic admin
(``MLFLOW_GCP_ADMIN_USERNAME``, still required and still bootstrapped) is never changed by that.

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

Process tree and secrets. ``python /app/entrypoint.py`` (PID 1) validates the configuration, writes the basic-auth
ini file (0600, private temp directory) and runs ``python /app/entrypoint.py serve <mlflow server options>``; it
forwards SIGTERM/SIGINT to it (Cloud Run sends SIGTERM, then SIGKILL 10 s later) and passes its output through a
filter that masks every form of every secret. PID 1 never imports MLflow (it starts in milliseconds, and a
configuration error is reported before anything heavy runs). The ``serve`` process imports MLflow, upgrades both
databases in-process (no ``mlflow db upgrade <url>`` command line carries the password) under a PostgreSQL
advisory lock, since several instances start at once, creates the admin, then runs MLflow's ``server`` command.
The database URL reaches MLflow only through the environment (``MLFLOW_BACKEND_STORE_URI``, read by the click
option) and the ini file; no argv in the tree contains a secret.

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
from the very options it passes it (:func:`server_env`), and ``serve`` records every variable MLflow reads while
the worker's modules are imported (:func:`environment_reads`); it serves from its own process only if each had the
value the worker would have seen, and otherwise logs which ones differ and starts a worker process as before. Each
substituted step of MLflow is looked up first: a MLflow that no longer has it fails the start, loudly.
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
store), each sized by ``MLFLOW_SQLALCHEMYSTORE_POOL_SIZE``/``MAX_OVERFLOW``; see :func:`plan_pools`. The ``serve``
process migrates with ``NullPool`` (no idle connection held for the life of the instance); the pool settings are put
back before the stores that serve are made: before MLflow's ``server`` command when this process serves, else just
before the workers are started. Connections carry ``application_name`` ``mlflow-gcp-setup`` or
``mlflow-gcp-worker`` (``PGAPPNAME``), so ``pg_stat_activity`` shows who holds what.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, quote_plus, urlsplit

# --- environment variable names -------------------------------------------------------------------------------

ENV_DB_PASSWORD = "MLFLOW_GCP_DB_PASSWORD"
ENV_ADMIN_USERNAME = "MLFLOW_GCP_ADMIN_USERNAME"
ENV_ADMIN_PASSWORD = "MLFLOW_GCP_ADMIN_PASSWORD"
ENV_SECRET_KEY = "MLFLOW_FLASK_SERVER_SECRET_KEY"
ENV_DB_USER = "MLFLOW_GCP_DB_USER"
ENV_DB_USERS = "MLFLOW_GCP_DB_USERS"
ENV_DB_NAME = "MLFLOW_GCP_DB_NAME"
ENV_AUTH_DB_NAME = "MLFLOW_GCP_AUTH_DB_NAME"
ENV_CONNECTION = "MLFLOW_GCP_CLOUDSQL_CONNECTION"
ENV_CLOUDSQL_DIR = "MLFLOW_GCP_CLOUDSQL_DIR"
ENV_ARTIFACTS = "MLFLOW_GCP_ARTIFACTS_DESTINATION"
ENV_ALLOWED_HOSTS = "MLFLOW_GCP_ALLOWED_HOSTS"
ENV_WORKERS = "MLFLOW_GCP_WORKERS"
ENV_MAX_INSTANCES = "MLFLOW_GCP_MAX_INSTANCES"
ENV_MAX_CONNECTIONS = "MLFLOW_GCP_DB_MAX_CONNECTIONS"
ENV_RESERVED_CONNECTIONS = "MLFLOW_GCP_DB_RESERVED_CONNECTIONS"
ENV_AUTH_CACHE_TTL = "MLFLOW_GCP_AUTH_CACHE_TTL"
ENV_DEFAULT_PERMISSION = "MLFLOW_GCP_DEFAULT_PERMISSION"
ENV_HTTP2 = "MLFLOW_GCP_HTTP2"
ENV_AUTH_MODE = "MLFLOW_GCP_AUTH_MODE"
ENV_IAP_AUDIENCE = "MLFLOW_GCP_IAP_AUDIENCE"
ENV_IAP_ADMINS = "MLFLOW_GCP_IAP_ADMINS"
ENV_IAP_CERTS_URL = "MLFLOW_GCP_IAP_CERTS_URL"
ENV_PORT = "PORT"

#: Inputs that only PID 1 needs: they are not passed on to the server processes.
SECRET_INPUTS = (ENV_DB_PASSWORD, ENV_ADMIN_USERNAME, ENV_ADMIN_PASSWORD)

# MLflow's own variables this entrypoint sets for the server processes.
MLFLOW_BACKEND_STORE_URI = "MLFLOW_BACKEND_STORE_URI"
MLFLOW_AUTH_CONFIG_PATH = "MLFLOW_AUTH_CONFIG_PATH"
POOL_SIZE = "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"
MAX_OVERFLOW = "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"
POOLCLASS = "MLFLOW_SQLALCHEMYSTORE_POOLCLASS"
# What `mlflow server` sets for its server and mlflow.server reads when imported (mlflow/cli/__init__.py server,
# mlflow/server/__init__.py _run_server and is_running_as_server, mlflow/server/security.py).
MLFLOW_SERVER_ALLOWED_HOSTS = "MLFLOW_SERVER_ALLOWED_HOSTS"
MLFLOW_SERVER_CORS_ALLOWED_ORIGINS = "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"
MLFLOW_SERVER_X_FRAME_OPTIONS = "MLFLOW_SERVER_X_FRAME_OPTIONS"
#: ``mlflow server --x-frame-options``'s default (mlflow/utils/cli_args.py X_FRAME_OPTIONS), which it always sets.
X_FRAME_OPTIONS = "SAMEORIGIN"
MLFLOW_SERVER_FILE_STORE = "_MLFLOW_SERVER_FILE_STORE"
MLFLOW_SERVER_SERVE_ARTIFACTS = "_MLFLOW_SERVER_SERVE_ARTIFACTS"
#: libpq's application_name, so pg_stat_activity tells the setup process's connections from the workers'.
PGAPPNAME = "PGAPPNAME"
APP_SETUP = "mlflow-gcp-setup"
APP_WORKER = "mlflow-gcp-worker"

DEFAULT_CLOUDSQL_DIR = "/cloudsql"
SOCKET_NAME = ".s.PGSQL.5432"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL
DEFAULT_ARTIFACT_ROOT = "mlflow-artifacts:/"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
AUTH_BASIC = "basic"
AUTH_IAP = "iap"
AUTH_MODES = (AUTH_BASIC, AUTH_IAP)
BASIC_AUTH_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
#: Builds MLflow's app after making artifact uploads stream to GCS (mlflow_gcp_artifacts.py, next to this file);
#: the app MLflow chose is passed to it in ENV_APP.
STREAMING_APP = "mlflow_gcp_artifacts:create_app"
ENV_APP = "MLFLOW_GCP_APP"
#: The IAP module ships next to this file (Dockerfile COPY); the workers import it through PYTHONPATH.
IAP_AUTH_FUNCTION = "mlflow_gcp_iap:authenticate_request_iap"
IMAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key"
#: What IAP puts in ``aud`` for a Cloud Run service (IAP signed-header docs); the project number, not its id.
IAP_AUDIENCE = re.compile(r"^/projects/[0-9]+/locations/[a-z][a-z0-9-]*[a-z0-9]/services/[a-z][a-z0-9-]*$")
EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")
#: SQLAlchemy engines one worker may open: tracking store, model registry store, auth store.
ENGINES_PER_WORKER = 3
#: Per engine, never more than SQLAlchemy's default pool (5 + 10 overflow).
MAX_PER_ENGINE = 15
#: Seconds the server gives in-flight requests after SIGTERM; Cloud Run kills the container 10 s after it.
GRACEFUL_SECONDS = 8
#: The NOLOGIN role that owns every table; the login roles are its members (see the module docstring).
OWNER_ROLE = "mlflow_owner"
#: Role names we create or grant: plain lower-case identifiers (quoted anyway).
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: Session-level advisory lock key taken around schema upgrades (per database, so one key serves both).
UPGRADE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlflow-gcp/schema-upgrade").digest()[:8], "big", signed=True)
LOG_PREFIX = "[mlflow-gcp]"


class ConfigError(Exception):
    """A configuration problem; the message never contains a secret."""


def log(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", file=sys.stderr, flush=True)


# --- connection pool sizing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolPlan:
    """How many connections one worker's engines may hold, and what that adds up to."""

    workers: int
    pool_size: int
    max_overflow: int
    #: Connections available to the whole service: max_connections minus the reserve.
    budget: int
    #: Most connections one instance can hold (workers × engines × (pool + overflow)).
    per_instance: int

    @property
    def per_engine(self) -> int:
        return self.pool_size + self.max_overflow


def default_reserve(max_connections: int) -> int:
    return max(5, math.ceil(max_connections * 0.1))


def plan_pools(
    *,
    max_connections: int,
    max_instances: int,
    workers: int,
    reserve: int | None = None,
    engines_per_worker: int = ENGINES_PER_WORKER,
) -> PoolPlan:
    """Size the SQLAlchemy pools so that ``max_instances × workers × engines × (pool + overflow)`` stays within
    ``max_connections - reserve``.

    Each engine gets at least ``pool_size=1, max_overflow=1``: MLflow passes these settings to SQLAlchemy only
    when they are truthy, so a 0 silently becomes SQLAlchemy's default (5 / 10). When the requested workers do
    not fit, fewer workers are planned (never 0): a server with fewer workers beats one whose connections run
    out under load. When even one worker does not fit, ConfigError says what to change.
    """
    if max_connections < 1 or max_instances < 1 or workers < 1 or engines_per_worker < 1:
        raise ConfigError("max_connections, max_instances, workers and engines must be positive")
    reserve = default_reserve(max_connections) if reserve is None else reserve
    if reserve < 0:
        raise ConfigError("the reserved connection count must not be negative")
    budget = max_connections - reserve
    per_instance_budget = budget // max_instances if budget > 0 else 0
    min_per_worker = engines_per_worker * 2
    fitting_workers = min(workers, per_instance_budget // min_per_worker)
    if fitting_workers < 1:
        raise ConfigError(
            f"{max_instances} instance(s) cannot share {max_connections} database connections "
            f"({reserve} reserved): each instance needs at least {min_per_worker} "
            f"({engines_per_worker} pools of 2) but would get {per_instance_budget}. Lower the maximum instance "
            "count or pick a database tier with more connections."
        )
    per_engine = min(MAX_PER_ENGINE, per_instance_budget // (fitting_workers * engines_per_worker))
    # A small steady pool and a larger overflow: idle instances then hold few connections.
    pool_size = max(1, per_engine // 3)
    max_overflow = per_engine - pool_size
    return PoolPlan(
        workers=fitting_workers,
        pool_size=pool_size,
        max_overflow=max_overflow,
        budget=budget,
        per_instance=fitting_workers * engines_per_worker * per_engine,
    )


# --- database URLs and the auth ini file ----------------------------------------------------------------------


def postgres_url(user: str, password: str, database: str, socket_dir: str) -> str:
    """A SQLAlchemy URL reaching PostgreSQL over the unix socket in ``socket_dir``; every part URL-quoted."""
    return (
        f"postgresql+psycopg2://{quote(user, safe='')}:{quote(password, safe='')}@/{quote(database, safe='')}"
        f"?host={quote(socket_dir, safe='/')}"
    )


def ini_escape(value: str) -> str:
    """A value as configparser (with its default BasicInterpolation) will read it back unchanged."""
    if "\n" in value or "\r" in value:
        raise ConfigError("auth settings must not contain line breaks")
    if value != value.strip():
        # configparser strips values: such a value would not be read back as written.
        raise ConfigError("auth settings must not start or end with whitespace")
    return value.replace("%", "%%")


def auth_ini(
    *,
    database_uri: str,
    admin_username: str,
    admin_password: str,
    default_permission: str,
    auth_cache_ttl_seconds: int,
    authorization_function: str = BASIC_AUTH_FUNCTION,
) -> str:
    """The basic-auth configuration MLflow reads from ``MLFLOW_AUTH_CONFIG_PATH``."""
    settings = {
        "default_permission": default_permission,
        "database_uri": database_uri,
        "admin_username": admin_username,
        "admin_password": admin_password,
        "authorization_function": authorization_function,
        "auth_cache_ttl_seconds": str(auth_cache_ttl_seconds),
    }
    lines = ["[mlflow]"] + [f"{key} = {ini_escape(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def write_private_file(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
    return path


# --- configuration --------------------------------------------------------------------------------------------


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def _integer(env: Mapping[str, str], name: str, default: int | None, minimum: int) -> int:
    raw = env.get(name, "")
    if not raw:
        if default is None:
            raise ConfigError(f"{name} is not set")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


def login_roles(env: Mapping[str, str]) -> tuple[str, ...]:
    """The server's login role first, then the other login roles that share the ownership role."""
    own = _required(env, ENV_DB_USER)
    others = (part.strip() for part in env.get(ENV_DB_USERS, "").split(","))
    roles = tuple(dict.fromkeys([own, *(r for r in others if r)]))
    for role in roles:
        if not ROLE_NAME.match(role) or role == OWNER_ROLE:
            raise ConfigError(f"{ENV_DB_USER} and {ENV_DB_USERS} must be plain role names, got {role!r}")
    return roles


def hosts_and_origins(spec: str) -> tuple[list[str], list[str]]:
    """``--allowed-hosts`` and ``--cors-allowed-origins`` entries for comma-separated service URLs or hosts,
    with localhost (any port) admitted for probes and local use."""
    hosts: list[str] = []
    origins: list[str] = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        if "://" in raw:
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"{ENV_ALLOWED_HOSTS}: not a service URL or host: {raw!r}")
            scheme, netloc = parts.scheme, parts.netloc.lower()
        else:
            if "/" in raw:
                raise ConfigError(f"{ENV_ALLOWED_HOSTS}: not a service URL or host: {raw!r}")
            scheme, netloc = "https", raw.lower()
        hosts.append(netloc)
        if "*" not in netloc:
            origins.append(f"{scheme}://{netloc}")
    local = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[[]::1]:*"]
    return list(dict.fromkeys(hosts + local)), list(dict.fromkeys(origins))


def iap_admins(spec: str) -> tuple[str, ...]:
    """``MLFLOW_GCP_IAP_ADMINS``: lower-cased emails, in order, without duplicates."""
    admins: list[str] = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        kind, sep, rest = raw.partition(":")
        if sep and kind in ("user", "serviceAccount"):
            raw = rest.strip()
        elif sep:
            raise ConfigError(
                f"{ENV_IAP_ADMINS}: {raw!r} is not an email: admins are people or service accounts (IAP's assertion "
                "names one), not groups or domains"
            )
        if not EMAIL.match(raw):
            raise ConfigError(f"{ENV_IAP_ADMINS}: not an email: {raw!r}")
        admins.append(raw.lower())
    return tuple(dict.fromkeys(admins))


def iap_certs_url(raw: str) -> str:
    """``MLFLOW_GCP_IAP_CERTS_URL``: https, or http to a loopback host (the local emulator)."""
    url = raw.strip() or DEFAULT_IAP_CERTS_URL
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host:
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost"
        if local:
            return url
    raise ConfigError(f"{ENV_IAP_CERTS_URL} must be an https URL (http only to a loopback host), got {url!r}")


@dataclass(frozen=True)
class Config:
    db_user: str
    #: Every login role that shares the ownership role (rotation alternates between them); includes db_user.
    db_users: tuple[str, ...]
    db_password: str
    db_name: str
    auth_db_name: str
    connection_name: str
    cloudsql_dir: str
    artifacts_destination: str
    allowed_hosts: list[str]
    cors_origins: list[str]
    admin_username: str
    admin_password: str
    secret_key: str
    workers: int
    max_instances: int
    max_connections: int
    reserved_connections: int | None
    auth_cache_ttl: int
    default_permission: str
    http2: bool
    port: int
    auth_mode: str = AUTH_BASIC
    #: iap mode: the expected ``aud``, the admins' emails (lower case) and where IAP's keys are.
    iap_audience: str = ""
    iap_admins: tuple[str, ...] = ()
    iap_certs_url: str = DEFAULT_IAP_CERTS_URL

    @property
    def authorization_function(self) -> str:
        return IAP_AUTH_FUNCTION if self.auth_mode == AUTH_IAP else BASIC_AUTH_FUNCTION

    @property
    def socket_dir(self) -> str:
        return f"{self.cloudsql_dir.rstrip('/') or '/'}/{self.connection_name}".replace("//", "/")

    @property
    def tracking_uri(self) -> str:
        return postgres_url(self.db_user, self.db_password, self.db_name, self.socket_dir)

    @property
    def auth_uri(self) -> str:
        return postgres_url(self.db_user, self.db_password, self.auth_db_name, self.socket_dir)

    def secrets(self) -> list[str]:
        """Every secret and the encoded forms it takes in URLs and the ini file, for log masking."""
        forms: set[str] = set()
        for secret in (self.db_password, self.admin_password, self.secret_key):
            if not secret:
                continue
            # Ours, urllib's default, SQLAlchemy's URL rendering (safe=" +") and form encoding.
            for form in (secret, quote(secret, safe=""), quote(secret), quote(secret, safe=" +"), quote_plus(secret)):
                forms.update({form, form.replace("%", "%%")})
        # Longest first, so a secret containing another is masked whole.
        return sorted(forms, key=len, reverse=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        connection = _required(env, ENV_CONNECTION)
        if "/" in connection or "\0" in connection or connection.count(":") < 2:
            raise ConfigError(f"{ENV_CONNECTION} must look like project:region:instance, got {connection!r}")
        artifacts = _required(env, ENV_ARTIFACTS)
        if not artifacts.startswith("gs://") or len(artifacts) <= len("gs://"):
            raise ConfigError(f"{ENV_ARTIFACTS} must be a gs://bucket[/prefix] URI, got {artifacts!r}")
        permission = env.get(ENV_DEFAULT_PERMISSION, "") or "READ"
        if permission not in PERMISSIONS:
            raise ConfigError(f"{ENV_DEFAULT_PERMISSION} must be one of {', '.join(PERMISSIONS)}")
        hosts, origins = hosts_and_origins(env.get(ENV_ALLOWED_HOSTS, ""))
        reserved_raw = env.get(ENV_RESERVED_CONNECTIONS, "")
        auth_mode = env.get(ENV_AUTH_MODE, "").strip().lower() or AUTH_BASIC
        if auth_mode not in AUTH_MODES:
            raise ConfigError(f"{ENV_AUTH_MODE} must be one of {', '.join(AUTH_MODES)}, got {auth_mode!r}")
        iap: dict[str, Any] = {}
        if auth_mode == AUTH_IAP:
            audience = _required(env, ENV_IAP_AUDIENCE).strip()
            if not IAP_AUDIENCE.match(audience):
                raise ConfigError(
                    f"{ENV_IAP_AUDIENCE} must look like /projects/NUMBER/locations/REGION/services/NAME (the project "
                    f"number, not its id), got {audience!r}"
                )
            iap = {
                "iap_audience": audience,
                "iap_admins": iap_admins(env.get(ENV_IAP_ADMINS, "")),
                "iap_certs_url": iap_certs_url(env.get(ENV_IAP_CERTS_URL, "")),
            }
        db_users = login_roles(env)
        config = cls(
            db_user=db_users[0],
            db_users=db_users,
            db_password=_required(env, ENV_DB_PASSWORD),
            db_name=env.get(ENV_DB_NAME, "") or "mlflow",
            auth_db_name=env.get(ENV_AUTH_DB_NAME, "") or "mlflow_auth",
            connection_name=connection,
            cloudsql_dir=env.get(ENV_CLOUDSQL_DIR, "") or DEFAULT_CLOUDSQL_DIR,
            artifacts_destination=artifacts.rstrip("/"),
            allowed_hosts=hosts,
            cors_origins=origins,
            admin_username=_required(env, ENV_ADMIN_USERNAME),
            admin_password=_required(env, ENV_ADMIN_PASSWORD),
            secret_key=_required(env, ENV_SECRET_KEY),
            workers=_integer(env, ENV_WORKERS, 1, 1),
            max_instances=_integer(env, ENV_MAX_INSTANCES, None, 1),
            max_connections=_integer(env, ENV_MAX_CONNECTIONS, None, 1),
            reserved_connections=_integer(env, ENV_RESERVED_CONNECTIONS, 0, 0) if reserved_raw else None,
            auth_cache_ttl=_integer(env, ENV_AUTH_CACHE_TTL, 60, 0),
            default_permission=permission,
            http2=_flag(env, ENV_HTTP2, True),
            port=_integer(env, ENV_PORT, 8080, 1),
            auth_mode=auth_mode,
            **iap,
        )
        socket_path = f"{config.socket_dir}/{SOCKET_NAME}"
        if len(socket_path.encode()) > MAX_SOCKET_PATH:
            raise ConfigError(f"the Cloud SQL socket path is longer than {MAX_SOCKET_PATH} bytes: {socket_path}")
        return config

    def pool_plan(self) -> PoolPlan:
        return plan_pools(
            max_connections=self.max_connections,
            max_instances=self.max_instances,
            workers=self.workers,
            reserve=self.reserved_connections,
        )


def server_args(config: Config, workers: int) -> list[str]:
    """``mlflow server`` options: nothing secret (the database URL travels in the environment)."""
    args = [
        "--app-name",
        "basic-auth",
        "--host",
        "0.0.0.0",
        "--port",
        str(config.port),
        "--workers",
        str(workers),
        "--serve-artifacts",
        "--artifacts-destination",
        config.artifacts_destination,
        "--default-artifact-root",
        DEFAULT_ARTIFACT_ROOT,
        "--allowed-hosts",
        ",".join(config.allowed_hosts),
    ]
    if config.cors_origins:
        args += ["--cors-allowed-origins", ",".join(config.cors_origins)]
    return args


def server_env(base: Mapping[str, str], config: Config, plan: PoolPlan, auth_config_path: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in SECRET_INPUTS}
    # MLflow lets these override the ini file; the ini file is the one source of the admin's credentials.
    env.pop("MLFLOW_AUTH_ADMIN_USERNAME", None)
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    env.pop(POOLCLASS, None)
    env.update(
        {
            MLFLOW_BACKEND_STORE_URI: config.tracking_uri,
            MLFLOW_AUTH_CONFIG_PATH: str(auth_config_path),
            POOL_SIZE: str(plan.pool_size),
            MAX_OVERFLOW: str(plan.max_overflow),
            ENV_HTTP2: "1" if config.http2 else "0",
            PGAPPNAME: APP_SETUP,
            # Background jobs need their own processes and connections, outside the pool budget, and Cloud Run
            # throttles CPU outside requests; usage telemetry is not this server's business.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1",
            # What `mlflow server` sets for its server (from the options server_args gives it), set before MLflow
            # is imported: the serve process imports it before the command runs, and mlflow.server reads these
            # while it is imported (whether it runs as a server; the Host and CORS allowlists). serve() checks
            # that they match what the command then sets before it serves from that process.
            MLFLOW_SERVER_ALLOWED_HOSTS: ",".join(config.allowed_hosts),
            MLFLOW_SERVER_X_FRAME_OPTIONS: X_FRAME_OPTIONS,
            MLFLOW_SERVER_FILE_STORE: config.tracking_uri,
            MLFLOW_SERVER_SERVE_ARTIFACTS: "true",
        }
    )
    env.pop(MLFLOW_SERVER_CORS_ALLOWED_ORIGINS, None)
    if config.cors_origins:
        env[MLFLOW_SERVER_CORS_ALLOWED_ORIGINS] = ",".join(config.cors_origins)
    # The serve process and any worker process (`python -m hypercorn`/uvicorn) import the modules next to this
    # file (mlflow_gcp_artifacts always, mlflow_gcp_iap in iap mode): they must be on their path.
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([IMAGE_DIR, *(p for p in path if p != IMAGE_DIR)])
    if config.auth_mode == AUTH_IAP:
        env.update(
            {
                ENV_AUTH_MODE: AUTH_IAP,
                ENV_IAP_AUDIENCE: config.iap_audience,
                ENV_IAP_ADMINS: ",".join(config.iap_admins),
                ENV_IAP_CERTS_URL: config.iap_certs_url,
            }
        )
    return env


# --- PID 1: supervise and mask ---------------------------------------------------------------------------------


class Masker:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = [s.encode() for s in secrets if s]

    def __call__(self, data: bytes) -> bytes:
        for secret in self._secrets:
            data = data.replace(secret, b"***")
        return data


def _pump(source: IO[bytes], sink: IO[bytes], mask: Callable[[bytes], bytes]) -> None:
    for line in iter(source.readline, b""):
        try:
            sink.write(mask(line))
            sink.flush()
        except (OSError, ValueError):
            pass
    source.close()


def supervise(argv: list[str], env: dict[str, str], mask: Callable[[bytes], bytes]) -> int:
    """Run ``argv`` with its output masked, forwarding SIGTERM/SIGINT; its exit status."""
    proc: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        if proc is None:
            pending.append(signum)
        elif proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for signum in pending:
        proc.send_signal(signum)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, sys.stdout.buffer, mask), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, sys.stderr.buffer, mask), daemon=True),
    ]
    for t in pumps:
        t.start()
    returncode = proc.wait()
    for t in pumps:
        # A worker orphaned by a crash could hold the pipe open forever: do not wait for it.
        t.join(timeout=5)
    return returncode if returncode >= 0 else 128 - returncode


def main() -> int:
    try:
        config = Config.from_env(os.environ)
        plan = config.pool_plan()
    except ConfigError as exc:
        log(f"configuration error: {exc}")
        return 2
    mask = Masker(config.secrets())
    if plan.workers < config.workers:
        log(
            f"only {plan.workers} of {config.workers} workers fit the database connection budget "
            f"({plan.budget} connections over {config.max_instances} instances); running {plan.workers}"
        )
    log(
        f"database {config.db_name} (auth: {config.auth_db_name}) as {config.db_user} via {config.socket_dir}; "
        f"artifacts {config.artifacts_destination}; {'hypercorn, HTTP/1.1 + h2c' if config.http2 else 'uvicorn'}; "
        f"{plan.workers} workers, pools {plan.pool_size}+{plan.max_overflow} per engine, at most "
        f"{plan.per_instance} connections per instance ({plan.budget} for {config.max_instances} instances)"
    )
    if config.auth_mode == AUTH_IAP:
        log(
            f"sign-in through IAP only: audience {config.iap_audience}, keys from {config.iap_certs_url}, "
            f"MLflow admins: {', '.join(config.iap_admins) or 'none'}"
        )
    private_dir = Path(tempfile.mkdtemp(prefix="mlflow-gcp-"))  # 0700
    try:
        try:
            ini = auth_ini(
                database_uri=config.auth_uri,
                admin_username=config.admin_username,
                admin_password=config.admin_password,
                default_permission=config.default_permission,
                auth_cache_ttl_seconds=config.auth_cache_ttl,
                authorization_function=config.authorization_function,
            )
        except ConfigError as exc:
            log(f"configuration error: {exc}")
            return 2
        ini_path = write_private_file(private_dir, "basic_auth.ini", ini)
        env = server_env(os.environ, config, plan, ini_path)
        argv = [sys.executable, os.path.abspath(__file__), "serve", *server_args(config, plan.workers)]
        return supervise(argv, env, mask)
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)


# --- the serve process: upgrade under a lock, then MLflow's own server command ---------------------------------


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


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.exit(serve(sys.argv[2:]))
    sys.exit(main())
