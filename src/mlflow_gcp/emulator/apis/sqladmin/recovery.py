"""Cloud SQL Admin v1 recovery: instances.restoreBackup, instances.clone (of the current state or of a point in
time) and instances.getLatestRecoveryTime, on real PostgreSQL (walarchive.py), from the backup runs and transaction
logs backups.py keeps.

What GCP does and the emulator reproduces: see backups.py's docstring, which covers both modules.
"""

from __future__ import annotations

import copy
import re
import shutil
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ...core.errors import GcpError
from ...core.http import ApiRequest, route
from ...core.validation import validate_discovery
from .backups import _FAILURES, KIND_BACKUP, BackupRunsApi, _iso, _pitr
from .common import (
    API_BASE,
    KIND_INSTANCE,
    _invalid,
    _not_emulated,
    _not_running,
    _now,
    _OpFailure,
    _policy,
)
from .instances import _NAME, _ip_addresses, _server_ca_cert
from .postgres import PostgresError, PostgresServer
from .versions import _is_mysql
from .walarchive import (
    archive_dir,
    archive_through_now,
    backups_dir,
    copy_cluster,
    copy_running,
    recover,
    reset_archive,
    write_secret,
)

_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_time(value: str, field: str) -> datetime:
    """An RFC 3339 timestamp as the API takes them (``Z`` or an offset, up to nanoseconds)."""
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()).replace("z", "Z"))
    except ValueError:
        raise _invalid(f"Invalid value for {field}: {value}.") from None
    if parsed.tzinfo is None:
        raise _invalid(f"Invalid value for {field}: {value} (a time zone is required).")
    return parsed.astimezone(UTC)


def _backup_not_found(op_type: str) -> GcpError:
    # recorded: hashicorp/terraform-provider-google issue 14305 (a clone to a time before any usable backup)
    return GcpError(
        400,
        f"A successful backup that's required for carrying out the {op_type} operation can't be found, or a backup "
        "that was created before the restored timestamp can't be found. Modify the ID or timestamp for the backup.",
        "INVALID_ARGUMENT",
        reason="errorBackupNotFound",
    )


def _pitr_off() -> GcpError:
    return _invalid("Point-in-time recovery is not enabled for this instance.")


