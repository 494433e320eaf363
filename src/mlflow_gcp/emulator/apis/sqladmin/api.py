"""Cloud SQL Admin v1: instances insert/get/list/patch/update/delete, databases insert/get/list/patch/update/delete,
users insert/get/list/update/delete, operations get/list (backups and recovery: backups.py, recovery.py extend it).

Shapes follow traffic recorded on real GCP (tests/golden/recordings/sql-*.log): creating a database and every
user call answer an operation that is already DONE; instance and other database changes answer PENDING.

What GCP does and the emulator reproduces:

- Every mutation answers a ``sql#operation`` (not google.longrunning) that is PENDING, then RUNNING, then DONE,
  with failures in ``error.errors``; the latency profile's delay passes before the change takes effect.
- One operation at a time per instance: a second mutation meanwhile gets 409 ``operationInProgress``.
  Database and user calls on an instance that is not running (still being created, stopped with
  ``activationPolicy: NEVER``) get 400 "Invalid request since instance is not running.".
- ``instances.get`` of a missing instance is 404 ``instanceDoesNotExist``; database and user calls on a missing
  instance are 403 ``notAuthorized`` (what GCP answers for an instance you cannot see).
- ``settings.edition`` defaults to ENTERPRISE_PLUS on POSTGRES_16 and newer, which takes only
  ``db-perf-optimized-N-*`` tiers; ENTERPRISE keeps 1–7 days of transaction logs; an instance needs public IP,
  private IP or PSC; ``deletionProtectionEnabled`` blocks deletion; a stale ``settings.settingsVersion`` is 412
  ``staleData``; a deleted instance's name stays taken for a week (control setting ``sql_name_reuse_blocked``).
- Database and user calls run against the real server: a database or role that already exists is refused at
  once with PostgreSQL's own words, as Cloud SQL does; dropping a role that owns objects fails.

Choices where GCP does something the emulator cannot: a MYSQL_* instance is a record only (its databases and users
are stored, no server runs: nothing can connect to it); without ``databaseVersion`` Cloud SQL creates a MySQL
instance, which the emulator answers 501, so that a forgotten version does not silently give a serverless record;
the server runs the installed PostgreSQL major version, which ``databaseInstalledVersion`` reports truthfully, and a
major version upgrade changes ``databaseVersion`` while the server keeps the installation its data was made with.
MySQL users are keyed by name (``host`` is recorded, not matched).
Passwords are never stored or returned: roles get SCRAM verifiers computed here.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import ipaddress
import re
import shutil
import subprocess
import threading
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from .... import tiers
from ...core.errors import GcpError
from ...core.http import ApiModule, ApiRequest, route
from ...core.paging import page
from ...core.validation import validate_discovery
from .postgres import (
    INSTALL_HINT,
    INTERNAL_DATABASES,
    INTERNAL_ROLES,
    SUPERUSER_ROLE,
    PostgresError,
    PostgresServer,
    check_socket_path,
    create_login_role,
    find_binaries,
    scram_verifier,
)

if TYPE_CHECKING:
    from ...core.world import World

KIND_INSTANCE = "sqladmin.instance"
KIND_OPERATION = "sqladmin.operation"
KIND_DELETED = "sqladmin.deletedInstanceName"
#: The databases and users of an instance the emulator keeps as records (MySQL: no server runs).
KIND_CATALOG = "sqladmin.recordedCatalog"
API_BASE = "https://sqladmin.googleapis.com/v1"
OPERATOR = "owner@example.com"
NAME_REUSE_SECONDS = 7 * 24 * 3600
DEFAULT_REGION = "us-central1"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,97}$")  # lowercase letters, digits, hyphens; a letter first; <= 98
_REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_POSTGRES = re.compile(r"^POSTGRES_(\d+)(?:_\d+)?$")
_MYSQL = re.compile(r"^MYSQL_(\d+)_(\d+)(?:_\d+)?$")
#: What Cloud SQL answered as ``upgradableDatabaseVersions`` (recorded: tests/golden/recordings/
#: sql-instance-postgres-minimal.log, sql-instance-postgres.log, sql-database.log, sql-user-full.log); versions not
#: listed get every newer major.
_MYSQL_8_0_MINORS = tuple(str(m) for m in (18, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 39, 40, 42, 43))
_UPGRADABLE: dict[str, list[str]] = {
    "POSTGRES_9_6": [],
    "POSTGRES_15": ["POSTGRES_16"],
    "POSTGRES_16": [],
    "MYSQL_5_7": ["MYSQL_8_0", *(f"MYSQL_8_0_{m}" for m in _MYSQL_8_0_MINORS if int(m) <= 37)],
    "MYSQL_8_0": [*(f"MYSQL_8_0_{m}" for m in _MYSQL_8_0_MINORS), "MYSQL_8_4"],
}
#: The MySQL build Cloud SQL installs for a version (recorded: sql-database.log, sql-user-full.log).
_MYSQL_INSTALLED = {"MYSQL_5_7": "MYSQL_5_7_44", "MYSQL_8_0": "MYSQL_8_0_41"}
_SUPPORTED_MAJORS = range(9, 19)
DELAY_KEYS = {
    "CREATE": "sqladmin.instance.create",
    "UPDATE": "sqladmin.instance.patch",
    "DELETE": "sqladmin.instance.delete",
    "CREATE_DATABASE": "sqladmin.database",
    "DELETE_DATABASE": "sqladmin.database",
    "UPDATE_DATABASE": "sqladmin.database",
    "CREATE_USER": "sqladmin.user",
    "UPDATE_USER": "sqladmin.user",
    "DELETE_USER": "sqladmin.user",
}
#: Operations Cloud SQL answers already DONE (recorded: tests/golden/recordings/sql-database.log, sql-user.log).
_ANSWERED_DONE = frozenset({"CREATE_DATABASE", "CREATE_USER", "UPDATE_USER", "DELETE_USER"})
#: Server settings the emulator owns (socket, logging, durability): Cloud SQL does not let flags set these.
MANAGED_FLAGS = frozenset(
    {
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "unix_socket_permissions",
        "unix_socket_group",
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        "external_pid_file",
        "cluster_name",
        "logging_collector",
        "log_statement",
        "log_min_error_statement",
        "fsync",
        "ssl",
        "shared_preload_libraries",
        # backups and point-in-time recovery (walarchive.py)
        "wal_level",
        "archive_mode",
        "archive_command",
        "archive_library",
        "restore_command",
        "recovery_target",
        "recovery_target_time",
        "recovery_target_action",
        "recovery_target_name",
        "recovery_target_lsn",
        "recovery_target_xid",
        "recovery_target_inclusive",
        "recovery_target_timeline",
    }
)
_RESTART_SETTINGS = ("tier", "databaseFlags", "activationPolicy")


# --- errors as Cloud SQL words them --------------------------------------------------------------------


def _invalid(message: str) -> GcpError:
    return GcpError(400, f"Invalid request: {message}", "INVALID_ARGUMENT", reason="invalid")


def _instance_missing() -> GcpError:
    return GcpError(404, "The Cloud SQL instance does not exist.", "NOT_FOUND", reason="instanceDoesNotExist")


def _not_authorized() -> GcpError:
    return GcpError(
        403, "The client is not authorized to make this request.", "PERMISSION_DENIED", reason="notAuthorized"
    )


def _not_running() -> GcpError:
    return _invalid("Invalid request since instance is not running.")


def _in_progress() -> GcpError:
    return GcpError(
        409,
        "Operation failed because another operation was already in progress.",
        "ABORTED",
        reason="operationInProgress",
    )


def _not_emulated(message: str) -> GcpError:
    return GcpError(501, f"{message} (not supported by the emulator).", "UNIMPLEMENTED", reason="notImplemented")


class _OpFailure(Exception):
    """Ends an operation DONE with this error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pg_detail(err: psycopg.Error) -> str:
    diag = err.diag
    detail = diag.message_primary or str(err).strip()
    if diag.message_detail:
        detail += f" Details: {diag.message_detail}"
    return detail


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """PATCH semantics: objects merge field by field, everything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@functools.cache
def _known_server_settings() -> frozenset[str] | None:
    """PostgreSQL's setting names (``postgres --describe-config``), for checking databaseFlags; None when no
    server is installed (the create operation then fails with the install hint)."""
    binaries = find_binaries()
    if binaries is None:
        return None
    try:
        out = subprocess.run(
            [binaries.path("postgres"), "--describe-config"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return frozenset(line.split("\t", 1)[0].lower() for line in out.splitlines() if line)


def _major(database_version: str) -> int:
    m = _POSTGRES.match(database_version)
    return int(m.group(1)) if m else 0


def _policy(instance: dict[str, Any]) -> str:
    return instance.get("settings", {}).get("activationPolicy", "ALWAYS")


def _is_mysql(instance: dict[str, Any]) -> bool:
    """MySQL instances are kept as records: no server runs, databases and users are stored."""
    return bool(_MYSQL.match(instance.get("databaseVersion", "")))


def _display_name(version: str) -> str:
    engine, _, rest = version.partition("_")
    numbers = rest.replace("_", ".")
    return f"{'PostgreSQL' if engine == 'POSTGRES' else 'MySQL'} {numbers}"


def _upgradable(version: str) -> list[dict[str, str]]:
    if version in _UPGRADABLE:
        names = _UPGRADABLE[version]
    elif m := _POSTGRES.match(version):
        names = [f"POSTGRES_{n}" for n in _SUPPORTED_MAJORS if n > int(m.group(1))]
    else:
        names = []
    out = []
    for name in names:
        major = "_".join(name.split("_")[:3]) if name.startswith("MYSQL") else name
        out.append({"displayName": _display_name(name), "majorVersion": major, "name": name})
    return out


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("_")[1:] if p.isdigit())


def _gemini_config(mysql: bool) -> dict[str, Any]:
    # recorded: tests/golden/recordings/sql-instance-postgres-minimal.log (PostgreSQL), sql-user.log (MySQL)
    if mysql:
        return {
            "activeQueryEnabled": False,
            "entitled": False,
            "flagRecommenderEnabled": True,
            "indexAdvisorEnabled": False,
        }
    return {
        "activeQueryEnabled": False,
        "entitled": False,
        "googleVacuumMgmtEnabled": False,
        "indexAdvisorEnabled": False,
        "oomSessionCancelEnabled": False,
    }


def _ip_addresses(instance: dict[str, Any]) -> list[dict[str, str]]:
    """Documentation-range and private addresses: nothing listens there (clients use the unix socket).
    recorded: sql-instance-postgres-minimal.log (PRIMARY and OUTGOING for PostgreSQL with public IP),
    sql-user.log (PRIMARY alone for MySQL), sql-instance-postgres.log (PRIVATE alone with a private network)."""
    ip = instance["settings"]["ipConfiguration"]
    octet = int(hashlib.sha256(instance["connectionName"].encode()).hexdigest()[:2], 16) % 253 + 1
    out = []
    if ip.get("ipv4Enabled"):
        out.append({"type": "PRIMARY", "ipAddress": f"198.51.100.{octet}"})
        if not _is_mysql(instance):
            out.append({"type": "OUTGOING", "ipAddress": f"203.0.113.{octet}"})
    if ip.get("privateNetwork"):
        out.append({"type": "PRIVATE", "ipAddress": f"10.128.0.{octet}"})
    return out


def _server_ca_cert(instance: dict[str, Any]) -> dict[str, Any]:
    """A placeholder of Cloud SQL's server CA (the emulator serves no TLS; clients use the unix socket)."""
    created = instance["createTime"]
    expires = f"{int(created[:4]) + 10}{created[4:]}"
    return {
        "kind": "sql#sslCert",
        "certSerialNumber": "0",
        "cert": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        "commonName": f"C=US,O=Google\\, Inc,CN=Google Cloud SQL Server CA,dnQualifier={uuid.uuid4()}",
        "sha1Fingerprint": hashlib.sha1(instance["connectionName"].encode()).hexdigest(),
        "instance": instance["name"],
        "createTime": created,
        "expirationTime": expires,
    }


