"""``mlflow-gcp restore``: the tracking and auth databases as they were at a time (point-in-time recovery) or in a
backup, restored into a NEW Cloud SQL instance that the service then switches to; the instance that served is kept
(``database.kept``) until ``mlflow-gcp cleanup``, so a restore to the wrong moment loses nothing.

Phases (operations.py runs them, resumably):

1. create: ``--to-time``: ``instances.clone`` of the serving instance at that time (Cloud SQL replays its
   write-ahead log to it); ``--backup``: an empty instance with the stack's settings.
2. restore-backup (``--backup`` only): ``instances.restoreBackup`` of that backup into the new instance.
3. passwords: the standby login role gets a random password nobody keeps (the restored data holds the passwords it
   had then; the active role gets the current secret in the next phase, as `up` sets it on any instance).
4. switch: the whole stack converged onto the new instance, as `up` would (its settings, databases and users made
   right, a new Cloud Run revision that logs in to it). The revision becomes ready only once its start opened both
   databases and found their schema known to its MLflow (the server image's entrypoint migrates under a lock and
   refuses an unknown revision), so Cloud Run keeps traffic on the current revision until then. Then an
   authenticated request must succeed, and the state records the new instance as the one that serves.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from .errors import ConfigError, MlflowGcpError
from .operations import Operation, Phase, kept_instances, now
from .resources import sql_backups


class Restore(Operation):
    kind = "restore"

    def __init__(self, ctx: Any, *, backup_id: str | None = None, to_time: str | None = None, **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        self.backup_id = backup_id
        self.to_time = to_time

    @property
    def command(self) -> str:
        return "mlflow-gcp restore (with the same --backup or --to-time)"

    # --- what it decides before changing anything -------------------------------------------------------------

    def begin(self) -> dict[str, Any]:
        from .resources.sql import Instance

        if bool(self.backup_id) == bool(self.to_time):
            raise ConfigError("Say what to restore: --backup ID or --to-time TIMESTAMP (one of them).")
        source = self.ctx.names.instance
        live = Instance(self.ctx).find()
        if live is None:
            raise MlflowGcpError(f"There is no Cloud SQL instance {source} to restore.", hint="Run `mlflow-gcp up`.")
        record: dict[str, Any] = {"source": source}
        if self.backup_id:
            owner, run = sql_backups.locate_backup(self.ctx, self.backup_id)
            record["backup_instance"] = owner
            if run.get("status") != "SUCCESSFUL":
                raise MlflowGcpError(f"Backup {self.backup_id} is {run.get('status')}, not SUCCESSFUL: it cannot be "
                                     "restored.", hint="List them: mlflow-gcp backups")  # fmt: skip
            record.update(backup=str(run["id"]), backup_time=run.get("endTime") or run.get("windowStartTime"))
        else:
            assert self.to_time is not None
            when = sql_backups.parse_time(self.to_time)
            if when > dt.datetime.now(dt.UTC):
                raise ConfigError(f"--to-time {self.to_time} is in the future.")
            backup = (live.get("settings") or {}).get("backupConfiguration") or {}
            if not backup.get("pointInTimeRecoveryEnabled"):
                raise ConfigError(
                    f"Point-in-time recovery is off on {source}: it can be restored only from a backup.",
                    hint="List them: mlflow-gcp backups; restore one with --backup ID. (`up` turns it on unless "
                    "database.point_in_time_recovery = false.)",
                )
            record["to_time"] = sql_backups.rfc3339(when)
        record["target"] = self.ctx.names.restored_instance(dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S"))
        return record

    # --- the phases ---------------------------------------------------------------------------------------------

    def phases(self, record: dict[str, Any]) -> list[Phase]:
        source, target = record["source"], record["target"]
        if record.get("to_time"):
            what = describe(record)
            first = [Phase("create", f"Clone Cloud SQL instance {source} {what} into a new instance {target}.",
                           lambda r: self._clone(r))]  # fmt: skip
        else:
            first = [
                Phase("create", f"Create a new Cloud SQL instance {target} with the stack's settings.",
                      lambda r: self._create(r)),
                Phase("restore-backup", f"Restore backup {record['backup']} of {record['backup_instance']} into "
                      f"{target}.",
                      lambda r: self._restore_backup(r)),
            ]  # fmt: skip
        return [
            *first,
            Phase("passwords", f"Give the standby database user of {target} a random password nobody keeps.",
                  lambda r: self._passwords(r)),
            Phase("switch", f"Converge the stack onto {target} (a new revision that logs in to it; traffic moves "
                  "once it started on the restored databases), check MLflow serves, record it as the live instance; "
                  f"{source} is kept.", lambda r: self._switch(r)),
        ]  # fmt: skip

    def _clone(self, record: dict[str, Any]) -> None:
        sql_backups.clone_at(self.ctx, record["source"], record["target"], record["to_time"])

    def _create(self, record: dict[str, Any]) -> None:
        sql_backups.create_for_restore(self.ctx, record["target"])

    def _restore_backup(self, record: dict[str, Any]) -> None:
        sql_backups.restore_into(self.ctx, record["target"], record["backup_instance"], record["backup"])

    def _passwords(self, record: dict[str, Any]) -> None:
        from .resources.sql import StandbyUser

        standby = StandbyUser(self.ctx.on_instance(record["target"]))
        if standby.find() is not None:
            standby.set_password(secrets.token_urlsafe(32))

    def _switch(self, record: dict[str, Any]) -> dict[str, Any]:
        switch_to(self.ctx, record["target"], self.say)
        self.ctx.state.set("database", database_after(self.ctx, record, f"restore {describe(record)}"))
        return {}


def describe(record: dict[str, Any]) -> str:
    if record.get("to_time"):
        return f"as it was at {record['to_time']}"
    return f"from backup {record['backup']} ({record.get('backup_time')})"


def switch_to(ctx: Any, instance: str, say: Any) -> None:
    """Converge the whole stack onto ``instance`` as `up` would, and require that MLflow serves from it."""
    from .engine import Engine
    from .health import require_serving
    from .resources.run import recorded_url
    from .stack import resources

    target = ctx.on_instance(instance)
    say(f"Converging the stack onto {instance}.")
    Engine(target).apply(resources(target))
    url = recorded_url(ctx.state)
    if url:
        require_serving(target, url, f"The service on {instance}")


def database_after(ctx: Any, record: dict[str, Any], why: str) -> dict[str, Any]:
    """The state's ``database`` once ``record['target']`` serves: it is live, the source is kept (once)."""
    kept = [k for k in kept_instances(ctx.state) if k["instance"] not in (record["source"], record["target"])]
    kept.append({"instance": record["source"], "since": now(), "why": why})
    return {"live": record["target"], "kept": kept}