class SqlAdminApi(BackupRunsApi):
    """Cloud SQL Admin v1 as the emulator serves it: api.py's instances, databases, users and operations, backups.py's
    backup runs, and recovery from them."""

    def _own_operations(self) -> dict[str, Callable[[dict[str, Any], dict[str, Any]], None]]:
        return {**super()._own_operations(), "RESTORE_VOLUME": self._do_restore, "CLONE": self._do_clone}

    # --- restoreBackup ----------------------------------------------------------------------------------

    @route("POST", "/v1/projects/{project}/instances/{instance}/restoreBackup", name="instances.restoreBackup")
    def restore_backup(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "sqladmin", "v1", "InstancesRestoreBackupRequest")
        pid = self._project(req)["projectId"]
        name = req["instance"]
        for field in ("backup", "backupdrBackup", "restoreInstanceSettings", "restoreInstanceClearOverridesFieldNames"):
            if body.get(field):
                raise _not_emulated(f"restoreBackup with {field} (only restoreBackupContext is)")
        context = body.get("restoreBackupContext") or {}
        run_id = str(context.get("backupRunId") or "")
        if not run_id:
            raise _invalid("Missing parameter: restoreBackupContext.backupRunId.")
        if context.get("project", pid) != pid:
            raise _not_emulated("Restoring a backup of another project's instance")
        source = context.get("instanceId") or name
        with self._lock:
            target = self._instance(pid, name)
            if _is_mysql(target):
                raise _not_emulated("Restoring MySQL instances (no server runs for them)")
            if target["state"] != "RUNNABLE" or _policy(target) == "NEVER":
                raise _not_running()
            self._check_idle(pid, name)
            rec = self.world.store.get(KIND_BACKUP, f"{pid}/{source}/{run_id}")
            if rec is None or rec["public"]["status"] != "SUCCESSFUL":
                raise _backup_not_found("RESTORE_VOLUME")
            backup_version, version = rec["public"]["databaseVersion"], target["databaseVersion"]
            if backup_version != version:
                raise _invalid(
                    "Database type of target instance and backup differ. Instance database type: "
                    f"{version}, Backup database type: {backup_version}."
                )
            work = {"type": "RESTORE_VOLUME", "source": source, "run": run_id}
            return self._start_op(pid, name, "RESTORE_VOLUME", work)

    def _do_restore(self, target: dict[str, Any], work: dict[str, Any]) -> None:
        project = target["project"]
        source = self.world.store.get(KIND_INSTANCE, f"{project}/{work['source']}")
        if source is None or self.world.store.get(KIND_BACKUP, f"{project}/{work['source']}/{work['run']}") is None:
            raise _OpFailure("INTERNAL_ERROR", "The backup no longer exists.")
        backup = backups_dir(self._server_of(source)) / work["run"]
        server = self._server_of(target)
        server.stop()
        # The data as it was (and the password its cluster expects) stays aside until the restored cluster runs; a
        # restore resumed after a crash keeps the first aside.
        aside = server.pgdata.with_name("pgdata.before-restore")
        aside_password = server.instance_dir / "admin.password.before-restore"
        if server.pgdata.exists() and not aside.exists():
            write_secret(aside_password, server.admin_password())
            server.pgdata.rename(aside)
        try:
            copy_cluster(backup / "pgdata", server)
            server.set_admin_password((backup / "admin.password").read_text())
            if _pitr(target):
                reset_archive(server)
                self._log_starts(target)
            server.start(self._options(target))
        except _FAILURES as exc:
            server.stop()
            shutil.rmtree(server.pgdata, ignore_errors=True)
            if aside.exists():
                aside.rename(server.pgdata)
                server.set_admin_password(aside_password.read_text())
                server.start(self._options(target))
            raise _OpFailure("INTERNAL_ERROR", f"The restore failed: {exc}") from None
        shutil.rmtree(aside, ignore_errors=True)
        aside_password.unlink(missing_ok=True)
        if _pitr(target):
            self._automated_backup(project, target["name"])

    # --- clone ------------------------------------------------------------------------------------------

    @route("POST", "/v1/projects/{project}/instances/{instance}/clone", name="instances.clone")
    def clone_instance(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "sqladmin", "v1", "InstancesCloneRequest")
        pid = self._project(req)["projectId"]
        context = body.get("cloneContext") or {}
        dest = context.get("destinationInstanceName")
        if not dest:
            raise _invalid("Missing parameter: cloneContext.destinationInstanceName.")
        if not _NAME.match(dest):
            raise _invalid(f"instance name ({dest}).")
        if context.get("destinationProject", pid) != pid:
            raise _not_emulated("Cloning into another project")
        for field, why in (
            ("binLogCoordinates", "binary log coordinates are MySQL's"),
            ("databaseNames", "cloning some databases only is SQL Server's"),
        ):
            if context.get(field):
                raise _invalid(f"{field} cannot be used with a PostgreSQL instance: {why}.")
        for field in ("sourceInstanceDeletionTime", "destinationNetwork", "allocatedIpRange"):
            if context.get(field):
                raise _not_emulated(f"cloneContext.{field}")
        with self._lock:
            source = self._instance(pid, req["instance"])
            if _is_mysql(source):
                raise _not_emulated("Cloning MySQL instances (no server runs for them)")
            if source["state"] != "RUNNABLE":
                raise _not_running()
            self._check_name_free(pid, dest)
            work: dict[str, Any] = {"type": "CLONE", "source": source["name"]}
            if point := context.get("pointInTime"):
                target = _parse_time(point, "pointInTime")
                if not _pitr(source):
                    raise _pitr_off()
                if target.timestamp() > time.time():
                    raise _invalid(f"The point in time ({point}) is later than the latest recovery time.")
                usable = [r for r in self._usable_runs(pid, source["name"]) if r["ended"] <= target.timestamp()]
                if not usable:
                    raise _backup_not_found("CLONE")
                base = max(usable, key=lambda r: r["ended"])
                work.update(pointInTime=target.isoformat(), run=base["public"]["id"])
            self.world.store.put(KIND_INSTANCE, f"{pid}/{dest}", self._clone_record(source, dest, context))
            return self._start_op(pid, dest, "CLONE", work)

    def _clone_record(self, source: dict[str, Any], name: str, context: dict[str, Any]) -> dict[str, Any]:
        """The new instance: the source's settings ("an independent copy of the source instance with the same data
        and settings", gcloud sql instances clone), its own name, addresses, certificate and settings version."""
        project = source["project"]
        clone = copy.deepcopy(source)
        for field in ("databaseInstalledVersion", "maintenanceVersion"):
            clone.pop(field, None)
        clone.update(
            name=name,
            state="PENDING_CREATE",
            etag=uuid.uuid4().hex,
            selfLink=f"{API_BASE}/projects/{project}/instances/{name}",
            connectionName=f"{project}:{clone['region']}:{name}",
            createTime=_now(),
        )
        settings = clone["settings"]
        settings["settingsVersion"] = "1"
        location = settings.setdefault("locationPreference", {"kind": "sql#locationPreference"})
        if zone := context.get("preferredZone"):
            location["zone"] = zone
        if zone := context.get("preferredSecondaryZone"):
            location["secondaryZone"] = zone
        clone["gceZone"] = location.get("zone", clone.get("gceZone"))
        clone["ipAddresses"] = _ip_addresses(clone)
        clone["serverCaCert"] = _server_ca_cert(clone)
        return clone

    def _do_clone(self, dest: dict[str, Any], work: dict[str, Any]) -> None:
        project = dest["project"]
        source = self.world.store.get(KIND_INSTANCE, f"{project}/{work['source']}")
        if source is None:
            raise _OpFailure("INTERNAL_ERROR", "The source instance no longer exists.")
        origin, server = self._server_of(source), self._server_of(dest)
        try:
            server.prepare(self.world.data_dir.absolute())
            if _pitr(dest):
                self._log_starts(dest)
            options = self._options(dest)
            if "pointInTime" in work:
                self._recover_to(origin, server, source, work, options)
            else:
                if origin.running():
                    copy_running(origin, server.pgdata)
                else:
                    copy_cluster(origin.pgdata, server)
                server.set_admin_password(origin.admin_password())
                server.start(options)
            if _policy(dest) == "NEVER":
                server.stop()
            version = server.binaries().version.replace(".", "_")
        except _FAILURES as exc:
            try:
                server.stop()
            except PostgresError:
                traceback.print_exc()
            dest["state"] = "FAILED"
            self.world.store.put(KIND_INSTANCE, f"{project}/{dest['name']}", dest)
            raise _OpFailure("INTERNAL_ERROR", f"The clone failed: {exc}") from None
        dest.update(
            state="RUNNABLE",
            databaseInstalledVersion=f"POSTGRES_{version}",
            maintenanceVersion=f"POSTGRES_{version}.R20250101.00_00",
        )
        self.world.store.put(KIND_INSTANCE, f"{project}/{dest['name']}", dest)
        self._automated_backup(project, dest["name"])

    def _recover_to(
        self,
        origin: PostgresServer,
        server: PostgresServer,
        source: dict[str, Any],
        work: dict[str, Any],
        options: dict[str, str],
    ) -> None:
        """The newest base backup before the point in time, and the source's archived WAL replayed up to it."""
        if self.world.store.get(KIND_BACKUP, f"{source['project']}/{source['name']}/{work['run']}") is None:
            raise PostgresError("the backup the recovery starts from was deleted")
        backup = backups_dir(origin) / work["run"]
        if origin.running():
            archive_through_now(origin)  # every commit up to now is in the archive before recovery reads it
        server.set_admin_password((backup / "admin.password").read_text())
        recover(server, backup, archive_dir(origin), datetime.fromisoformat(work["pointInTime"]), options)

    # --- getLatestRecoveryTime ----------------------------------------------------------------------------

    @route(
        "GET",
        "/v1/projects/{project}/instances/{instance}/getLatestRecoveryTime",
        name="instances.getLatestRecoveryTime",
    )
    def get_latest_recovery_time(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        if req.args.get("sourceInstanceDeletionTime"):
            raise _not_emulated("Recovery times of a deleted instance (its logs are deleted with it)")
        instance = self._instance(pid, req["instance"])
        if not _pitr(instance):
            raise _pitr_off()
        out: dict[str, Any] = {"kind": "sql#getLatestRecoveryTime", "latestRecoveryTime": _iso(time.time())}
        if usable := self._usable_runs(pid, instance["name"]):
            out["earliestRecoveryTime"] = _iso(min(r["ended"] for r in usable))
        return out


__all__ = ["SqlAdminApi"]
