"""Databases of a Cloud SQL instance: insert, get, list, patch, update and delete, answered from the instance's real
PostgreSQL server (``pg_database``), or from the records kept for a MySQL instance. The operations they start run
in api.py."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ...core.errors import GcpError
from ...core.http import ApiRequest, route
from ...core.validation import validate_discovery
from .common import _invalid, _role_or_database_name
from .postgres import INTERNAL_DATABASES, PostgresServer


class Databases:
    """The database routes of :class:`CoreSqlAdminApi` (api.py), whose lock, lookups and operations they use."""

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
