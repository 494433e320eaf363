"""The MLflow server image's entrypoint (docker/entrypoint.py), run for real: PostgreSQL from the emulator's
Cloud SQL, artifacts in the emulator's Cloud Storage, the real MLflow client and httpx over h2c.

The pure parts (pool sizing, ini escaping, URLs, masking, configuration) are unit-tested first; the rest starts
``python docker/entrypoint.py`` as Cloud Run would, each server in its own process group that is always killed.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
import requests
import sqlalchemy

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin, server_image_python
from tests.conftest import enable

ENTRYPOINT = Path(__file__).resolve().parents[2] / "src" / "mlflow_gcp" / "server_image" / "entrypoint.py"


def _load_image_module(name: str, as_name: str | None = None) -> ModuleType:
    """A module of the image (a file in /app, not a package module), registered under the name the image's modules
    import each other by (entrypoint.py and mlflow_gcp_serve.py import mlflow_gcp_config)."""
    spec = importlib.util.spec_from_file_location(as_name or name, ENTRYPOINT.parent / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


#: The configuration PID 1 reads, the serve process it starts, and PID 1 itself.
cfg = _load_image_module("mlflow_gcp_config")
serve_process = _load_image_module("mlflow_gcp_serve")
ep = _load_image_module("entrypoint", as_name="mlflow_gcp_image_entrypoint")

# The characters that break naive URL and ini handling, plus a random part so a leak is unambiguous.
DB_PASSWORD = f"db%pa@ss:w/rd%%41-{uuid.uuid4().hex[:10]}"
ADMIN_USER = "admin"
ADMIN_PASSWORD = f"Adm1n%pass@:/-{uuid.uuid4().hex[:10]}"
SECRET_KEY = f"flask-secret-{uuid.uuid4().hex}"
DB_USER = "mlflow"
READY_TIMEOUT = 120.0


# --- unit: pool sizing -----------------------------------------------------------------------------------------


def test_pool_plan_fits_the_budget_for_every_small_configuration():
    for max_connections in (25, 50, 100, 200, 1000):
        for max_instances in range(1, 12):
            for workers in range(1, 5):
                try:
                    plan = cfg.plan_pools(max_connections=max_connections, max_instances=max_instances, workers=workers)
                except cfg.ConfigError:
                    # Refused only when not even one worker with the smallest usable pools fits.
                    reserve = cfg.default_reserve(max_connections)
                    assert (max_connections - reserve) // max_instances < 2 * cfg.ENGINES_PER_WORKER
                    continue
                assert 1 <= plan.workers <= workers
                assert plan.pool_size >= 1 and plan.max_overflow >= 1  # MLflow ignores a 0 (see below)
                assert plan.per_engine <= cfg.MAX_PER_ENGINE
                assert plan.per_instance == plan.workers * cfg.ENGINES_PER_WORKER * plan.per_engine
                assert plan.per_instance * max_instances <= max_connections - cfg.default_reserve(max_connections)


def test_pool_plan_examples():
    # db-f1-micro (25), one instance, two workers: 20 usable, 3 engines x 2 workers x 3 connections.
    plan = cfg.plan_pools(max_connections=25, max_instances=1, workers=2)
    assert (plan.workers, plan.pool_size, plan.max_overflow, plan.budget, plan.per_instance) == (2, 1, 2, 20, 18)
    # Three instances on db-f1-micro: only one worker each fits.
    plan = cfg.plan_pools(max_connections=25, max_instances=3, workers=2)
    assert (plan.workers, plan.pool_size, plan.max_overflow, plan.per_instance) == (1, 1, 1, 6)
    # A large tier is capped at SQLAlchemy's default pool.
    plan = cfg.plan_pools(max_connections=1000, max_instances=2, workers=4)
    assert (plan.workers, plan.pool_size, plan.max_overflow) == (4, 5, 10)
    # An explicit reserve is honoured.
    plan = cfg.plan_pools(max_connections=100, max_instances=2, workers=2, reserve=40)
    assert plan.budget == 60 and plan.per_instance <= 30


def test_pool_plan_refuses_what_cannot_fit():
    with pytest.raises(cfg.ConfigError, match="Lower the maximum instance count"):
        cfg.plan_pools(max_connections=25, max_instances=4, workers=1)
    with pytest.raises(cfg.ConfigError):
        cfg.plan_pools(max_connections=25, max_instances=1, workers=1, reserve=25)
    with pytest.raises(cfg.ConfigError):
        cfg.plan_pools(max_connections=25, max_instances=0, workers=1)


def test_mlflow_ignores_a_zero_pool_setting(monkeypatch):
    """Why every engine gets at least pool 1 + overflow 1: MLflow passes a 0 on as "unset"."""
    from mlflow.store.db.utils import create_sqlalchemy_engine

    url = "postgresql+psycopg2://u:p@/db?host=/nonexistent"
    monkeypatch.setenv(cfg.POOL_SIZE, "1")
    monkeypatch.setenv(cfg.MAX_OVERFLOW, "0")
    engine = create_sqlalchemy_engine(url)
    assert engine.pool.size() == 1 and engine.pool._max_overflow == 10  # SQLAlchemy's default, not 0
    monkeypatch.setenv(cfg.MAX_OVERFLOW, "1")
    assert create_sqlalchemy_engine(url).pool._max_overflow == 1


# --- unit: URLs, the ini file, masking, configuration ----------------------------------------------------------


# Fixed ids: the random parts of the secrets must not leak into test ids (xdist workers must collect the same ids).
@pytest.mark.parametrize(
    "password",
    [DB_PASSWORD, "%(here)s;#=x", "плохой пароль ✓", "a+b c&d?e#f"],
    ids=["db-password", "interpolation", "unicode", "url-specials"],
)
def test_postgres_url_round_trips_through_sqlalchemy(password):
    url = sqlalchemy.engine.make_url(cfg.postgres_url("us@er", password, "my db", "/cloudsql/p:us-central1:i"))
    assert (url.username, url.password, url.database) == ("us@er", password, "my db")
    assert url.query == {"host": "/cloudsql/p:us-central1:i"} and url.host is None


@pytest.mark.parametrize(
    "password",
    [ADMIN_PASSWORD, "100%(x)s%%", "#;= :%", "ends-with-%"],
    ids=["admin-password", "percent-format", "ini-specials", "trailing-percent"],
)
def test_auth_ini_is_read_back_unchanged_by_mlflow(tmp_path, monkeypatch, password):
    from mlflow.server.auth.config import read_auth_config

    database_uri = cfg.postgres_url(DB_USER, DB_PASSWORD, "mlflow_auth", "/cloudsql/p:r:i")
    text = cfg.auth_ini(
        database_uri=database_uri,
        admin_username="root%user",
        admin_password=password,
        default_permission="READ",
        auth_cache_ttl_seconds=60,
    )
    path = cfg.write_private_file(tmp_path, "basic_auth.ini", text)
    assert path.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = read_auth_config()
    assert config.database_uri == database_uri
    assert (config.admin_username, config.admin_password) == ("root%user", password)
    assert config.default_permission == "READ"
    assert config.auth_cache_ttl_seconds == 60
    assert config.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"


@pytest.mark.parametrize("bad", ["line\nbreak", " leading", "trailing ", "cr\r"])
def test_auth_ini_refuses_values_configparser_would_change(bad):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.ini_escape(bad)
    assert bad not in str(err.value)


def _env(**overrides: str) -> dict[str, str]:
    env = {
        cfg.ENV_DB_USER: DB_USER,
        cfg.ENV_DB_PASSWORD: DB_PASSWORD,
        cfg.ENV_CONNECTION: "proj:us-central1:inst",
        cfg.ENV_ARTIFACTS: "gs://bucket/prefix/",
        cfg.ENV_ALLOWED_HOSTS: "https://svc-abc-uc.a.run.app,svc-1.us-central1.run.app",
        cfg.ENV_ADMIN_USERNAME: ADMIN_USER,
        cfg.ENV_ADMIN_PASSWORD: ADMIN_PASSWORD,
        cfg.ENV_SECRET_KEY: SECRET_KEY,
        cfg.ENV_MAX_INSTANCES: "2",
        cfg.ENV_MAX_CONNECTIONS: "100",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v != "<unset>"}


def test_config_from_env_defaults_and_derived_values():
    config = cfg.Config.from_env(_env())
    assert config.socket_dir == "/cloudsql/proj:us-central1:inst"
    assert (config.db_name, config.auth_db_name, config.workers, config.port) == ("mlflow", "mlflow_auth", 1, 8080)
    assert config.http2 is True and config.auth_cache_ttl == 60 and config.default_permission == "READ"
    assert config.artifacts_destination == "gs://bucket/prefix"
    assert "svc-abc-uc.a.run.app" in config.allowed_hosts and "svc-1.us-central1.run.app" in config.allowed_hosts
    assert "localhost:*" in config.allowed_hosts
    assert config.cors_origins == ["https://svc-abc-uc.a.run.app", "https://svc-1.us-central1.run.app"]
    assert sqlalchemy.engine.make_url(config.tracking_uri).password == DB_PASSWORD
    assert sqlalchemy.engine.make_url(config.auth_uri).database == "mlflow_auth"
    local = cfg.Config.from_env(_env(**{cfg.ENV_CLOUDSQL_DIR: "/tmp/x/cloudsql/", cfg.ENV_HTTP2: "0"}))
    assert local.socket_dir == "/tmp/x/cloudsql/proj:us-central1:inst" and local.http2 is False


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({cfg.ENV_DB_PASSWORD: "<unset>"}, cfg.ENV_DB_PASSWORD),
        ({cfg.ENV_SECRET_KEY: ""}, cfg.ENV_SECRET_KEY),
        ({cfg.ENV_MAX_INSTANCES: "<unset>"}, cfg.ENV_MAX_INSTANCES),
        ({cfg.ENV_MAX_CONNECTIONS: "many"}, cfg.ENV_MAX_CONNECTIONS),
        ({cfg.ENV_ARTIFACTS: "s3://bucket"}, cfg.ENV_ARTIFACTS),
        ({cfg.ENV_CONNECTION: "../etc"}, cfg.ENV_CONNECTION),
        ({cfg.ENV_DEFAULT_PERMISSION: "ALL"}, cfg.ENV_DEFAULT_PERMISSION),
        ({cfg.ENV_HTTP2: "maybe"}, cfg.ENV_HTTP2),
        ({cfg.ENV_CLOUDSQL_DIR: "/" + "d" * 90}, "longer than"),
    ],
)
def test_config_errors_name_the_setting_and_no_secret(overrides, complaint):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.Config.from_env(_env(**overrides))
    message = str(err.value)
    assert complaint in message
    for secret in (DB_PASSWORD, ADMIN_PASSWORD, SECRET_KEY, quote(DB_PASSWORD, safe="")):
        assert secret not in message


def test_login_roles_put_the_servers_own_first_and_refuse_what_is_not_a_plain_name():
    env = _env(**{cfg.ENV_DB_USER: "mlflow_b", cfg.ENV_DB_USERS: "mlflow_a, mlflow_b"})
    assert cfg.login_roles(env) == ("mlflow_b", "mlflow_a")
    assert cfg.Config.from_env(env).db_users == ("mlflow_b", "mlflow_a")
    assert cfg.login_roles(_env()) == (DB_USER,)
    for bad in ('x"; DROP TABLE runs; --', "Upper", "a b", cfg.OWNER_ROLE):
        with pytest.raises(cfg.ConfigError, match=cfg.ENV_DB_USERS):
            cfg.login_roles(_env(**{cfg.ENV_DB_USERS: f"mlflow_a,{bad}"}))


def test_masker_hides_every_encoding_of_every_secret():
    config = cfg.Config.from_env(_env())
    mask = ep.Masker(config.secrets())
    line = (
        f"url={config.tracking_uri} ini={cfg.ini_escape(config.auth_uri)} raw={DB_PASSWORD} "
        f"admin={ADMIN_PASSWORD} {quote(ADMIN_PASSWORD, safe='')} key={SECRET_KEY}\n"
    ).encode()
    masked = mask(line).decode()
    for secret in (DB_PASSWORD, ADMIN_PASSWORD, SECRET_KEY):
        for form in (secret, quote(secret, safe=""), quote(secret, safe="").replace("%", "%%")):
            assert form not in masked
    assert masked.count("***") >= 6 and masked.startswith("url=postgresql+psycopg2://mlflow:***@/mlflow")
    # As SQLAlchemy renders a URL (MLflow's auth store hands that to alembic).
    rendered = sqlalchemy.engine.make_url(cfg.postgres_url("u", "a b+c/d:e@f%g", "db", "/s")).render_as_string(
        hide_password=False
    )
    masker = ep.Masker(cfg.Config.from_env(_env(**{cfg.ENV_DB_PASSWORD: "a b+c/d:e@f%g"})).secrets())
    assert masker(rendered.encode()) == b"postgresql+psycopg2://u:***@/db?host=%2Fs"


def test_server_args_and_env_carry_no_secret(tmp_path):
    config = cfg.Config.from_env(_env())
    plan = config.pool_plan()
    args = cfg.server_args(config, plan.workers)
    env = cfg.server_env({**_env(), "MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 12}, config, plan, tmp_path / "a.ini")
    joined = " ".join(args)
    for secret in (DB_PASSWORD, ADMIN_PASSWORD, SECRET_KEY, quote(DB_PASSWORD, safe="")):
        assert secret not in joined
    assert "--app-name basic-auth" in joined and "--serve-artifacts" in joined
    assert cfg.ENV_DB_PASSWORD not in env and cfg.ENV_ADMIN_PASSWORD not in env
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in env
    assert env[cfg.MLFLOW_BACKEND_STORE_URI] == config.tracking_uri
    assert (env[cfg.POOL_SIZE], env[cfg.MAX_OVERFLOW]) == (str(plan.pool_size), str(plan.max_overflow))


def test_environment_reads_records_every_read_with_its_value_and_puts_os_environ_back(monkeypatch):
    monkeypatch.setenv("MGT_SET", "a")
    monkeypatch.delenv("MGT_UNSET", raising=False)
    environ, environ_class = os.environ, type(os.environ)
    with pytest.raises(RuntimeError), serve_process.environment_reads() as reads:
        assert os.environ.get("MGT_SET") == "a"
        assert "MGT_UNSET" not in os.environ
        assert os.getenv("MGT_UNSET", "d") == "d"
        assert os.environ["MGT_SET"] == "a"
        raise RuntimeError  # the class is put back however the block ends
    assert reads == {"MGT_SET": "a", "MGT_UNSET": None}
    assert os.environ is environ and type(os.environ) is environ_class
    os.environ.get("MGT_OTHER")
    assert "MGT_OTHER" not in reads


def test_server_env_sets_what_mlflow_server_sets_from_the_same_options(tmp_path):
    """What `mlflow server` puts in the environment from the options server_args gives it, PID 1 already puts in the
    serve process's: MLflow, imported there before the command runs, then configures itself as its workers would."""
    config = cfg.Config.from_env(_env())
    plan = config.pool_plan()
    args = cfg.server_args(config, plan.workers)
    env = cfg.server_env(_env(), config, plan, tmp_path / "a.ini")
    assert env[cfg.MLFLOW_SERVER_ALLOWED_HOSTS] == args[args.index("--allowed-hosts") + 1]
    assert env[cfg.MLFLOW_SERVER_CORS_ALLOWED_ORIGINS] == args[args.index("--cors-allowed-origins") + 1]
    assert env[cfg.MLFLOW_SERVER_FILE_STORE] == env[cfg.MLFLOW_BACKEND_STORE_URI]
    assert env[cfg.MLFLOW_SERVER_SERVE_ARTIFACTS] == "true" and "--serve-artifacts" in args


