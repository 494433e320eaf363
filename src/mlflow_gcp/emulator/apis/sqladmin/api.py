"""Cloud SQL Admin v1: instances insert/get/list/patch/update/delete (instances.py, settings.py), databases
insert/get/list/patch/update/delete (databases.py), users insert/get/list/update/delete (users.py), operations
get/list and the running of every operation (this module); backups and recovery: backups.py, recovery.py extend it.

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
Passwords are never stored or returned: roles get SCRAM verifiers computed by the emulator (users.py; instances.py
for the root password).
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from .... import tiers
from ...core.errors import GcpError
from ...core.http import ApiModule, ApiRequest, route
from ...core.paging import page
from .common import (
    API_BASE,
    KIND_CATALOG,
    KIND_DELETED,
    KIND_INSTANCE,
    KIND_OPERATION,
    OPERATOR,
    _in_progress,
    _instance_missing,
    _not_authorized,
    _not_running,
    _now,
    _OpFailure,
    _pg_detail,
    _policy,
)
from .databases import Databases
from .instances import Instances
from .postgres import (
    INSTALL_HINT,
    SUPERUSER_ROLE,
    PostgresError,
    PostgresServer,
    create_login_role,
    find_binaries,
)
from .users import Users
from .versions import _MYSQL_INSTALLED, _is_mysql, _major, _upgradable

if TYPE_CHECKING:
    from ...core.world import World

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


class CoreSqlAdminApi(Instances, Databases, Users, ApiModule):
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
