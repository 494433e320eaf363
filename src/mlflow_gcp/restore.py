"""``mlflow-gcp restore``: the tracking and auth databases as they were at a time (point-in-time recovery) or in a
backup, restored into a NEW Cloud SQL instance that the service then switches to; the instance that served is kept
(``database.kept``) until ``mlflow-gcp cleanup``, so a restore to the wrong moment loses nothing.

Phases (operations.py runs them, resumably):

1. create: ``--to-time``: ``instances.clone`` at that time of the instance that served then (the live one, or one an
   earlier restore kept, whose log holds that time); ``--backup``: an empty instance with the stack's settings.
2. restore-backup (``--backup`` only): ``instances.restoreBackup`` of that backup into the new instance.
3. passwords: the standby login role gets a random password nobody keeps (the restored data holds the passwords it
   had then; the active role gets the current secret in the next phase, as `up` sets it on any instance).
4. switch: the whole stack converged onto the new instance, as `up` would (its settings, databases and users made
   right, a new Cloud Run revision that logs in to it). The revision becomes ready only once its start opened both
   databases and found their schema known to its MLflow (the server image's entrypoint migrates under a lock and
   refuses an unknown revision), so Cloud Run keeps traffic on the current revision until then. Then an
   authenticated request must succeed, and the state records the new instance as the one that serves.

``restore --abandon`` gives up a restore that cannot finish (the new revision refuses the restored data, say): the new
instance is deleted unless it serves, and the stack converged back onto the instance the state names.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, MlflowGcpError
from .operations import Operation, Phase, kept_instances, live_instance, now
from .resources import sql_backups

if TYPE_CHECKING:
    from .context import Context
    from .engine import Reporter


class Restore(Operation):
    kind = "restore"

    def __init__(
        self, ctx: Context, *, backup_id: str | None = None, to_time: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(ctx, **kwargs)
        self.backup_id = backup_id
        self.to_time = to_time

    @property
    def command(self) -> str:
        return f"mlflow-gcp {self.kind}"

    def arguments(self) -> dict[str, Any]:
        return {"backup": self.backup_id, "to_time": rfc3339(parse_time(self.to_time)) if self.to_time else None}

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
            if run.get("status") != "SUCCESSFUL":
                raise MlflowGcpError(f"Backup {self.backup_id} is {run.get('status')}, not SUCCESSFUL: it cannot be "
                                     "restored.", hint="List them: mlflow-gcp backups")  # fmt: skip
            record.update(backup=str(run["id"]), backup_instance=owner,
                          backup_time=run.get("endTime") or run.get("windowStartTime"))  # fmt: skip
        else:
            assert self.to_time is not None
            when = parse_time(self.to_time)
            if when > dt.datetime.now(dt.UTC):
                raise ConfigError(f"--to-time {self.to_time} is in the future.")
            record.update(to_time=rfc3339(when), clone_from=self._recoverable_from(when))
        record["target"] = self.ctx.names.restored_instance(dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S"))
        return record

    def _recoverable_from(self, when: dt.datetime) -> str:
        """The instance that served at ``when`` (its log holds that time), once Cloud SQL confirms it can recover it:
        ``getLatestRecoveryTime`` gives the window (from the oldest backup the log continues from, to now)."""
        from .resources.sql import Instance

        instance = serving_at(self.ctx, when)
        found = Instance(self.ctx.on_instance(instance)).find()
        if found is None:
            raise MlflowGcpError(f"Cloud SQL instance {instance}, which served at {rfc3339(when)}, is gone.",
                                 hint="List the backups left: mlflow-gcp backups")  # fmt: skip
        if not ((found.get("settings") or {}).get("backupConfiguration") or {}).get("pointInTimeRecoveryEnabled"):
            raise ConfigError(
                f"Point-in-time recovery is off on {instance}: it can be restored only from a backup.",
                hint="List them: mlflow-gcp backups; restore one with --backup ID. (`up` turns it on unless "
                "database.point_in_time_recovery = false.)",
            )
        window = sql_backups.recovery_window(self.ctx, instance)
        earliest, latest = window.get("earliestRecoveryTime"), window.get("latestRecoveryTime")
        if earliest is None or when < parse_time(earliest) or (latest and when > parse_time(latest)):
            span = f"from {earliest} to {latest}" if earliest else f"none yet (no backup of {instance} to start from)"
            raise ConfigError(
                f"--to-time {rfc3339(when)} is outside what {instance} can be recovered to: {span}.",
                hint="Choose a time in that window, or restore a backup: mlflow-gcp backups",
            )
        return instance

    # --- the phases ---------------------------------------------------------------------------------------------

    def phases(self, record: dict[str, Any]) -> list[Phase]:
        source, target = record["source"], record["target"]
        if record.get("to_time"):
            origin = record.get("clone_from", source)
            first = [Phase("create", f"Clone Cloud SQL instance {origin} {describe(record)} into a new instance "
                           f"{target}.", self._clone)]  # fmt: skip
        else:
            first = [
                Phase("create", f"Create a new Cloud SQL instance {target} with the stack's settings.", self._create),
                Phase("restore-backup", f"Restore backup {record['backup']} of {record['backup_instance']} into "
                      f"{target}.", self._restore_backup),
            ]  # fmt: skip
        return [
            *first,
            Phase("passwords", f"Give the standby database user of {target} a random password nobody keeps.",
                  self._passwords),
            Phase("switch", f"Converge the stack onto {target} (a new revision that logs in to it; traffic moves "
                  "once it started on the restored databases), check MLflow serves, record it as the live instance; "
                  f"{source} is kept.", self._switch),
        ]  # fmt: skip

    def _clone(self, record: dict[str, Any]) -> None:
        sql_backups.clone_at(self.ctx, record.get("clone_from", record["source"]), record["target"], record["to_time"])

    def _create(self, record: dict[str, Any]) -> None:
        sql_backups.create_for_restore(self.ctx, record["target"])

    def _restore_backup(self, record: dict[str, Any]) -> None:
        sql_backups.restore_into(self.ctx, record["target"], record["backup_instance"], record["backup"])

    def _passwords(self, record: dict[str, Any]) -> None:
        from .resources.sql import StandbyUser

        standby = StandbyUser(self.ctx.on_instance(record["target"]))
        if standby.find() is not None:
            standby.set_password(secrets.token_urlsafe(32))

    def _switch(self, record: dict[str, Any]) -> None:
        switch_to(self.ctx, record["target"], self.say, self.reporter)
        self.ctx.state.set("database", database_after(self.ctx, record, f"restore {describe(record)}"))

    # --- giving up ----------------------------------------------------------------------------------------------

    def abandon(self, record: dict[str, Any]) -> None:
        target = record["target"]
        if live_instance(self.ctx.state) == target:
            raise MlflowGcpError(f"{target} serves already: the {self.kind} finished its switch.",
                                 hint=f"Run {self.command} to finish it.")  # fmt: skip
        if record.get("phase") == "switch":  # the service may name the new instance in a revision that failed
            self.say(f"Converging the stack back onto {self.ctx.names.instance}.")
            switch_to(self.ctx, self.ctx.names.instance, self.say, self.reporter)
        if sql_backups.delete_instance(self.ctx, target):
            self.say(f"Deleted Cloud SQL instance {target}, which the {self.kind} had made.")


def serving_at(ctx: Context, when: dt.datetime) -> str:
    """The instance that served at ``when``: each kept instance served until it was moved off (its ``since``)."""
    for kept in kept_instances(ctx.state):  # oldest first: each one served until the next took over
        if when < parse_time(kept["since"]):
            return str(kept["instance"])
    return ctx.names.instance


def describe(record: dict[str, Any]) -> str:
    if record.get("to_time"):
        return f"as it was at {record['to_time']}"
    return f"from backup {record['backup']} ({record.get('backup_time')})"


def switch_to(ctx: Context, instance: str, say: Callable[[str], None], reporter: Reporter | None = None) -> None:
    """Converge the whole stack onto ``instance`` as `up` would, and require that MLflow serves from it."""
    from .engine import Engine
    from .health import require_serving
    from .resources.run import recorded_url
    from .stack import resources

    target = ctx.on_instance(instance)
    say(f"Converging the stack onto {instance}.")
    Engine(target, reporter).apply(resources(target))
    url = recorded_url(ctx.state)
    if url:
        require_serving(target, url, f"The service on {instance}")


def database_after(ctx: Context, record: dict[str, Any], why: str) -> dict[str, Any]:
    """The state's ``database`` once ``record['target']`` serves: it is live, the source is kept (once)."""
    kept = [k for k in kept_instances(ctx.state) if k["instance"] not in (record["source"], record["target"])]
    kept.append({"instance": record["source"], "since": now(), "why": why})
    return {"live": record["target"], "kept": kept}


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 / ISO 8601 time with its offset (``2026-11-30T10:15:00Z``), as UTC."""
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ConfigError(
            f"--to-time {text!r} is not a time.", hint="Give it as RFC 3339 with its offset: 2026-11-30T10:15:00Z"
        ) from None
    if when.tzinfo is None:
        raise ConfigError(f"--to-time {text!r} has no time zone.", hint="Add one, e.g. Z for UTC: 2026-11-30T10:15:00Z")
    return when.astimezone(dt.UTC)


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
