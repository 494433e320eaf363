"""Cloud SQL instances: insert, get, list (with its ``filter``), patch, update and delete, and the fields Cloud SQL
answers with an instance (IP addresses, server CA, Gemini settings). The operations they start run in api.py."""

from __future__ import annotations

import copy
import hashlib
import re
import time
import uuid
from typing import Any

from ...core.errors import GcpError
from ...core.http import ApiRequest, route
from ...core.paging import page
from ...core.validation import validate_discovery
from .common import (
    API_BASE,
    KIND_DELETED,
    KIND_INSTANCE,
    _invalid,
    _not_emulated,
    _not_running,
    _now,
)
from .postgres import PostgresError, check_socket_path, scram_verifier
from .settings import _RESTART_SETTINGS, validate_settings
from .versions import _MYSQL, _POSTGRES, _SUPPORTED_MAJORS, _is_mysql, _major, _upgradable, _version_key

NAME_REUSE_SECONDS = 7 * 24 * 3600
DEFAULT_REGION = "us-central1"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,97}$")  # lowercase letters, digits, hyphens; a letter first; <= 98
_REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")

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


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """PATCH semantics: objects merge field by field, everything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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


class Instances:
    """The instance routes of :class:`CoreSqlAdminApi` (api.py), whose lock, lookups and operations they use."""

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
        validate_settings(instance, given)
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
            validate_settings(new, given)
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