def test_image_builds_and_its_entrypoint_is_this_file(tmp_path):
    """The Dockerfile as the emulator's builder (and Docker) reads it: COPY'd files, exec-form ENTRYPOINT, pins."""
    from mlflow_gcp.emulator import imagebuild

    docker_dir = ENTRYPOINT.parent
    instructions = imagebuild.parse_dockerfile((docker_dir / "Dockerfile").read_text())
    assert instructions[0].keyword == "FROM" and instructions[0].rest == "python:3.11-slim"
    image = imagebuild.build_image(instructions, docker_dir, tmp_path, python_envs=imagebuild.python_envs(tmp_path))
    record = image.record("us-central1-docker.pkg.dev/p/r/mlflow:t", "sha256:" + "0" * 64)
    assert record.entrypoint == ["python", "/app/entrypoint.py"] and not record.cmd
    assert record.command() == ["python", str(image.rootfs / "app" / "entrypoint.py")]
    assert (image.rootfs / "app" / "entrypoint.py").read_bytes() == ENTRYPOINT.read_bytes()
    # Every module of the image sits next to it: the configuration and the serve process it imports, IAP mode's
    # authorization_function, the app factory (entrypoint.py puts its directory on PYTHONPATH).
    modules = sorted(docker_dir.glob("*.py"))
    assert {m.name for m in modules} >= {"mlflow_gcp_config.py", "mlflow_gcp_serve.py", "mlflow_gcp_iap.py"}
    for module in modules:
        assert (image.rootfs / "app" / module.name).read_bytes() == module.read_bytes(), module.name
    assert record.exposed_ports == [8080] and image.config.get("User") == "10001"
    pins = {
        line.split("==")[0]: line.split("==")[1]
        for line in (docker_dir / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert set(pins) == {"mlflow[auth]", "psycopg2-binary", "google-cloud-storage", "hypercorn", "cryptography"}
    assert all(version[0].isdigit() for version in pins.values())


# --- the real thing: emulator fixtures -------------------------------------------------------------------------


def _wait_op(sql: Any, project: str, op: dict[str, Any], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = sql.operations().get(project=project, operation=op["name"]).execute()
        if op["status"] == "DONE":
            assert "error" not in op, op
            return
        time.sleep(0.1)
    raise TimeoutError(op["name"])


@dataclass
class Stack:
    emulator: Emulator
    project: str
    connection_name: str
    cloudsql_dir: Path
    bucket: str
    sql: Any
    gcs: Any
    databases: list[str] = field(default_factory=list)

    def create_database(self, name: str) -> str:
        op = self.sql.databases().insert(project=self.project, instance="mlflow", body={"name": name}).execute()
        _wait_op(self.sql, self.project, op)
        return name

    def connect(self, dbname: str) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.cloudsql_dir / self.connection_name),
            user=DB_USER,
            password=DB_PASSWORD,
            dbname=dbname,
            autocommit=True,
        )


@pytest.fixture(scope="module")
def stack(emulator: Emulator) -> Iterator[Stack]:
    """A project with a Cloud SQL instance (two databases, a user) and a bucket, made through the clients."""
    clients = Clients(emulator.base_url)
    project = f"srv-{uuid.uuid4().hex[:8]}"
    EmulatorAdmin(emulator.base_url).add_project(project)
    enable(clients, project, "sqladmin.googleapis.com")
    sql = clients.sqladmin()
    body = {
        "name": "mlflow",
        "databaseVersion": "POSTGRES_15",
        "rootPassword": f"root-{uuid.uuid4().hex}",
        "settings": {"tier": "db-f1-micro", "edition": "ENTERPRISE"},
    }
    _wait_op(sql, project, sql.instances().insert(project=project, body=body).execute())
    instance = sql.instances().get(project=project, instance="mlflow").execute()
    user = {"name": DB_USER, "password": DB_PASSWORD}
    _wait_op(sql, project, sql.users().insert(project=project, instance="mlflow", body=user).execute())
    gcs = clients.storage(project)
    bucket = gcs.create_bucket(f"mlflow-{uuid.uuid4().hex[:12]}", location="us-central1")
    # What Cloud Run's /cloudsql mount is for a revision (a short directory, as /cloudsql is, holding the
    # connection name): a link to the instance's socket directory, as the emulated Cloud Run makes.
    mount = Path(tempfile.mkdtemp(prefix="cs", dir="/tmp"))
    (mount / instance["connectionName"]).symlink_to(
        emulator.world.api("sqladmin").socket_dir(instance["connectionName"])
    )
    st = Stack(
        emulator=emulator,
        project=project,
        connection_name=instance["connectionName"],
        cloudsql_dir=mount,
        bucket=bucket.name,
        sql=sql,
        gcs=gcs,
    )
    st.create_database("mlflow")
    st.create_database("mlflow_auth")
    yield st
    shutil.rmtree(mount, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += parents.get(p, [])
    return tree


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    cwd: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cmdlines(self) -> dict[int, str]:
        out = {}
        for pid in _children(self.proc.pid):
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
        return out

    def wait_ready(self, auth: tuple[str, str] | None = None) -> None:
        """/health answers 200 (it does so before the database is touched, so also call an API)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                r = requests.get(
                    f"{self.url}/api/2.0/mlflow/experiments/search?max_results=1", auth=auth or ADMIN, timeout=5
                )
                if r.status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"server not ready in {READY_TIMEOUT}s:\n{self.log()[-4000:]}")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM to PID 1 only, as Cloud Run sends it; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


ADMIN = (ADMIN_USER, ADMIN_PASSWORD)


class Servers:
    """Starts entrypoint processes and guarantees they are killed."""

    def __init__(self, stack: Stack, workdir: Path) -> None:
        self.stack = stack
        self.workdir = workdir
        self.started: list[Server] = []

    def env(self, **overrides: str) -> dict[str, str]:
        # Not a test process: pytest's variables would switch MLflow into its own test-mode checks.
        base = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and not k.startswith("MLFLOW_")}
        env = {
            **base,
            "STORAGE_EMULATOR_HOST": self.stack.emulator.base_url,
            cfg.ENV_DB_USER: DB_USER,
            cfg.ENV_DB_PASSWORD: DB_PASSWORD,
            cfg.ENV_DB_NAME: "mlflow",
            cfg.ENV_AUTH_DB_NAME: "mlflow_auth",
            cfg.ENV_CONNECTION: self.stack.connection_name,
            cfg.ENV_CLOUDSQL_DIR: str(self.stack.cloudsql_dir),
            cfg.ENV_ARTIFACTS: f"gs://{self.stack.bucket}/artifacts",
            cfg.ENV_ALLOWED_HOSTS: "https://mlflow-test-uc.a.run.app",
            cfg.ENV_ADMIN_USERNAME: ADMIN_USER,
            cfg.ENV_ADMIN_PASSWORD: ADMIN_PASSWORD,
            cfg.ENV_SECRET_KEY: SECRET_KEY,
            cfg.ENV_MAX_INSTANCES: "1",
            cfg.ENV_MAX_CONNECTIONS: "25",
            cfg.ENV_HTTP2: "1",
        }
        env.update(overrides)
        return env

    def start(self, python: str = sys.executable, **overrides: str) -> Server:
        """The image's entrypoint, with the host's MLflow (the pinned one) unless ``python`` is another release's."""
        port = _free_port()
        cwd = Path(tempfile.mkdtemp(dir=self.workdir, prefix="cwd-"))
        log_path = cwd.with_suffix(".log")
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [python, str(ENTRYPOINT)],
                env=self.env(PORT=str(port), **overrides),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so the whole tree can be killed
            )
        server = Server(proc, port, log_path, cwd)
        self.started.append(server)
        return server

    def kill_all(self) -> None:
        for server in self.started:
            server.kill()


@pytest.fixture(scope="module")
def servers(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    s = Servers(stack, tmp_path_factory.mktemp("servers"))
    try:
        yield s
    finally:
        s.kill_all()


@pytest.fixture(scope="module")
def server(servers: Servers) -> Server:
    """The main server, as the image runs by default: one worker, served by hypercorn (HTTP/1.1 + h2c) from the
    process that migrated the databases, on the shared databases."""
    s = servers.start()
    s.wait_ready()
    return s


@pytest.fixture
def mlflow_client(server: Server, monkeypatch: pytest.MonkeyPatch) -> Any:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    return MlflowClient(tracking_uri=server.url)


# --- the real thing: tests ------------------------------------------------------------------------------------


def test_run_with_params_metrics_and_artifact_round_trips(server, mlflow_client, stack, tmp_path):
    exp_id = mlflow_client.create_experiment(f"exp-{uuid.uuid4().hex[:8]}")
    run = mlflow_client.create_run(exp_id)
    run_id = run.info.run_id
    mlflow_client.log_param(run_id, "alpha", "0.5")
    mlflow_client.log_param(run_id, "optimizer", "adam")
    for step, value in enumerate([0.9, 0.5, 0.25]):
        mlflow_client.log_metric(run_id, "loss", value, step=step)
    payload = os.urandom(5 * 1024 * 1024)
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(payload)
    mlflow_client.log_artifact(run_id, str(artifact), artifact_path="model")
    mlflow_client.set_terminated(run_id)

    got = mlflow_client.get_run(run_id)
    assert got.data.params == {"alpha": "0.5", "optimizer": "adam"}
    assert got.data.metrics == {"loss": 0.25}
    assert [m.value for m in mlflow_client.get_metric_history(run_id, "loss")] == [0.9, 0.5, 0.25]
    assert got.info.artifact_uri == f"mlflow-artifacts:/{exp_id}/{run_id}/artifacts"
    assert [f.path for f in mlflow_client.list_artifacts(run_id, "model")] == ["model/weights.bin"]
    downloaded = Path(mlflow_client.download_artifacts(run_id, "model/weights.bin", str(tmp_path / "dl")))
    assert downloaded.read_bytes() == payload

    # The bytes are in the bucket, under the destination's prefix.
    blob = stack.gcs.bucket(stack.bucket).get_blob(f"artifacts/{exp_id}/{run_id}/artifacts/model/weights.bin")
    assert blob is not None and blob.size == len(payload)
    assert blob.download_as_bytes() == payload


def test_an_upload_broken_off_mid_body_leaves_no_object(server, mlflow_client, stack):
    """Uploads stream to a resumable GCS session (mlflow_gcp_artifacts.py); when the client hangs up after 12 of
    20 MiB (so at least one 8 MiB chunk reached GCS) the session is cancelled and no partial object appears."""
    exp_id = mlflow_client.create_experiment(f"exp-{uuid.uuid4().hex[:8]}")
    run_id = mlflow_client.create_run(exp_id).info.run_id
    key = f"{exp_id}/{run_id}/artifacts/partial.bin"
    log = EmulatorAdmin(stack.emulator.base_url)
    seq = len(log.requests())
    token = base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"PUT /api/2.0/mlflow-artifacts/artifacts/{key} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: Basic {token}\r\nContent-Length: {20 * 1024 * 1024}\r\n\r\n".encode()
        )
        piece = os.urandom(1024 * 1024)
        for _ in range(12):
            sock.sendall(piece)

        def chunk_arrived() -> bool:
            return any(e["method"] == "PUT" and "upload_id=" in e["path"] for e in log.requests(seq))

        _eventually(chunk_arrived)
    # The server notices the hang-up and terminates its writer instead of closing it (a close would finalize what
    # was sent as the object); google-cloud-storage's terminate() then sends a DELETE (to the initiation URL, see
    # mlflow_gcp_artifacts._cancel), which marks that the server is done with the request.
    _eventually(lambda: any(e["method"] == "DELETE" for e in log.requests(seq)))
    assert not [e for e in log.requests(seq) if e["method"] == "PUT" and e["status"] in (200, 201)]
    assert stack.gcs.bucket(stack.bucket).get_blob(f"artifacts/{key}") is None
    assert mlflow_client.list_artifacts(run_id) == []


def _eventually(check: Any, timeout: float = 60.0) -> None:
    """Poll until ``check()`` holds (a state the server reaches on its own, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the expected state was not reached"
        time.sleep(0.1)


def test_unauthenticated_and_wrong_password_are_401(server):
    url = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, auth=(ADMIN_USER, ADMIN_PASSWORD + "x"), timeout=10).status_code == 401
    assert requests.get(url, auth=("nobody", ADMIN_PASSWORD), timeout=10).status_code == 401
    assert requests.get(url, auth=ADMIN, timeout=10).status_code == 200
    # Artifact downloads are protected as well.
    assert requests.get(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/x/y", timeout=10).status_code == 401


def test_service_host_and_origin_are_admitted_and_others_refused(server):
    search = f"{server.url}/api/2.0/mlflow/experiments/search"
    body = {"max_results": 1}
    service = {"Host": "mlflow-test-uc.a.run.app"}
    ok = requests.post(search, json=body, auth=ADMIN, timeout=10, headers=service)
    assert ok.status_code == 200
    # A browser sends Origin on the UI's own POSTs: the service's origin must not be taken for cross-site.
    same_origin = {**service, "Origin": "https://mlflow-test-uc.a.run.app"}
    assert requests.post(search, json=body, auth=ADMIN, timeout=10, headers=same_origin).status_code == 200
    cross = {**service, "Origin": "https://evil.example"}
    assert requests.post(search, json=body, auth=ADMIN, timeout=10, headers=cross).status_code == 403
    other_host = {"Host": "evil.example"}
    assert requests.post(search, json=body, auth=ADMIN, timeout=10, headers=other_host).status_code == 403
    # Health stays reachable whatever the Host (probes).
    assert requests.get(f"{server.url}/health", timeout=10, headers=other_host).status_code == 200


def test_no_secret_on_any_command_line_or_in_the_log(server, mlflow_client):
    mlflow_client.search_experiments()  # the server has started and served
    cmdlines = server.cmdlines()
    joined = "\n".join(cmdlines.values())
    # PID 1 and the serve process, which serves: no worker process imports MLflow a second time.
    assert len(cmdlines) == 2, cmdlines
    assert "serve --app-name basic-auth" in joined and "--workers 1" in joined and "hypercorn" not in joined
    log = server.log()
    assert "[mlflow-gcp]" in log and "hypercorn" in log and "serving from this process" in log
    for secret in (DB_PASSWORD, ADMIN_PASSWORD, SECRET_KEY):
        for form in (secret, quote(secret, safe=""), quote(secret, safe="").replace("%", "%%")):
            assert form not in joined
            assert form not in log


def test_connections_stay_within_the_plan_and_setup_holds_none(server, mlflow_client, stack):
    # Touch every engine in every worker: tracking, model registry, auth.
    for i in range(8):
        mlflow_client.search_experiments()
        mlflow_client.search_registered_models()
        requests.get(f"{server.url}/api/2.0/mlflow/users/get?username={ADMIN_USER}", auth=ADMIN, timeout=10)
        if i == 0:
            mlflow_client.create_registered_model(f"model-{uuid.uuid4().hex[:8]}")
    plan = cfg.plan_pools(max_connections=25, max_instances=1, workers=1)
    with stack.connect("mlflow") as conn:
        rows = conn.execute(
            "SELECT application_name, datname FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
            (DB_USER,),
        ).fetchall()
    apps = [r[0] for r in rows]
    assert apps, "the server holds no connection at all?"
    # Idle, each engine keeps at most its steady pool; overflow connections were closed when returned.
    assert len(rows) <= plan.workers * cfg.ENGINES_PER_WORKER * plan.pool_size, rows
    assert set(apps) == {cfg.APP_WORKER}, rows  # the setup process kept nothing open
    assert {r[1] for r in rows} <= {"mlflow", "mlflow_auth"}


def test_ownership_is_shared_by_both_login_roles_and_moves_off_a_legacy_owner(stack):
    """What every server start does (docker/entrypoint.py, ensure_ownership), on a database where a table was
    made before the scheme (owned by the login role itself): afterwards the owner role owns it, each login's
    sessions act as the owner, and the other login role can use, alter and add tables too."""
    other, other_password = f"alt_{uuid.uuid4().hex[:6]}", f"alt-{uuid.uuid4().hex}"
    body = {"name": other, "password": other_password}
    _wait_op(
        stack.sql,
        stack.project,
        stack.sql.users().insert(project=stack.project, instance="mlflow", body=body).execute(),
    )
    dbname = stack.create_database(f"own_{uuid.uuid4().hex[:6]}")
    socket_dir = str(stack.cloudsql_dir / stack.connection_name)
    with stack.connect(dbname) as conn:
        conn.execute("SET ROLE NONE")  # as the login itself, as a server from before the scheme did
        conn.execute("CREATE TABLE legacy (id int)")

    def start(user: str, password: str, users: tuple[str, ...]) -> None:
        engine = sqlalchemy.create_engine(cfg.postgres_url(user, password, dbname, socket_dir))
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                serve_process.ensure_ownership(conn, users, database=dbname)
        finally:
            engine.dispose()

    start(DB_USER, DB_PASSWORD, (DB_USER, other))
    start(DB_USER, DB_PASSWORD, (DB_USER, other))  # every start: a no-op the second time
    with stack.connect(dbname) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (cfg.OWNER_ROLE,)
        conn.execute("CREATE TABLE made_by_first (id int)")
    start(other, other_password, (other, DB_USER))
    with psycopg.connect(host=socket_dir, user=other, password=other_password, dbname=dbname, autocommit=True) as conn:
        assert conn.execute("SELECT session_user, current_user").fetchone() == (other, cfg.OWNER_ROLE)
        conn.execute("INSERT INTO legacy VALUES (1)")
        conn.execute("ALTER TABLE made_by_first ADD COLUMN note text")
        conn.execute("CREATE TABLE made_by_other (id int)")
        owners = conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
    assert dict(owners) == {t: cfg.OWNER_ROLE for t in ("legacy", "made_by_first", "made_by_other")}


def test_concurrent_first_start_on_a_fresh_database_in_every_process_tree(servers, stack):
    """Three servers start at once on fresh databases (one migrates, the others wait for its lock), one of each
    process tree: served from the serve process (the default), hypercorn's two worker processes, MLflow's uvicorn."""
    tracking = stack.create_database(f"fresh_{uuid.uuid4().hex[:6]}")
    auth = stack.create_database(f"fresh_auth_{uuid.uuid4().hex[:6]}")
    common = {cfg.ENV_DB_NAME: tracking, cfg.ENV_AUTH_DB_NAME: auth, cfg.ENV_MAX_INSTANCES: "3"}
    # Enough connections for two workers per instance (25 would give each of three instances room for one).
    common[cfg.ENV_MAX_CONNECTIONS] = "100"
    here = servers.start(**common, **{cfg.ENV_HTTP2: "1", cfg.ENV_WORKERS: "1"})
    workers = servers.start(**common, **{cfg.ENV_HTTP2: "1", cfg.ENV_WORKERS: "2"})
    h1 = servers.start(**common, **{cfg.ENV_HTTP2: "0", cfg.ENV_WORKERS: "1"})
    started = (here, workers, h1)
    errors: list[BaseException] = []

    def ready(s: Server) -> None:
        try:
            s.wait_ready()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ready, args=(s,)) for s in started]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for s in started:
        for _ in range(4):  # with two workers, each has likely served one
            r = requests.post(
                f"{s.url}/api/2.0/mlflow/experiments/create",
                json={"name": f"e-{s.port}-{uuid.uuid4().hex[:4]}"},
                auth=ADMIN,
                timeout=20,
            )
            assert r.status_code == 200, r.text
    trees = {s.port: " ".join(s.cmdlines().values()) for s in started}
    assert len(here.cmdlines()) == 2 and "hypercorn" not in trees[here.port] and "uvicorn" not in trees[here.port]
    assert "serving from this process" in here.log()
    # PID 1, the serve process, hypercorn's supervisor and its two workers (at least).
    assert len(workers.cmdlines()) >= 5 and "-m hypercorn --bind" in trees[workers.port], trees[workers.port]
    assert "--workers 2" in trees[workers.port]
    assert "uvicorn" in trees[h1.port] and "hypercorn" not in trees[h1.port]
    for s in (workers, h1):
        assert "serving from this process" not in s.log()
    with stack.connect(auth) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)
    with stack.connect(tracking) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        names = {r[0] for r in conn.execute("SELECT name FROM experiments").fetchall()}
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE usename = %s AND datname IN (%s, %s) "
            "AND pid <> pg_backend_pid()",
            (DB_USER, tracking, auth),
        ).fetchall()
    assert len(names) == 1 + 4 * len(started) and "Default" in names
    # Whatever the process tree, only the serving processes hold connections, each within its plan.
    assert {r[0] for r in rows} == {cfg.APP_WORKER}, rows
    plans = [cfg.plan_pools(max_connections=100, max_instances=3, workers=n) for n in (1, 2, 1)]
    assert len(rows) <= sum(p.workers * cfg.ENGINES_PER_WORKER * p.pool_size for p in plans), rows

    # The uvicorn server speaks HTTP/1.1 only: h2c prior knowledge fails there.
    with httpx.Client(http1=False, http2=True, timeout=10) as client, pytest.raises(httpx.HTTPError):
        client.get(f"{h1.url}/health")
    for s in started:
        assert s.terminate() == 0, s.log()[-3000:]


#: An older release the image supports whose tracking schema is behind the pinned one's (schemas.py).
OLDER_MLFLOW = "3.16.1"


def test_three_instances_of_a_new_release_starting_at_once_migrate_an_older_schema_once(servers, stack):
    """What an upgrade's new revision does when Cloud Run starts several instances of it at once: the databases an
    older MLflow made (its own server image's environment, as the emulator installs it) are migrated by exactly one
    of them, under the advisory lock; the others wait, find the schema current, and all serve the old data."""
    from mlflow_gcp.image_source import pinned_mlflow_version
    from mlflow_gcp.schemas import HEADS

    old_python = server_image_python(OLDER_MLFLOW)
    tracking = stack.create_database(f"old_{uuid.uuid4().hex[:6]}")
    auth = stack.create_database(f"old_auth_{uuid.uuid4().hex[:6]}")
    common = {cfg.ENV_DB_NAME: tracking, cfg.ENV_AUTH_DB_NAME: auth, cfg.ENV_MAX_INSTANCES: "3",
              cfg.ENV_MAX_CONNECTIONS: "100"}  # fmt: skip
    old = servers.start(python=old_python, **common)
    old.wait_ready()
    made = requests.post(f"{old.url}/api/2.0/mlflow/experiments/create", json={"name": "made-by-the-old-release"},
                         auth=ADMIN, timeout=20)  # fmt: skip
    assert made.status_code == 200, made.text
    assert requests.get(f"{old.url}/version", auth=ADMIN, timeout=10).text == OLDER_MLFLOW
    assert old.terminate() == 0, old.log()[-3000:]
    with stack.connect(tracking) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (HEADS[OLDER_MLFLOW][0],)

    started = [servers.start(**common) for _ in range(3)]  # one after another without waiting: they start at once
    for s in started:
        s.wait_ready()
    old_head, new_head = HEADS[OLDER_MLFLOW][0], HEADS[pinned_mlflow_version()][0]
    said = [s.log().count(f"tracking schema migrated from {old_head} to {new_head}") for s in started]
    assert sorted(said) == [0, 0, 1], [s.log()[-2000:] for s in started]
    with stack.connect(tracking) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(new_head,)]
    for s in started:
        assert requests.get(f"{s.url}/version", auth=ADMIN, timeout=10).text == pinned_mlflow_version()
        r = requests.get(f"{s.url}/api/2.0/mlflow/experiments/get-by-name",
                         params={"experiment_name": "made-by-the-old-release"}, auth=ADMIN, timeout=20)  # fmt: skip
        assert r.status_code == 200, r.text
    for s in started:
        assert s.terminate() == 0, s.log()[-3000:]


def test_a_serve_process_that_imported_mlflow_differently_serves_from_a_worker(servers, stack, tmp_path):
    """The serve process imports MLflow before `mlflow server` sets its variables. Here PID 1's copy of one that
    mlflow.server reads when imported (the Host allowlist) is missing: serving the app from that process would
    refuse the service's host, so it says so and starts a worker process, which gets it right; the serve process
    holds no connection then."""
    env = servers.env(PORT=str(_free_port()))
    config = cfg.Config.from_env(env)
    plan = config.pool_plan()
    ini = cfg.auth_ini(
        database_uri=config.auth_uri,
        admin_username=config.admin_username,
        admin_password=config.admin_password,
        default_permission=config.default_permission,
        auth_cache_ttl_seconds=config.auth_cache_ttl,
    )
    serve_env = cfg.server_env(env, config, plan, cfg.write_private_file(tmp_path, "basic_auth.ini", ini))
    del serve_env[cfg.MLFLOW_SERVER_ALLOWED_HOSTS]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ENTRYPOINT), "serve", *cfg.server_args(config, plan.workers)],
            env=serve_env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    s = Server(proc, config.port, log_path, tmp_path)
    servers.started.append(s)
    s.wait_ready()
    assert "MLflow read MLFLOW_SERVER_ALLOWED_HOSTS when imported" in s.log()
    assert "-m hypercorn --bind" in " ".join(s.cmdlines().values())
    search = f"{s.url}/api/2.0/mlflow/experiments/search"
    service = {"Host": "mlflow-test-uc.a.run.app"}
    assert requests.post(search, json={"max_results": 1}, auth=ADMIN, headers=service, timeout=10).status_code == 200
    # The serve process (this one's PID) only waits now: it holds no database connection, nor any other socket.
    sockets = [fd for fd in Path(f"/proc/{proc.pid}/fd").iterdir() if os.readlink(fd).startswith("socket:")]
    assert not sockets
    assert s.terminate() == 0, s.log()[-3000:]


def test_100_mb_artifact_over_h2c(server, stack):
    size = 100 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    digest = hashlib.sha256(chunk * 100).hexdigest()
    path = f"big/{uuid.uuid4().hex[:8]}/model.bin"
    url = f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{path}"

    def body() -> Iterator[bytes]:
        for _ in range(100):
            yield chunk

    # Prior knowledge h2c, as Cloud Run's front end talks to an `h2c` port.
    with httpx.Client(http1=False, http2=True, timeout=120, auth=ADMIN) as client:
        r = client.put(url, content=body(), headers={"Content-Length": str(size)})
        assert r.http_version == "HTTP/2" and r.status_code == 200, r.text
        h = hashlib.sha256()
        got = 0
        with client.stream("GET", url) as resp:
            assert resp.http_version == "HTTP/2" and resp.status_code == 200
            for part in resp.iter_bytes():
                h.update(part)
                got += len(part)
    assert got == size and h.hexdigest() == digest
    blob = stack.gcs.bucket(stack.bucket).get_blob(f"artifacts/{path}")
    assert blob is not None and blob.size == size


def _put_body_after_sigterm(server: Server, path: str, size: int) -> tuple[int, int]:
    """Start a PUT, wait until the app reads its body (100-continue), SIGTERM PID 1, finish the body.
    Returns (HTTP status, server exit status)."""
    token = __import__("base64").b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            (
                f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Basic {token}\r\n"
                f"Content-Length: {size}\r\nExpect: 100-continue\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode()
        )
        reader = sock.makefile("rb")
        status_line = reader.readline()
        assert b" 100 " in status_line, status_line
        while reader.readline() not in (b"\r\n", b""):  # the interim response's headers
            pass
        sock.sendall(b"x" * (size // 2))
        server.proc.send_signal(signal.SIGTERM)
        sock.sendall(b"x" * (size - size // 2))
        status = int(reader.readline().split()[1])
    return status, server.proc.wait(timeout=30)


def test_sigterm_finishes_in_flight_requests_and_a_restart_keeps_users(servers, server, stack):
    # A user created through the API before the restart, and the admin as it stands in PostgreSQL.
    r = requests.post(
        f"{server.url}/api/2.0/mlflow/users/create",
        json={"username": "alice", "password": "alice-password-123"},
        auth=ADMIN,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    status, exit_code = _put_body_after_sigterm(server, "/api/2.0/mlflow-artifacts/artifacts/graceful/a.bin", 1 << 20)
    assert (status, exit_code) == (200, 0)
    blob = stack.gcs.bucket(stack.bucket).get_blob("artifacts/graceful/a.bin")
    assert blob is not None and blob.size == 1 << 20
    assert not list(server.cwd.iterdir())  # no sqlite auth database next to the server

    # The restarted server is pinned to a different admin password (an auth database kept across `down`/`up`, or
    # restored): the admin, kept with its id and grants, now answers to the pinned password, and only to it.
    new_admin = (ADMIN_USER, "a-different-password-123")
    again = servers.start(**{cfg.ENV_ADMIN_PASSWORD: new_admin[1]})
    again.wait_ready(auth=new_admin)
    url = f"{again.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(url, auth=("alice", "alice-password-123"), timeout=10).status_code == 200
    assert requests.get(url, auth=new_admin, timeout=10).status_code == 200
    assert requests.get(url, auth=ADMIN, timeout=10).status_code == 401
    assert "password was reset to the pinned secret" in again.log()
    with stack.connect("mlflow_auth") as conn:
        users = {r[0]: r[1] for r in conn.execute("SELECT username, is_admin FROM users").fetchall()}
    assert users == {ADMIN_USER: True, "alice": False}
    assert not list(again.cwd.iterdir())
    exit_code = again.terminate()
    assert exit_code == 0, again.log()[-3000:]
