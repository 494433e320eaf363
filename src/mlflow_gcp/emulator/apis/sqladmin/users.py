"""Users of a Cloud SQL instance: insert, get, list, update and delete, answered from the instance's real PostgreSQL
server (``pg_roles``), or from the records kept for a MySQL instance. Passwords are never stored or returned: a
role gets the SCRAM verifier computed here. The operations they start run in api.py."""

from __future__ import annotations

import copy
import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from ...core.errors import GcpError
from ...core.http import ApiRequest, route
from ...core.validation import validate_discovery
from .common import _invalid, _not_emulated, _pg_detail, _role_or_database_name
from .postgres import INTERNAL_ROLES, PostgresServer, scram_verifier
from .versions import _is_mysql


class Users:
    """The user routes of :class:`CoreSqlAdminApi` (api.py), whose lock, lookups and operations they use."""

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