class CoreSqlAdminApi(ApiModule):
    """Instances, databases, users and operations; backups.py and recovery.py extend it (SqlAdminApi)."""

    prefix = "/sqladmin"
    error_style = "legacy"
    service = "sqladmin.googleapis.com"
    title = "Cloud SQL Admin API"
    #: operationType -> the latency profile's key for the time it takes
    delay_keys: dict[str, str] = DELAY_KEYS

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self._lock = threading.RLock()
        self._servers: dict[str, PostgresServer] = {}
        #: instance key ("project/name") -> the operation running on it
        self._busy: dict[str, str] = {}
        self._polls: dict[str, int] = {}
        self._cancel = threading.Event()
        self._workers: set[threading.Thread] = set()

    # --- cross-module API (Cloud Run) -----------------------------------------------------------------

    @property
    def socket_root(self) -> Path:
        """Where every instance's socket directory lives, as ``/cloudsql`` on Cloud Run."""
        return self.world.data_dir.absolute() / "cloudsql"

    def socket_dir(self, connection_name: str) -> Path:
        """The directory holding ``.s.PGSQL.5432`` for ``project:region:instance``: named by a hash of the
        connection name, so that any valid project and instance name fits a unix socket path (107 bytes)."""
        if not connection_name or "/" in connection_name or connection_name in (".", ".."):
            raise ValueError(f"not a Cloud SQL connection name: {connection_name!r}")
        return self.socket_root / hashlib.sha256(connection_name.encode()).hexdigest()[:16]

    def instance_by_connection_name(self, connection_name: str) -> dict[str, Any] | None:
        """The stored instance resource whose ``connectionName`` this is, or None."""
        for instance in self.world.store.list(KIND_INSTANCE):
            if instance.get("connectionName") == connection_name:
                return instance
        return None

    # --- lifecycle hooks ------------------------------------------------------------------------------

    def _server(self, project: str, name: str, connection_name: str) -> PostgresServer:
        key = f"{project}/{name}"
        with self._lock:
            server = self._servers.get(key)
            if server is None:
                server = PostgresServer(
                    self.world.data_dir / "sql" / project / name, self.socket_dir(connection_name), name
                )
                self._servers[key] = server
            return server

    def _server_of(self, instance: dict[str, Any]) -> PostgresServer:
        return self._server(instance["project"], instance["name"], instance["connectionName"])

    def _halt(self) -> None:
        """Wake sleeping operations and wait for running ones, so nothing races a wipe or a shutdown."""
        self._cancel.set()
        deadline = time.monotonic() + 120
        for worker in list(self._workers):
            worker.join(max(0.0, deadline - time.monotonic()))
        self._cancel = threading.Event()

    def _stop_all(self) -> None:
        for instance in self.world.store.list(KIND_INSTANCE):
            self._server_of(instance)
        for server in list(self._servers.values()):
            try:
                server.stop()
            except PostgresError:
                traceback.print_exc()

    def reset(self) -> None:
        self._halt()
        with self._lock:
            self._stop_all()
            shutil.rmtree(self.world.data_dir / "sql", ignore_errors=True)
            shutil.rmtree(self.socket_root, ignore_errors=True)
            self._servers.clear()
            self._busy.clear()
            self._polls.clear()

    def shutdown(self) -> None:
        self._halt()
        with self._lock:
            self._stop_all()

    def restore(self) -> None:
        pending = [rec for rec in self.world.store.list(KIND_OPERATION) if rec["public"]["status"] != "DONE"]
        with self._lock:
            for rec in pending:
                self._busy[f"{rec['public']['targetProject']}/{rec['instance']}"] = rec["public"]["name"]
            for instance in self.world.store.list(KIND_INSTANCE):
                if instance["state"] != "RUNNABLE" or _policy(instance) == "NEVER" or _is_mysql(instance):
                    continue
                try:
                    self._server_of(instance).start(self._options(instance))
                except PostgresError:
                    traceback.print_exc()
            for rec in pending:
                self._launch(rec["public"]["targetProject"], rec["public"]["name"])

    # --- operations -----------------------------------------------------------------------------------

    def _check_idle(self, project: str, name: str) -> None:
        if f"{project}/{name}" in self._busy:
            raise _in_progress()

    def _start_op(
        self,
        project: str,
        instance: str,
        op_type: str,
        work: dict[str, Any],
        target: str = "",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a PENDING operation and run it in the background; the caller holds the lock and has checked
        the instance is idle. ``target`` is the path below the instance the operation is about (a database);
        ``extra`` are fields of the public operation (a ``backupContext``).
        Creating a database and every user call are done before Cloud SQL answers (recorded:
        tests/golden/recordings/sql-database.log, sql-user.log): so here too, unless the latency profile
        gives them time."""
        name = str(uuid.uuid4())
        public = {
            "kind": "sql#operation",
            "targetLink": f"{API_BASE}/projects/{project}/instances/{instance}{target}",
            "status": "PENDING",
            "user": OPERATOR,
            "insertTime": _now(),
            "operationType": op_type,
            "name": name,
            "targetId": instance,
            "selfLink": f"{API_BASE}/projects/{project}/operations/{name}",
            "targetProject": project,
            **(extra or {}),
        }
        self.world.store.put(
            KIND_OPERATION, f"{project}/{name}", {"public": public, "work": work, "instance": instance}
        )
        self._busy[f"{project}/{instance}"] = name
        if op_type in _ANSWERED_DONE and not self.world.control.delay(self.delay_keys[op_type]):
            self._run(project, name, self._cancel)
            rec = self.world.store.get(KIND_OPERATION, f"{project}/{name}")
            return rec["public"] if rec is not None else public
        self._launch(project, name)
        return public

    def _launch(self, project: str, op_name: str) -> None:
        worker = threading.Thread(
            target=self._run, args=(project, op_name, self._cancel), name=f"sqladmin-op:{op_name}", daemon=True
        )
        self._workers.add(worker)
        worker.start()

    def _set_op(self, project: str, op_name: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            rec = self.world.store.get(KIND_OPERATION, f"{project}/{op_name}")
            if rec is None:  # wiped by a reset
                return {}
            rec["public"].update(changes)
            self.world.store.put(KIND_OPERATION, f"{project}/{op_name}", rec)
            return rec

    def _run(self, project: str, op_name: str, cancel: threading.Event) -> None:
        try:
            rec = self.world.store.get(KIND_OPERATION, f"{project}/{op_name}")
            if rec is None:
                return
            work = rec["work"]
            if "startTime" not in rec["public"]:
                self._set_op(project, op_name, status="RUNNING", startTime=_now())
            if cancel.wait(self.world.control.delay(self.delay_keys[work["type"]])):
                return  # reset or shutdown: a restored emulator resumes the operation
            error: dict[str, Any] | None = None
            try:
                self._execute(project, rec["instance"], work)
            except _OpFailure as failure:
                error = {"code": failure.code, "message": failure.message}
            except Exception as exc:  # an emulator bug must still finish the operation, loudly
                traceback.print_exc()
                error = {"code": "INTERNAL_ERROR", "message": f"internal emulator error: {exc}"}
            with self._lock:
                changes: dict[str, Any] = {"status": "DONE", "endTime": _now()}
                if error is not None:
                    changes["error"] = {
                        "kind": "sql#operationErrors",
                        "errors": [{"kind": "sql#operationError", **error}],
                    }
                self._set_op(project, op_name, **changes)
                key = f"{project}/{rec['instance']}"
                if self._busy.get(key) == op_name:
                    del self._busy[key]
        finally:
            self._workers.discard(threading.current_thread())

    def _execute(self, project: str, instance_name: str, work: dict[str, Any]) -> None:
        op_type = work["type"]
        instance = self.world.store.get(KIND_INSTANCE, f"{project}/{instance_name}")
        if instance is None:
            raise _OpFailure("INTERNAL_ERROR", "The instance no longer exists.")
        if op_type == "CREATE":
            if _is_mysql(instance):
                self._do_create_recorded(instance)
            else:
                self._do_create(instance, work.get("rootVerifier"))
        elif op_type == "UPDATE":
            self._do_update(instance, work["instance"], work["restart"])
        elif op_type == "DELETE":
            if not _is_mysql(instance):
                self._server_of(instance).remove()
            with self._lock:
                self._servers.pop(f"{project}/{instance_name}", None)
                self.world.store.delete(KIND_INSTANCE, f"{project}/{instance_name}")
                self.world.store.delete(KIND_CATALOG, f"{project}/{instance_name}")
                self.world.store.put(
                    KIND_DELETED, f"{project}/{instance_name}", {"deleteTime": _now(), "deletedAt": time.time()}
                )
        elif _is_mysql(instance):
            self._do_recorded(instance, work)
        else:
            self._do_sql(instance, work)
            if "user" in work:
                self._do_recorded(instance, work)

    def _do_create_recorded(self, instance: dict[str, Any]) -> None:
        """A MySQL instance: no server runs; its databases and users are records (MySQL's own databases and
        its ``root`` user, as Cloud SQL lists them)."""
        key = f"{instance['project']}/{instance['name']}"
        collation = "utf8_general_ci" if instance["databaseVersion"] == "MYSQL_5_7" else "utf8mb4_0900_ai_ci"
        charset = "utf8" if instance["databaseVersion"] == "MYSQL_5_7" else "utf8mb4"
        system = ("information_schema", "mysql", "performance_schema", "sys")
        catalog = {
            "databases": {d: {"charset": charset, "collation": collation} for d in system},
            "users": {"root": {"host": "%"}},
        }
        installed = _MYSQL_INSTALLED.get(instance["databaseVersion"], f"{instance['databaseVersion']}_0")
        with self._lock:
            self.world.store.put(KIND_CATALOG, key, catalog)
            instance.update(
                state="RUNNABLE",
                databaseInstalledVersion=installed,
                maintenanceVersion=f"{installed}.R20250101.00_00",
            )
            self.world.store.put(KIND_INSTANCE, key, instance)

    def _do_recorded(self, instance: dict[str, Any], work: dict[str, Any]) -> None:
        key = f"{instance['project']}/{instance['name']}"
        with self._lock:
            catalog = self.world.store.get(KIND_CATALOG, key) or {"databases": {}, "users": {}}
            op_type = work["type"]
            if op_type == "CREATE_DATABASE":
                catalog["databases"][work["database"]] = work["fields"]
            elif op_type == "UPDATE_DATABASE":
                catalog["databases"].setdefault(work["database"], {}).update(work["fields"])
            elif op_type == "DELETE_DATABASE":
                catalog["databases"].pop(work["database"], None)
            elif op_type in ("CREATE_USER", "UPDATE_USER"):
                user = catalog["users"].setdefault(work["user"], {"host": "%"})
                user.update(work["fields"])
            elif op_type == "DELETE_USER":
                catalog["users"].pop(work["user"], None)
            self.world.store.put(KIND_CATALOG, key, catalog)

    def _options(self, instance: dict[str, Any]) -> dict[str, str]:
        settings = instance["settings"]
        options = {"max_connections": str(tiers.max_connections(settings["tier"]))}
        for flag in settings.get("databaseFlags", []):
            options[flag["name"]] = flag.get("value", "on")
        return options

    def _do_create(self, instance: dict[str, Any], root_verifier: str | None) -> None:
        key = f"{instance['project']}/{instance['name']}"
        server = self._server_of(instance)
        try:
            binaries = find_binaries(_major(instance["databaseVersion"]))
            if binaries is None:
                raise PostgresError(f"No PostgreSQL server is installed for the emulator to run: {INSTALL_HINT}.")
            server.initialize(binaries, top=self.world.data_dir.absolute())
            server.start(self._options(instance))
            server.bootstrap(root_verifier)
            if _policy(instance) == "NEVER":
                server.stop()
        except (PostgresError, psycopg.Error) as exc:
            try:
                server.stop()
            except PostgresError:
                traceback.print_exc()
            instance["state"] = "FAILED"
            self.world.store.put(KIND_INSTANCE, key, instance)
            raise _OpFailure("INTERNAL_ERROR", f"Instance creation failed: {exc}") from None
        version = binaries.version.replace(".", "_")
        instance.update(
            state="RUNNABLE",
            databaseInstalledVersion=f"POSTGRES_{version}",
            maintenanceVersion=f"POSTGRES_{version}.R20250101.00_00",
        )
        self.world.store.put(KIND_INSTANCE, key, instance)

    def _do_update(self, old: dict[str, Any], new: dict[str, Any], restart: bool) -> None:
        new["settings"]["settingsVersion"] = str(int(old["settings"].get("settingsVersion", "1")) + 1)
        new["etag"] = uuid.uuid4().hex
        # recorded: tests/golden/recordings/sql-instance-postgres-minimal.log (present once the instance changed)
        new["settings"]["backupConfiguration"].setdefault("replicationLogArchivingEnabled", False)
        if new["databaseVersion"] != old["databaseVersion"]:
            # A major version upgrade: the PostgreSQL server keeps the installation its data was created with
            # (databaseInstalledVersion stays truthful); a MySQL record takes Cloud SQL's build.
            if _is_mysql(new):
                installed = _MYSQL_INSTALLED.get(new["databaseVersion"], f"{new['databaseVersion']}_0")
                new.update(databaseInstalledVersion=installed, maintenanceVersion=f"{installed}.R20250101.00_00")
            new["upgradableDatabaseVersions"] = _upgradable(new["databaseVersion"])
            if not new["upgradableDatabaseVersions"]:
                del new["upgradableDatabaseVersions"]
        if restart and not _is_mysql(new):
            server = self._server_of(old)
            server.stop()
            if _policy(new) != "NEVER":
                try:
                    server.start(self._options(new))
                except PostgresError as exc:
                    if _policy(old) != "NEVER":
                        server.start(self._options(old))
                    message = f"The instance could not restart with the new settings: {exc}"
                    raise _OpFailure("ERROR_RDBMS", message) from None
        self.world.store.put(KIND_INSTANCE, f"{old['project']}/{old['name']}", new)

    def _do_sql(self, instance: dict[str, Any], work: dict[str, Any]) -> None:
        op_type = work["type"]
        target = work.get("database") or work.get("user")
        what = {
            "CREATE_DATABASE": f"failed to create database {target}.",
            "DELETE_DATABASE": f"failed to delete database {target}.",
            "UPDATE_DATABASE": f"failed to update database {target}.",
            "CREATE_USER": f"failed to create user {target}.",
            "UPDATE_USER": f"failed to update user {target}.",
            "DELETE_USER": f"failed to delete user {target}.",
        }[op_type]
        try:
            with self._server_of(instance).connect() as conn:
                if op_type == "CREATE_DATABASE":
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(work["database"]), sql.Identifier(SUPERUSER_ROLE)
                        )
                    )
                elif op_type == "DELETE_DATABASE":
                    conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(work["database"])))
                elif op_type == "CREATE_USER":
                    create_login_role(conn, work["user"], work["verifier"])
                elif op_type == "UPDATE_USER":
                    conn.execute(
                        sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                            sql.Identifier(work["user"]), sql.Literal(work["verifier"])
                        )
                    )
                elif op_type == "DELETE_USER":
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(work["user"])))
        except psycopg.Error as exc:
            raise _OpFailure("ERROR_RDBMS", f"{what} Detail: {_pg_detail(exc)}") from None

    # --- instance helpers -----------------------------------------------------------------------------

    def _project(self, req: ApiRequest) -> dict[str, Any]:
        return self.world.project(req["project"])

    def _instance(self, project: str, name: str) -> dict[str, Any]:
        instance = self.world.store.get(KIND_INSTANCE, f"{project}/{name}")
        if instance is None:
            raise _instance_missing()
        return instance

    def _running(self, project: str, name: str) -> tuple[dict[str, Any], PostgresServer | None]:
        """The instance and its server (None for a MySQL record), for database and user calls."""
        instance = self.world.store.get(KIND_INSTANCE, f"{project}/{name}")
        if instance is None:
            raise _not_authorized()
        if instance["state"] != "RUNNABLE" or _policy(instance) == "NEVER":
            raise _not_running()
        if _is_mysql(instance):
            return instance, None
        server = self._server_of(instance)
        if not server.running():
            raise _not_running()
        return instance, server

    def _catalog(self, instance: dict[str, Any]) -> dict[str, Any]:
        key = f"{instance['project']}/{instance['name']}"
        return self.world.store.get(KIND_CATALOG, key) or {"databases": {}, "users": {}}

    def _query(self, server: PostgresServer, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with server.connect() as conn:
                return conn.execute(query, params).fetchall()  # type: ignore[arg-type]
        except psycopg.OperationalError:
            raise GcpError(503, "Service temporarily unavailable.", "UNAVAILABLE", reason="serverException") from None

    def _validate_settings(self, instance: dict[str, Any], given: dict[str, Any]) -> None:
        """Fill Cloud SQL's defaults into ``instance['settings']`` and refuse what Cloud SQL refuses. ``given`` is
        what the caller sent (to tell defaults from choices)."""
        settings = instance["settings"]
        major = _major(instance["databaseVersion"])
        settings["kind"] = "sql#settings"
        edition = settings.get("edition")
        if not edition or edition == "EDITION_UNSPECIFIED":
            edition = "ENTERPRISE_PLUS" if major >= 16 else "ENTERPRISE"
        settings["edition"] = edition
        tier = settings.get("tier")
        if not tier:
            raise GcpError(400, "Missing parameter: Tier.", "INVALID_ARGUMENT", reason="required")
        if not tiers.tier_allowed(tier, edition):
            message = f"Invalid Tier ({tier}) for ({edition}) Edition."
            if edition == "ENTERPRISE_PLUS":
                message += (
                    " Use a predefined Tier like db-perf-optimized-N-* instead. Learn more at "
                    "https://cloud.google.com/sql/docs/postgres/create-instance#machine-types."
                )
            raise _invalid(message)
        for field, default in (
            ("availabilityType", "ZONAL"),
            ("pricingPlan", "PER_USE"),
            ("replicationType", "SYNCHRONOUS"),
            ("activationPolicy", "ALWAYS"),
            ("dataDiskType", "PD_SSD"),
            ("dataDiskSizeGb", "10"),
            ("storageAutoResize", True),
            ("storageAutoResizeLimit", "0"),
            ("deletionProtectionEnabled", False),
            ("connectorEnforcement", "NOT_REQUIRED"),
            ("authorizedGaeApplications", []),  # recorded: tests/golden/recordings/sql-instance-postgres.log
        ):
            settings.setdefault(field, default)
        if settings["activationPolicy"] == "ON_DEMAND":
            raise _invalid("The ON_DEMAND activation policy is not supported for PostgreSQL instances.")
        settings["locationPreference"] = {
            "kind": "sql#locationPreference",
            "zone": f"{instance['region']}-c",
            **settings.get("locationPreference", {}),
        }
        # IP: public by default; sslMode wins over the legacy requireSsl, and each is derived from the other.
        ip = {
            "ipv4Enabled": True,
            "authorizedNetworks": [],  # recorded: tests/golden/recordings/sql-instance-postgres-minimal.log
            **settings.get("ipConfiguration", {}),
        }
        given_ip = given.get("ipConfiguration", {})
        if "sslMode" not in given_ip and "requireSsl" in given_ip:
            ip["sslMode"] = (
                "TRUSTED_CLIENT_CERTIFICATE_REQUIRED" if ip["requireSsl"] else "ALLOW_UNENCRYPTED_AND_ENCRYPTED"
            )
        ip.setdefault("sslMode", "ALLOW_UNENCRYPTED_AND_ENCRYPTED")
        if "requireSsl" not in given_ip:
            ip["requireSsl"] = ip["sslMode"] == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
        if not ip["ipv4Enabled"] and not ip.get("privateNetwork") and not ip.get("pscConfig", {}).get("pscEnabled"):
            raise _invalid("At least one of Public IP or Private IP or PSC connectivity must be enabled.")
        for acl in ip.get("authorizedNetworks", []):
            try:
                ipaddress.ip_network(acl.get("value", ""), strict=False)
            except ValueError:
                raise _invalid(f"Invalid authorized network value ({acl.get('value', '')}).") from None
            acl.setdefault("kind", "sql#aclEntry")
        settings["ipConfiguration"] = ip
        # Backups: off unless asked (through the API), PITR needs backups, log retention by edition.
        # recorded: tests/golden/recordings/sql-instance-postgres-minimal.log (ENTERPRISE: no PITR field unless
        # set, log storage state unspecified), sql-instance-postgres.log (replication log archiving with backups)
        backup = {
            "kind": "sql#backupConfiguration",
            "enabled": False,
            "startTime": "12:00",
            "transactionLogRetentionDays": 14 if edition == "ENTERPRISE_PLUS" else 7,
            "backupRetentionSettings": {
                "retentionUnit": "COUNT",
                "retainedBackups": 15 if edition == "ENTERPRISE_PLUS" else 7,
            },
            "transactionalLogStorageState": (
                "CLOUD_STORAGE" if edition == "ENTERPRISE_PLUS" else "TRANSACTIONAL_LOG_STORAGE_STATE_UNSPECIFIED"
            ),
            **settings.get("backupConfiguration", {}),
        }
        if not _is_mysql(instance) and "binaryLogEnabled" in backup:
            # Binary logs are MySQL's: for PostgreSQL the flag is kept as replication log archiving (recorded:
            # tests/golden/recordings/sql-instance-pitr.log, created with binaryLogEnabled false).
            backup["replicationLogArchivingEnabled"] = bool(backup.pop("binaryLogEnabled"))
        if backup["enabled"]:
            backup.setdefault("replicationLogArchivingEnabled", False)
        days = int(backup["transactionLogRetentionDays"])
        limit = 35 if edition == "ENTERPRISE_PLUS" else 7
        if not 1 <= days <= limit:
            raise _invalid(f"The number of transaction log retention days must be between 1 and {limit}.")
        if backup.get("pointInTimeRecoveryEnabled") and not backup["enabled"]:
            raise _invalid("Point-in-time recovery requires automated backups to be enabled.")
        settings["backupConfiguration"] = backup
        for key, value in settings.get("userLabels", {}).items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(value)):
                raise _invalid(
                    f"Invalid label ({key}: {value}): keys start with a lowercase letter; keys and values "
                    "have at most 63 lowercase letters, digits, '_' or '-'."
                )
        known = None if _is_mysql(instance) else _known_server_settings()
        for flag in settings.get("databaseFlags", []):
            name = str(flag.get("name", "")).lower()
            if not name:
                raise _invalid("Missing parameter: flag name.")
            if name in MANAGED_FLAGS or (known is not None and "." not in name and name not in known):
                raise _invalid(f"Invalid flag name: {flag.get('name')}.")
            if name == "max_connections" and not str(flag.get("value", "")).isdigit():
                raise _invalid(f"Invalid value for flag max_connections: {flag.get('value')}.")
            flag["name"] = name

    # --- instances ------------------------------------------------------------------------------------

    @route("POST", "/v1/projects/{project}/instances", name="instances.insert")
    def insert_instance(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "sqladmin", "v1", "DatabaseInstance")
        project = self._project(req)
        pid = project["projectId"]
        name = body.get("name")
        if not name:
            raise _invalid("Missing parameter: Instance.")
        if not _NAME.match(name):
            raise _invalid(f"instance name ({name}).")
        version = body.get("databaseVersion")
        if not version:
            raise _not_emulated(
                "databaseVersion is missing: Cloud SQL would create a MySQL instance (its default engine), and the "
                "emulator runs only PostgreSQL; pin a POSTGRES_* version"
            )
        for field in ("masterInstanceName", "replicaConfiguration", "onPremisesConfiguration", "replicationCluster"):
            if body.get(field):
                raise _not_emulated(f"{field} (replicas and external servers)")
        mysql = bool(_MYSQL.match(version))
        if not _POSTGRES.match(version) and not mysql:
            raise _not_emulated(f"databaseVersion {version}: the emulator serves POSTGRES_* and MYSQL_* instances")
        if not mysql and _major(version) not in _SUPPORTED_MAJORS:
            raise _invalid(f"Invalid database version ({version}).")
        region = body.get("region") or DEFAULT_REGION
        if not _REGION.match(region):
            raise _invalid(f"Invalid region ({region}).")
        given = body.get("settings") or {}
        number = project["name"].split("/")[1]
        instance: dict[str, Any] = {
            **{k: copy.deepcopy(v) for k, v in body.items() if k != "rootPassword"},
            "kind": "sql#instance",
            "state": "PENDING_CREATE",
            "databaseVersion": version,
            "settings": copy.deepcopy(given),
            "etag": uuid.uuid4().hex,
            "instanceType": "CLOUD_SQL_INSTANCE",
            "backendType": "SECOND_GEN",
            "project": pid,
            "serviceAccountEmailAddress": f"p{number}-{uuid.uuid4().hex[:6]}@gcp-sa-cloud-sql.iam.gserviceaccount.com",
            "selfLink": f"{API_BASE}/projects/{pid}/instances/{name}",
            "connectionName": f"{pid}:{region}:{name}",
            "name": name,
            "region": region,
            "gceZone": f"{region}-c",
            "createTime": _now(),
            "sqlNetworkArchitecture": "NEW_NETWORK_ARCHITECTURE",
            # recorded: tests/golden/recordings/sql-instance-postgres-minimal.log (fields GCP always returns)
            "geminiConfig": {**_gemini_config(mysql), **body.get("geminiConfig", {})},
            "satisfiesPzi": True,
        }
        self._validate_settings(instance, given)
        instance["settings"]["settingsVersion"] = "1"
        instance["gceZone"] = instance["settings"]["locationPreference"]["zone"]
        instance["ipAddresses"] = _ip_addresses(instance)
        instance["serverCaCert"] = _server_ca_cert(instance)
        if upgradable := _upgradable(version):
            instance["upgradableDatabaseVersions"] = upgradable
        if not mysql:
            try:
                check_socket_path(self.socket_dir(instance["connectionName"]))
            except PostgresError as exc:
                raise _not_emulated(str(exc).rstrip(".")) from None
        root_password = body.get("rootPassword")
        verifier = scram_verifier(root_password) if root_password else None
        with self._lock:
            self._check_name_free(pid, name)
            self.world.store.put(KIND_INSTANCE, f"{pid}/{name}", instance)
            return self._start_op(pid, name, "CREATE", {"type": "CREATE", "rootVerifier": verifier})

    def _check_name_free(self, project: str, name: str) -> None:
        """A new instance's name: not an instance's, nor a deleted one's for a week. The caller holds the lock."""
        key = f"{project}/{name}"
        if self.world.store.get(KIND_INSTANCE, key) is not None:
            raise GcpError(
                409, "The Cloud SQL instance already exists.", "ALREADY_EXISTS", reason="instanceAlreadyExists"
            )
        deleted = self.world.store.get(KIND_DELETED, key)
        if (
            deleted is not None
            and self.world.control.settings.sql_name_reuse_blocked
            and time.time() - deleted["deletedAt"] < NAME_REUSE_SECONDS
        ):
            raise GcpError(
                409,
                "The Cloud SQL instance already exists. When you delete an instance, you can't reuse the name of "
                "the deleted instance until one week from the deletion date.",
                "ALREADY_EXISTS",
                reason="instanceAlreadyExists",
            )

    @route("GET", "/v1/projects/{project}/instances/{instance}", name="instances.get")
    def get_instance(self, req: ApiRequest) -> dict[str, Any]:
        return self._instance(self._project(req)["projectId"], req["instance"])

    @route("GET", "/v1/projects/{project}/instances", name="instances.list")
    def list_instances(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        items = self.world.store.list(KIND_INSTANCE, prefix=f"{pid}/")
        if flt := req.args.get("filter", "").strip():
            items = [i for i in items if _matches(i, flt)]
        chunk, token = page(items, req.args, default=500, maximum=500, size_arg="maxResults")
        out: dict[str, Any] = {"kind": "sql#instancesList"}
        if chunk:
            out["items"] = chunk
        if token:
            out["nextPageToken"] = token
        return out

    @route("PATCH", "/v1/projects/{project}/instances/{instance}", name="instances.patch")
    def patch_instance(self, req: ApiRequest) -> dict[str, Any]:
        return self._update_instance(req, replace=False)

    @route("PUT", "/v1/projects/{project}/instances/{instance}", name="instances.update")
    def update_instance(self, req: ApiRequest) -> dict[str, Any]:
        """instances.update: the body's settings replace the instance's (what it omits takes its default).
        recorded: tests/golden/recordings/sql-instance-postgres-minimal.log, sql-instance-postgres.log"""
        return self._update_instance(req, replace=True)

    @staticmethod
    def _check_version_change(old: dict[str, Any], version: str) -> None:
        """A major version upgrade (recorded: tests/golden/recordings/sql-instance-postgres-minimal.log): same
        engine, newer version."""
        current = old["databaseVersion"]
        same_engine = current.split("_")[0] == version.split("_")[0]
        if not same_engine or not (_POSTGRES.match(version) or _MYSQL.match(version)):
            raise _invalid(f"Invalid database version ({version}): an upgrade keeps the database engine.")
        if _version_key(version) <= _version_key(current):
            raise _invalid(f"Invalid database version ({version}): it must be newer than {current}.")
        if _POSTGRES.match(version) and _major(version) not in _SUPPORTED_MAJORS:
            raise _invalid(f"Invalid database version ({version}).")

    def _update_instance(self, req: ApiRequest, *, replace: bool) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "sqladmin", "v1", "DatabaseInstance")
        pid = self._project(req)["projectId"]
        name = req["instance"]
        with self._lock:
            old = self._instance(pid, name)
            self._check_idle(pid, name)
            if old["state"] != "RUNNABLE":
                raise _not_running()
            for field in ("name", "region", "project"):
                if field in body and body[field] != old[field]:
                    raise _invalid(f"The instance's {field} cannot be changed.")
            version = body.get("databaseVersion", old["databaseVersion"])
            if version != old["databaseVersion"]:
                self._check_version_change(old, version)
            if "rootPassword" in body:
                raise _invalid("rootPassword is used only on creation; change a password with users.update.")
            given = copy.deepcopy(body.get("settings") or {})
            current = old["settings"].get("settingsVersion", "1")
            # Stale means older than the instance's: a recording's settingsVersion is redacted ("123", recorded:
            # tests/golden/recordings/sql-instance-postgres.log), standing for the current one GCP accepted.
            stated = str(given.get("settingsVersion", current))
            if not stated.isdigit() or int(stated) < int(current):
                raise GcpError(412, "Condition does not match.", "FAILED_PRECONDITION", reason="staleData")
            given.pop("settingsVersion", None)
            new = copy.deepcopy(old)
            new["databaseVersion"] = version
            if replace:
                new["settings"] = {"settingsVersion": current, **given}
            else:
                new["settings"] = _merge(old["settings"], given)
            for field, value in body.items():
                if field not in ("settings", "name", "region", "project", "databaseVersion") and field in _PATCHABLE:
                    new[field] = copy.deepcopy(value)
            self._validate_settings(new, given)
            restart = any(new["settings"].get(f) != old["settings"].get(f) for f in _RESTART_SETTINGS)
            return self._start_op(pid, name, "UPDATE", {"type": "UPDATE", "instance": new, "restart": restart})

    @route("DELETE", "/v1/projects/{project}/instances/{instance}", name="instances.delete")
    def delete_instance(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        name = req["instance"]
        with self._lock:
            instance = self._instance(pid, name)
            self._check_idle(pid, name)
            if instance["settings"].get("deletionProtectionEnabled"):
                raise _invalid(
                    "The instance is protected from deletion. Set settings.deletionProtectionEnabled to false "
                    "(instances.patch) and try again."
                )
            final_backup = instance["settings"].get("finalBackupConfig", {}).get("enabled")
            if final_backup or req.args.get("enableFinalBackup") == "true":
                # Deleting an instance deletes its backups and transaction logs (backups.py); a final backup that
                # outlives the instance is not emulated.
                raise _not_emulated("A final backup kept after the instance is deleted")
            instance["state"] = "PENDING_DELETE"
            self.world.store.put(KIND_INSTANCE, f"{pid}/{name}", instance)
            return self._start_op(pid, name, "DELETE", {"type": "DELETE"})

    # --- databases ------------------------------------------------------------------------------------

    def _database(self, instance: dict[str, Any], name: str, charset: str, collation: str) -> dict[str, Any]:
        # PostgreSQL names the locale en_US.UTF-8; Cloud SQL spells its collation en_US.UTF8 (its documented
        # default). A server that fell back to C.UTF-8 (no en_US locale on the host) says so.
        collation = (
            re.sub(r"(?i)\.utf-?8$", ".UTF8", collation) if collation.lower().startswith("en_us.") else collation
        )
        return {
            "kind": "sql#database",
            "charset": charset,
            "collation": collation,
            # recorded: tests/golden/recordings/sql-database.log
            "etag": hashlib.sha256(f"{instance['etag']}/{name}/{charset}/{collation}".encode()).hexdigest()[:16],
            "name": name,
            "instance": instance["name"],
            "project": instance["project"],
            "selfLink": f"{instance['selfLink']}/databases/{name}",
        }

    _DATABASES = (
        "SELECT datname, pg_encoding_to_char(encoding), datcollate FROM pg_database "
        "WHERE NOT datistemplate AND datname <> ALL(%s)"
    )

    def _databases(
        self, instance: dict[str, Any], server: PostgresServer | None, name: str | None = None
    ) -> list[dict[str, Any]]:
        if server is None:
            found = self._catalog(instance)["databases"]
            names = sorted(found) if name is None else [name] if name in found else []
            return [self._database(instance, n, found[n]["charset"], found[n]["collation"]) for n in names]
        query = self._DATABASES + (" AND datname = %s" if name is not None else "") + " ORDER BY datname"
        params: tuple[Any, ...] = (list(INTERNAL_DATABASES),) + ((name,) if name is not None else ())
        return [self._database(instance, *row) for row in self._query(server, query, params)]

    @staticmethod
    def _mysql_charset(instance: dict[str, Any], body: dict[str, Any]) -> dict[str, str]:
        charset = body.get("charset") or ("utf8" if instance["databaseVersion"] == "MYSQL_5_7" else "utf8mb4")
        default = "utf8mb4_0900_ai_ci" if charset == "utf8mb4" else f"{charset}_general_ci"
        return {"charset": charset, "collation": body.get("collation") or default}

    @route("POST", "/v1/projects/{project}/instances/{instance}/databases", name="databases.insert")
    def insert_database(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "sqladmin", "v1", "Database")
        pid = self._project(req)["projectId"]
        name = _role_or_database_name(body, "database")
        with self._lock:
            instance, server = self._running(pid, req["instance"])
            work: dict[str, Any] = {"type": "CREATE_DATABASE", "database": name}
            if server is None:
                work["fields"] = self._mysql_charset(instance, body)
            elif body.get("charset") and body["charset"].upper().replace("-", "") != "UTF8":
                raise _invalid(f"Invalid charset ({body['charset']}): PostgreSQL databases use UTF8.")
            self._check_idle(pid, req["instance"])
            if self._databases(instance, server, name):
                raise _invalid(f'failed to create database {name}. Detail: pq: database "{name}" already exists.')
            return self._start_op(pid, req["instance"], "CREATE_DATABASE", work, f"/databases/{name}")

    @route("GET", "/v1/projects/{project}/instances/{instance}/databases", name="databases.list")
    def list_databases(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        instance, server = self._running(pid, req["instance"])
        out: dict[str, Any] = {"kind": "sql#databasesList"}
        if items := self._databases(instance, server):
            out["items"] = items
        return out

    @staticmethod
    def _database_missing() -> GcpError:
        # recorded: tests/golden/recordings/sql-database.log (Google's front end words it, with a status)
        return GcpError(404, "Not Found", "NOT_FOUND", reason="notFound", style="both")

    @route("GET", "/v1/projects/{project}/instances/{instance}/databases/{database}", name="databases.get")
    def get_database(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        instance, server = self._running(pid, req["instance"])
        found = self._databases(instance, server, req["database"])
        if not found:
            raise self._database_missing()
        return found[0]

    @route("PUT", "/v1/projects/{project}/instances/{instance}/databases/{database}", name="databases.update")
    def update_database(self, req: ApiRequest) -> dict[str, Any]:
        """recorded: tests/golden/recordings/sql-database.log (charset and collation, an UPDATE_DATABASE operation)"""
        return self._change_database(req)

    @route("PATCH", "/v1/projects/{project}/instances/{instance}/databases/{database}", name="databases.patch")
    def patch_database(self, req: ApiRequest) -> dict[str, Any]:
        return self._change_database(req)

    def _change_database(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "sqladmin", "v1", "Database")
        pid = self._project(req)["projectId"]
        name = req["database"]
        if body.get("name", name) != name:
            raise _invalid("A database cannot be renamed.")
        with self._lock:
            instance, server = self._running(pid, req["instance"])
            self._check_idle(pid, req["instance"])
            found = self._databases(instance, server, name)
            if not found:
                raise self._database_missing()
            work: dict[str, Any] = {"type": "UPDATE_DATABASE", "database": name}
            if server is None:
                work["fields"] = self._mysql_charset(instance, {**found[0], **body})
            else:
                if body.get("charset") and body["charset"].upper().replace("-", "") != "UTF8":
                    raise _invalid(f"Invalid charset ({body['charset']}): PostgreSQL databases use UTF8.")
                if body.get("collation") and body["collation"] != found[0]["collation"]:
                    raise _invalid(f"The collation of database {name} cannot be changed on PostgreSQL.")
            return self._start_op(pid, req["instance"], "UPDATE_DATABASE", work, f"/databases/{name}")

    @route("DELETE", "/v1/projects/{project}/instances/{instance}/databases/{database}", name="databases.delete")
    def delete_database(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        name = req["database"]
        with self._lock:
            instance, server = self._running(pid, req["instance"])
            self._check_idle(pid, req["instance"])
            if not self._databases(instance, server, name):
                raise self._database_missing()
            if server is not None and self._query(server, "SELECT 1 FROM pg_stat_activity WHERE datname = %s", (name,)):
                raise _invalid(
                    f'failed to delete database {name}. Detail: pq: database "{name}" is being accessed by other users.'
                )
            work = {"type": "DELETE_DATABASE", "database": name}
            return self._start_op(pid, req["instance"], "DELETE_DATABASE", work, f"/databases/{name}")

    # --- users ----------------------------------------------------------------------------------------

    def _user(self, instance: dict[str, Any], name: str, record: dict[str, Any]) -> dict[str, Any]:
        # recorded: tests/golden/recordings/sql-user-full.log (etag, iamStatus, passwordPolicy with its status;
        # no type for built-in users)
        policy = copy.deepcopy(record.get("passwordPolicy", {}))
        status: dict[str, Any] = {}
        duration = policy.get("passwordExpirationDuration")
        if duration and record.get("passwordSetAt"):
            seconds = float(str(duration).rstrip("s") or 0)
            expires = datetime.fromtimestamp(record["passwordSetAt"] + seconds, UTC)
            status["passwordExpirationTime"] = expires.isoformat(timespec="seconds").replace("+00:00", "Z")
        policy["status"] = status
        return {
            "kind": "sql#user",
            "etag": hashlib.sha256(f"{instance['etag']}/{name}/{record}".encode()).hexdigest()[:16],
            "name": name,
            "host": record.get("host", "") if _is_mysql(instance) else "",
            "instance": instance["name"],
            "project": instance["project"],
            "iamStatus": "IAM_STATUS_UNSPECIFIED",
            "passwordPolicy": policy,
        }

    def _users(
        self, instance: dict[str, Any], server: PostgresServer | None, name: str | None = None
    ) -> list[dict[str, Any]]:
        records = self._catalog(instance)["users"]
        if server is None:
            names = sorted(records) if name is None else [name] if name in records else []
        else:
            query = "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' AND rolname <> ALL(%s)"
            params: tuple[Any, ...] = (list(INTERNAL_ROLES),)
            if name is not None:
                query += " AND rolname = %s"
                params += (name,)
            names = [r[0] for r in self._query(server, query + " ORDER BY rolname", params)]
        return [self._user(instance, n, records.get(n, {})) for n in names]

    @staticmethod
    def _check_user_body(body: dict[str, Any], mysql: bool) -> str | None:
        user_type = body.get("type", "BUILT_IN")
        if user_type != "BUILT_IN":
            raise _not_emulated(f"Users of type {user_type}")
        password = body.get("password")
        if not password and not mysql:
            raise _invalid("Missing user password for PostgreSQL instance.")
        return password

    @staticmethod
    def _user_fields(body: dict[str, Any], password: str | None) -> dict[str, Any]:
        """What the emulator keeps of a user besides its role: never the password."""
        fields: dict[str, Any] = {}
        if "passwordPolicy" in body:
            fields["passwordPolicy"] = copy.deepcopy(body["passwordPolicy"])
        if password:
            fields["passwordSetAt"] = time.time()
        if body.get("host"):
            fields["host"] = body["host"]
        return fields

    @route("POST", "/v1/projects/{project}/instances/{instance}/users", name="users.insert")
    def insert_user(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "sqladmin", "v1", "User")
        pid = self._project(req)["projectId"]
        name = _role_or_database_name(body, "user")
        with self._lock:
            instance, server = self._running(pid, req["instance"])
            password = self._check_user_body(body, server is None)
            self._check_idle(pid, req["instance"])
            if server is not None and name.startswith("pg_"):
                raise _invalid(f'failed to create user {name}. Detail: pq: role name "{name}" is reserved.')
            if self._users(instance, server, name):
                raise _invalid(f'failed to create user {name}. Detail: pq: role "{name}" already exists.')
            work = {"type": "CREATE_USER", "user": name, "fields": self._user_fields(body, password)}
            if server is not None:
                work["verifier"] = scram_verifier(password or "")
            return self._start_op(pid, req["instance"], "CREATE_USER", work)

    @route("GET", "/v1/projects/{project}/instances/{instance}/users", name="users.list")
    def list_users(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        instance, server = self._running(pid, req["instance"])
        out: dict[str, Any] = {"kind": "sql#usersList"}
        # recorded: tests/golden/recordings/sql-user.log (no items when there are none)
        if items := self._users(instance, server):
            out["items"] = items
        return out

    def _user_missing(self, name: str) -> GcpError:
        return GcpError(404, f"The user {name} does not exist.", "NOT_FOUND", reason="notFound")

    @route("GET", "/v1/projects/{project}/instances/{instance}/users/{name}", name="users.get")
    def get_user(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        instance, server = self._running(pid, req["instance"])
        found = self._users(instance, server, req["name"])
        if not found:
            raise self._user_missing(req["name"])
        return found[0]

    @staticmethod
    def _user_name_param(req: ApiRequest) -> str:
        name = req.args.get("name")
        if not name:
            raise GcpError(400, "Missing parameter: name.", "INVALID_ARGUMENT", reason="required")
        return name

    @route("PUT", "/v1/projects/{project}/instances/{instance}/users", name="users.update")
    def update_user(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "sqladmin", "v1", "User")
        pid = self._project(req)["projectId"]
        name = self._user_name_param(req)
        for param in ("databaseRoles", "revokeExistingRoles", "serverRoles", "revokeExistingServerRoles"):
            if param in req.args:
                raise _not_emulated(f"users.update {param}")
        with self._lock:
            instance, server = self._running(pid, req["instance"])
            password = self._check_user_body(body, server is None)
            self._check_idle(pid, req["instance"])
            if not self._users(instance, server, name):
                raise self._user_missing(name)
            fields = self._user_fields({k: v for k, v in body.items() if k != "host"}, password)
            work = {"type": "UPDATE_USER", "user": name, "fields": fields}
            if server is not None:
                work["verifier"] = scram_verifier(password or "")
            return self._start_op(pid, req["instance"], "UPDATE_USER", work)

    @route("DELETE", "/v1/projects/{project}/instances/{instance}/users", name="users.delete")
    def delete_user(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        name = self._user_name_param(req)
        with self._lock:
            instance, server = self._running(pid, req["instance"])
            self._check_idle(pid, req["instance"])
            if not self._users(instance, server, name):
                raise self._user_missing(name)
            if server is not None:
                # Try the DROP in a transaction that is rolled back: a role owning objects is refused now, as on GCP.
                try:
                    with server.connect() as conn, conn.transaction(force_rollback=True):
                        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
                except psycopg.OperationalError:
                    raise GcpError(
                        503, "Service temporarily unavailable.", "UNAVAILABLE", reason="serverException"
                    ) from None
                except psycopg.Error as exc:
                    raise _invalid(f"failed to delete user {name}. Detail: {_pg_detail(exc)}") from None
            return self._start_op(pid, req["instance"], "DELETE_USER", {"type": "DELETE_USER", "user": name})

    # --- operations -----------------------------------------------------------------------------------

    @route("GET", "/v1/projects/{project}/operations/{operation}", name="operations.get")
    def get_operation(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        rec = self.world.store.get(KIND_OPERATION, f"{pid}/{req['operation']}")
        if rec is None:
            raise GcpError(404, "The Cloud SQL operation does not exist.", "NOT_FOUND", reason="operationDoesNotExist")
        op = rec["public"]
        with self._lock:
            polls = self._polls[op["name"]] = self._polls.get(op["name"], 0) + 1
        if op["status"] == "DONE" and polls <= self.world.control.settings.min_pending_polls:
            op = {k: v for k, v in op.items() if k not in ("endTime", "error")}
            op["status"] = "RUNNING"
        return op

    @route("GET", "/v1/projects/{project}/operations", name="operations.list")
    def list_operations(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        instance = req.args.get("instance")
        ops = [r["public"] for r in self.world.store.list(KIND_OPERATION, prefix=f"{pid}/")]
        if instance:
            ops = [op for op in ops if op["targetId"] == instance]
        ops.sort(key=lambda op: op["insertTime"], reverse=True)
        chunk, token = page(ops, req.args, default=500, maximum=500, size_arg="maxResults")
        out: dict[str, Any] = {"kind": "sql#operationsList"}
        if chunk:
            out["items"] = chunk
        if token:
            out["nextPageToken"] = token
        return out


def _role_or_database_name(body: dict[str, Any], what: str) -> str:
    """A PostgreSQL identifier: present, at most 63 bytes (NAMEDATALEN - 1), no NUL."""
    name = body.get("name")
    if not name:
        raise _invalid(f"Missing parameter: {what} name.")
    if len(name.encode()) > 63 or "\x00" in name:
        raise _invalid(f"Invalid {what} name ({name}).")
    return str(name)


#: Top-level instance fields a patch may change (besides settings).
_PATCHABLE = frozenset({"maxDiskSize", "diskEncryptionConfiguration", "failoverReplica", "geminiConfig", "tags"})


def _field(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _matches(instance: dict[str, Any], flt: str) -> bool:
    """instances.list ``filter``: space-separated ``field:value`` / ``field=value`` terms, all of which must hold
    (the subset of Cloud SQL's filter syntax tools use, e.g. ``name:foo`` or ``settings.userLabels.env:prod``)."""
    for term in flt.split():
        if term.upper() == "AND":
            continue
        m = re.match(r"^([\w.]+)\s*(:|=)\s*(.+)$", term)
        if not m:
            raise _invalid(f"Invalid filter ({flt}).")
        value = _field(instance, m.group(1))
        wanted = m.group(3).strip('"')
        if value is None or str(value).lower() != wanted.lower():
            return False
    return True
