"""Cloud SQL Admin v1 backups: backupRuns insert/list/get/delete, automated backups and each instance's transaction
log (this module), then instances.restoreBackup, instances.clone (of the current state or of a point in time) and
instances.getLatestRecoveryTime (recovery.py), done on each instance's real PostgreSQL server (walarchive.py: base
backups, WAL archiving, recovery to a target time).

What GCP does and the emulator reproduces:

- backupRuns.insert answers a PENDING ``BACKUP_VOLUME`` operation naming the run in ``backupContext.backupId``; the
  run is ENQUEUED, RUNNING, then SUCCESSFUL (FAILED, with its ``error``, when the backup fails). backupRuns.delete
  answers a ``DELETE_VOLUME`` operation. Runs are listed newest first ("in reverse chronological order of the
  enqueued time", discovery document), paged with maxResults/pageToken; instance ``-`` lists every instance's.
  A run's shape follows the documented example (https://cloud.google.com/sql/docs/mysql/backup-recovery/manage-standard-backups):
  kind, status, enqueuedTime, id, startTime, endTime, type, windowStartTime, instance, selfLink, location, plus
  description (on-demand runs), backupKind, databaseVersion and maxChargeableBytes.
- restoreBackup (``RESTORE_VOLUME``) overwrites the target's data, databases and users alike, with the backup's; the
  target keeps its settings and flags; it restarts. The backup must be of the target's database version: otherwise
  400 "Invalid request: Database type of target instance and backup differ. ..." (as GCP answered in
  GoogleCloudPlatform/magic-modules PR 14653). Restoring deletes the target's transaction logs
  (https://cloud.google.com/sql/docs/postgres/backup-recovery/restore).
- instances.clone (``CLONE``, whose target is the new instance: recorded, tests/golden/recordings/
  sql-instance-clone.log) creates an instance with the source's settings. With ``pointInTime`` it restores the
  newest base backup that ended before that time and replays the archived WAL up to it; a time that no usable
  backup precedes is refused with 400 ``errorBackupNotFound`` in GCP's words (hashicorp/terraform-provider-google
  issue 14305). Without it the clone is of the current state.
- Turning point-in-time recovery on restarts the instance (https://cloud.google.com/sql/docs/postgres/backup-recovery/
  configure-pitr) and starts the transaction log afresh ("If you deactivate and re-enable PITR, then any existing logs
  are deleted", .../backup-recovery/restore).
- Deleting an instance deletes its backups and logs: on-demand backups "persist until you delete them or until their
  instance is deleted" (.../backup-recovery/backups). A final backup kept after deletion is not emulated
  (instances.py answers 501 for it).

Choices where GCP's behaviour is unrecorded or out of an emulator's reach:

- Automated backups: Cloud SQL takes one a day, in the 4-hour window starting at ``backupConfiguration.startTime``.
  The emulator keeps no daily schedule (it seldom lives a day): it takes an AUTOMATED backup whenever automated
  backups are switched on (instances.insert or patch) and whenever the transaction log starts afresh (PITR switched
  on, a backup restored onto the instance, a clone made), inside that operation, so that recovery has a base as soon
  as the operation is DONE. ``windowStartTime`` is the start of the window the backup fell in. The newest
  ``retainedBackups`` automated runs are kept; on-demand runs stay until deleted.
- Transaction logs are kept for ``transactionLogRetentionDays``: when a backup ends, segments older than the newest
  backup that ended before the retention window are removed, and the earliest recovery time moves up to it.
- Errors nobody recorded: a missing run is 404 ``backupRunDoesNotExist`` "The backup run does not exist."; a point
  in time on an instance without PITR, or in the future, is 400 ``invalid``; restoreBackup of a missing run uses the
  errorBackupNotFound wording with its own operation type (the recorded text names the operation it served).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from ...core.errors import GcpError
from ...core.http import ApiRequest, route
from ...core.paging import page
from ...core.validation import validate_discovery
from .api import DELAY_KEYS, CoreSqlAdminApi
from .common import (
    API_BASE,
    KIND_INSTANCE,
    KIND_OPERATION,
    _invalid,
    _not_emulated,
    _not_running,
    _now,
    _OpFailure,
    _policy,
)
from .postgres import PostgresError
from .versions import _is_mysql
from .walarchive import (
    archive_dir,
    archive_options,
    backup_start_segment,
    backups_dir,
    base_backup,
    owned_dir,
    prune_archive,
    reset_archive,
)

KIND_BACKUP = "sqladmin.backupRun"
#: Per instance with point-in-time recovery: since when its transaction log is unbroken ({"since": epoch seconds}).
KIND_LOG = "sqladmin.transactionLog"
_FAILURES = (PostgresError, psycopg.Error, OSError, subprocess.SubprocessError)
_MULTI_REGIONS = {"us": "us", "northamerica": "us", "southamerica": "us", "europe": "eu", "asia": "asia"}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _backup_config(instance: dict[str, Any]) -> dict[str, Any]:
    return dict(instance.get("settings", {}).get("backupConfiguration", {}))


def _pitr(instance: dict[str, Any]) -> bool:
    return bool(_backup_config(instance).get("pointInTimeRecoveryEnabled")) and not _is_mysql(instance)


def _backups_on(instance: dict[str, Any]) -> bool:
    return bool(_backup_config(instance).get("enabled")) and not _is_mysql(instance)


def _run_missing() -> GcpError:
    return GcpError(404, "The backup run does not exist.", "NOT_FOUND", reason="backupRunDoesNotExist")


def _window_start(instance: dict[str, Any], ts: float) -> float:
    """The start of the daily backup window (``backupConfiguration.startTime``, UTC) the time ``ts`` falls in."""
    hours, _, minutes = str(_backup_config(instance).get("startTime") or "00:00").partition(":")
    when = datetime.fromtimestamp(ts, UTC)
    start = when.replace(hour=int(hours or 0) % 24, minute=int(minutes or 0) % 60, second=0, microsecond=0)
    if start > when:
        start -= timedelta(days=1)
    return start.timestamp()


def _location(instance: dict[str, Any]) -> str:
    """Where backups are kept: ``backupConfiguration.location``, else the multi-region nearest the instance."""
    if location := _backup_config(instance).get("location"):
        return str(location)
    region = instance.get("region", "")
    return _MULTI_REGIONS.get(region.split("-")[0], region)


class BackupRunsApi(CoreSqlAdminApi):
    """CoreSqlAdminApi (api.py) plus backup runs, automated backups and the transaction log of each instance."""

    delay_keys = {
        **DELAY_KEYS,
        "BACKUP_VOLUME": "sqladmin.backup",
        "DELETE_VOLUME": "sqladmin.backup",
        "RESTORE_VOLUME": "sqladmin.restore",
        "CLONE": "sqladmin.clone",
    }

    # --- hooks into the instance lifecycle (api.py) ----------------------------------------------------

    def _options(self, instance: dict[str, Any]) -> dict[str, str]:
        options = super()._options(instance)
        if _pitr(instance):
            options.update(archive_options(owned_dir(archive_dir(self._server_of(instance)))))
        return options

    def _execute(self, project: str, instance_name: str, work: dict[str, Any]) -> None:
        op_type = work["type"]
        key = f"{project}/{instance_name}"
        before = self.world.store.get(KIND_INSTANCE, key)
        own = self._own_operations().get(op_type)
        if own is not None:
            if before is None:
                raise _OpFailure("INTERNAL_ERROR", "The instance no longer exists.")
            own(before, work)
            return
        if before is None or _is_mysql(before) or op_type not in ("CREATE", "UPDATE", "DELETE"):
            super()._execute(project, instance_name, work)
            return
        if op_type == "DELETE":
            super()._execute(project, instance_name, work)  # removes the instance directory: backups, archive
            with self._lock:
                for name in self.world.store.names(KIND_BACKUP, prefix=f"{key}/"):
                    self.world.store.delete(KIND_BACKUP, name)
                self.world.store.delete(KIND_LOG, key)
            return
        if op_type == "CREATE":
            if _pitr(before):
                self._log_starts(before)
            super()._execute(project, instance_name, work)
            self._automated_backup(project, instance_name)
            return
        after = work["instance"]
        pitr_on, pitr_off = _pitr(after) and not _pitr(before), _pitr(before) and not _pitr(after)
        if pitr_on or pitr_off:
            work = {**work, "restart": True}  # archive_mode takes a restart, as enabling PITR does on Cloud SQL
        if pitr_on:
            reset_archive(self._server_of(before))
            self._log_starts(before)
        super()._execute(project, instance_name, work)
        if pitr_off:
            shutil.rmtree(archive_dir(self._server_of(before)), ignore_errors=True)
            self.world.store.delete(KIND_LOG, key)
        if _backups_on(after) and (not _backups_on(before) or pitr_on):
            self._automated_backup(project, instance_name)

    def _own_operations(self) -> dict[str, Callable[[dict[str, Any], dict[str, Any]], None]]:
        """The operation types this module runs: operationType -> handler(instance, work)."""
        return {"BACKUP_VOLUME": self._do_backup, "DELETE_VOLUME": self._do_delete_run}

    def restore(self) -> None:
        super().restore()
        # A run left ENQUEUED or RUNNING by a killed emulator, whose operation will not resume, failed.
        ops = self.world.store.list(KIND_OPERATION)
        pending = {rec["public"]["name"] for rec in ops if rec["public"]["status"] != "DONE"}
        with self._lock:
            for name in self.world.store.names(KIND_BACKUP):
                rec = self.world.store.get(KIND_BACKUP, name)
                if rec and rec["public"]["status"] in ("ENQUEUED", "RUNNING") and rec.get("operation") not in pending:
                    message = "The backup was interrupted."
                    error = {"kind": "sql#operationError", "code": "INTERNAL_ERROR", "message": message}
                    rec["public"].update(status="FAILED", error=error)
                    self.world.store.put(KIND_BACKUP, name, rec)

    def _log_starts(self, instance: dict[str, Any]) -> None:
        self.world.store.put(KIND_LOG, f"{instance['project']}/{instance['name']}", {"since": time.time()})

    # --- backup runs ------------------------------------------------------------------------------------

    def _runs(self, project: str, instance: str) -> list[dict[str, Any]]:
        """The instance's runs, newest first."""
        runs = self.world.store.list(KIND_BACKUP, prefix=f"{project}/{instance}/")
        return sorted(runs, key=lambda r: int(r["public"]["id"]), reverse=True)

    def _new_run(self, instance: dict[str, Any], run_type: str, description: str | None = None) -> str:
        """Record an ENQUEUED run; the caller holds the lock. Ids are the enqueue time in milliseconds, as Cloud
        SQL's look, unique per instance."""
        project, name = instance["project"], instance["name"]
        now = time.time()
        run_id = int(now * 1000)
        while self.world.store.get(KIND_BACKUP, f"{project}/{name}/{run_id}") is not None:
            run_id += 1
        public: dict[str, Any] = {
            "kind": "sql#backupRun",
            "status": "ENQUEUED",
            "enqueuedTime": _iso(now),
            "id": str(run_id),
            "type": run_type,
            "windowStartTime": _iso(_window_start(instance, now) if run_type == "AUTOMATED" else now),
            "instance": name,
            "selfLink": f"{API_BASE}/projects/{project}/instances/{name}/backupRuns/{run_id}",
            "location": _location(instance),
            "backupKind": "SNAPSHOT",
            "databaseVersion": instance["databaseVersion"],
        }
        if description:
            public["description"] = description
        self.world.store.put(KIND_BACKUP, f"{project}/{name}/{run_id}", {"public": public, "operation": None})
        return str(run_id)

    def _update_run(self, key: str, public: dict[str, Any], **private: Any) -> None:
        with self._lock:
            rec = self.world.store.get(KIND_BACKUP, key)
            if rec is None:
                return
            rec["public"].update(public)
            rec.update(private)
            self.world.store.put(KIND_BACKUP, key, rec)

    def _take_backup(self, instance: dict[str, Any], run_id: str) -> None:
        """Run the base backup of an ENQUEUED run; raises _OpFailure (the run FAILED) when it fails."""
        key = f"{instance['project']}/{instance['name']}/{run_id}"
        started = time.time()
        self._update_run(key, {"status": "RUNNING", "startTime": _iso(started)}, started=started)
        server = self._server_of(instance)
        try:
            if not server.running():
                raise PostgresError("the instance is not running")
            dest = owned_dir(backups_dir(server)) / run_id
            size = base_backup(server, dest)
        except _FAILURES as exc:
            error = {"kind": "sql#operationError", "code": "INTERNAL_ERROR", "message": f"The backup failed: {exc}"}
            self._update_run(key, {"status": "FAILED", "endTime": _now(), "error": error})
            raise _OpFailure("INTERNAL_ERROR", f"The backup failed: {exc}") from None
        ended = time.time()
        public = {"status": "SUCCESSFUL", "endTime": _iso(ended), "maxChargeableBytes": str(size)}
        self._update_run(key, public, ended=ended, startSegment=backup_start_segment(dest))
        self._apply_retention(instance)

    def _automated_backup(self, project: str, name: str) -> None:
        """An AUTOMATED backup now, if the instance has automated backups and runs (see the module docstring). A
        failure is the run's (listed FAILED), not the operation's that asked for it."""
        instance = self.world.store.get(KIND_INSTANCE, f"{project}/{name}")
        if instance is None or not _backups_on(instance) or instance["state"] != "RUNNABLE":
            return
        if _policy(instance) == "NEVER" or not self._server_of(instance).running():
            return
        with self._lock:
            run_id = self._new_run(instance, "AUTOMATED")
        try:
            self._take_backup(instance, run_id)
        except _OpFailure:
            traceback.print_exc()

    def _apply_retention(self, instance: dict[str, Any]) -> None:
        """Keep the newest ``retainedBackups`` automated runs, and transaction logs for the retention days."""
        project, name = instance["project"], instance["name"]
        config = _backup_config(instance)
        server = self._server_of(instance)
        retained = int(config.get("backupRetentionSettings", {}).get("retainedBackups", 7))
        automated = [r for r in self._runs(project, name) if r["public"]["type"] == "AUTOMATED"]
        for rec in [r for r in automated if r["public"]["status"] == "SUCCESSFUL"][retained:]:
            shutil.rmtree(backups_dir(server) / rec["public"]["id"], ignore_errors=True)
            self.world.store.delete(KIND_BACKUP, f"{project}/{name}/{rec['public']['id']}")
        log = self.world.store.get(KIND_LOG, f"{project}/{name}")
        if log is None:
            return
        cutoff = time.time() - int(config.get("transactionLogRetentionDays", 7)) * 86400
        older = [r for r in self._usable_runs(project, name) if r["ended"] <= cutoff and r.get("startSegment")]
        if older:
            anchor = max(older, key=lambda r: r["ended"])
            prune_archive(archive_dir(server), anchor["startSegment"])
            self.world.store.put(KIND_LOG, f"{project}/{name}", {"since": anchor["started"]})

    def _usable_runs(self, project: str, name: str) -> list[dict[str, Any]]:
        """Runs point-in-time recovery can start from: successful, taken while the transaction log was unbroken."""
        log = self.world.store.get(KIND_LOG, f"{project}/{name}")
        if log is None:
            return []
        return [
            r
            for r in self._runs(project, name)
            if r["public"]["status"] == "SUCCESSFUL" and r.get("started", 0) >= log["since"] and r.get("ended")
        ]

    def _run_record(self, project: str, instance: str, run_id: str) -> dict[str, Any]:
        if not run_id.isdigit():
            raise _invalid(f"Invalid value at 'id' (TYPE_INT64), \"{run_id}\".")
        rec = self.world.store.get(KIND_BACKUP, f"{project}/{instance}/{run_id}")
        if rec is None:
            raise _run_missing()
        return rec

    @route("POST", "/v1/projects/{project}/instances/{instance}/backupRuns", name="backupRuns.insert")
    def insert_backup_run(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "sqladmin", "v1", "BackupRun")
        pid = self._project(req)["projectId"]
        name = req["instance"]
        with self._lock:
            instance = self._instance(pid, name)
            if _is_mysql(instance):
                raise _not_emulated("Backups of MySQL instances (no server runs for them)")
            if instance["state"] != "RUNNABLE" or _policy(instance) == "NEVER":
                raise _not_running()
            self._check_idle(pid, name)
            # "type" is ignored on insert: every run asked for is ON_DEMAND (discovery document, BackupRun.type).
            run_id = self._new_run(instance, "ON_DEMAND", body.get("description"))
            context = {"backupContext": {"kind": "sql#backupContext", "backupId": run_id}}
            op = self._start_op(pid, name, "BACKUP_VOLUME", {"type": "BACKUP_VOLUME", "run": run_id}, extra=context)
            self._update_run(f"{pid}/{name}/{run_id}", {}, operation=op["name"])
            return op

    def _do_backup(self, instance: dict[str, Any], work: dict[str, Any]) -> None:
        self._take_backup(instance, work["run"])

    @route("GET", "/v1/projects/{project}/instances/{instance}/backupRuns", name="backupRuns.list")
    def list_backup_runs(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        name = req["instance"]
        if name == "-":  # every instance of the project (discovery document, backupRuns.list)
            runs = [r["public"] for r in self.world.store.list(KIND_BACKUP, prefix=f"{pid}/")]
            runs.sort(key=lambda run: run["enqueuedTime"], reverse=True)
        else:
            self._instance(pid, name)
            runs = [r["public"] for r in self._runs(pid, name)]
        chunk, token = page(runs, req.args, default=500, maximum=500, size_arg="maxResults")
        out: dict[str, Any] = {"kind": "sql#backupRunsList"}
        if chunk:
            out["items"] = chunk
        if token:
            out["nextPageToken"] = token
        return out

    @route("GET", "/v1/projects/{project}/instances/{instance}/backupRuns/{id}", name="backupRuns.get")
    def get_backup_run(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        self._instance(pid, req["instance"])
        return self._run_record(pid, req["instance"], req["id"])["public"]

    @route("DELETE", "/v1/projects/{project}/instances/{instance}/backupRuns/{id}", name="backupRuns.delete")
    def delete_backup_run(self, req: ApiRequest) -> dict[str, Any]:
        pid = self._project(req)["projectId"]
        name = req["instance"]
        with self._lock:
            self._instance(pid, name)
            rec = self._run_record(pid, name, req["id"])
            if rec["public"]["status"] in ("ENQUEUED", "RUNNING"):
                raise _invalid("The backup run is still in progress.")
            self._check_idle(pid, name)
            self._update_run(f"{pid}/{name}/{req['id']}", {"status": "DELETION_PENDING"})
            return self._start_op(pid, name, "DELETE_VOLUME", {"type": "DELETE_VOLUME", "run": req["id"]})

    def _do_delete_run(self, instance: dict[str, Any], work: dict[str, Any]) -> None:
        shutil.rmtree(backups_dir(self._server_of(instance)) / work["run"], ignore_errors=True)
        with self._lock:
            self.world.store.delete(KIND_BACKUP, f"{instance['project']}/{instance['name']}/{work['run']}")


__all__ = ["KIND_BACKUP", "KIND_LOG", "BackupRunsApi"]
