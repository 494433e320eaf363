"""The MLflow server's configuration, as PID 1 (entrypoint.py, whose docstring lists every variable) reads it from
the environment: validated into :class:`Config`, the connection pools planned (:func:`plan_pools`), and what the serve
process (mlflow_gcp_serve.py) is given: the basic-auth ini file, ``mlflow server``'s options and its environment.
The serve process reads the few settings it needs back from that environment, with the helpers here.

Only the standard library: PID 1 imports this module and starts in milliseconds.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
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
#: The NOLOGIN role that owns every table; the login roles are its members (mlflow_gcp_serve.py says why).
OWNER_ROLE = "mlflow_owner"
#: Role names we create or grant: plain lower-case identifiers (quoted anyway).
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
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
