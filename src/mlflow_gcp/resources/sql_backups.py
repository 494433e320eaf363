"""What the Cloud SQL instance offers day-two operations: backup runs (on demand, listed, one read by id), a clone
at a point in time, and a backup restored into another instance. Restores never overwrite the instance that serves:
they fill a new one (operations.py, restore.py), so a mistaken restore loses nothing.

Cloud SQL Admin v1 (the discovery API): ``backupRuns.insert`` answers a ``sql#operation`` of type BACKUP_VOLUME whose
``backupContext.backupId`` names the new run; ``instances.clone`` with ``cloneContext.pointInTime`` creates the
destination instance from the source's backups and write-ahead log (point-in-time recovery, which `up` enables);
``instances.restoreBackup`` overwrites the *target* instance's data with a backup of another instance of the same
database version (https://cloud.google.com/sql/docs/postgres/backup-recovery/restoring#projectid)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..engine import Resource
from ..errors import MlflowGcpError, NotFoundError
from ..retry import http_status
from .sql import Instance, wait_operation

if TYPE_CHECKING:
    from ..context import Context

#: Every backup run mlflow-gcp takes says so in its description (backup runs have no labels).
DESCRIPTION_PREFIX = "mlflow-gcp"
#: A backup takes minutes on GCP; a clone or a restore about as long as creating an instance.
BACKUP_TIMEOUT = 3600.0
RESTORE_TIMEOUT = 7200.0


def description(reason: str) -> str:
    return f"{DESCRIPTION_PREFIX}: {reason}"


def list_backups(ctx: Context, instance: str | None = None) -> list[dict[str, Any]]:
    """The instance's backup runs, newest first as Cloud SQL lists them (every page)."""
    sql = ctx.clients.sqladmin
    name = instance or ctx.names.instance
    runs: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"project": ctx.names.project, "instance": name, "maxResults": 500}
        if token:
            kwargs["pageToken"] = token
        page = ctx.api("sqladmin.backupRuns.list", sql.backupRuns().list(**kwargs).execute)
        runs += page.get("items") or []
        token = page.get("nextPageToken")
        if not token:
            return runs


def get_backup(ctx: Context, backup_id: str, instance: str | None = None) -> dict[str, Any]:
    """One backup run, or a NotFoundError naming how to list them."""
    from googleapiclient.errors import HttpError

    sql = ctx.clients.sqladmin
    name = instance or ctx.names.instance
    try:
        return ctx.api(
            "sqladmin.backupRuns.get",
            sql.backupRuns().get(project=ctx.names.project, instance=name, id=backup_id).execute,
        )
    except HttpError as exc:
        if http_status(exc) in (400, 404) or (http_status(exc) == 403 and not Instance(ctx.on_instance(name)).find()):
            raise NotFoundError(
                f"Cloud SQL instance {name} has no backup {backup_id}.", hint="List them: mlflow-gcp backups"
            ) from None
        raise


def locate_backup(ctx: Context, backup_id: str) -> tuple[str, dict[str, Any]]:
    """The instance a backup belongs to (the live one, or one a restore kept) and the backup run."""
    from ..operations import kept_instances

    instances = [ctx.names.instance, *(k["instance"] for k in reversed(kept_instances(ctx.state)))]
    for instance in instances:
        try:
            return instance, get_backup(ctx, backup_id, instance)
        except NotFoundError:
            continue
    raise NotFoundError(
        f"No backup {backup_id} of Cloud SQL instance {' or '.join(instances)}.", hint="List them: mlflow-gcp backups"
    )


def recovery_window(ctx: Context, instance: str) -> dict[str, Any]:
    """``instances.getLatestRecoveryTime``: ``earliestRecoveryTime`` and ``latestRecoveryTime`` (RFC 3339) of a clone at
    a point in time (a GET in the discovery document, under ``projects.instances``)."""
    sql = ctx.clients.sqladmin
    return ctx.api(
        "sqladmin.instances.getLatestRecoveryTime",
        sql.projects().instances().getLatestRecoveryTime(project=ctx.names.project, instance=instance).execute,
    )


def take_backup(ctx: Context, reason: str) -> dict[str, Any]:
    """An on-demand backup run, waited for; the finished run."""
    sql = ctx.clients.sqladmin
    n = ctx.names
    body = {"description": description(reason)}
    op = ctx.api(
        "sqladmin.backupRuns.insert", sql.backupRuns().insert(project=n.project, instance=n.instance, body=body).execute
    )
    op = wait_operation(ctx, op, f"Backing up Cloud SQL instance {n.instance}", timeout=BACKUP_TIMEOUT)
    backup_id = str((op.get("backupContext") or {}).get("backupId") or "")
    if not backup_id:
        raise MlflowGcpError(f"Cloud SQL's backup operation {op.get('name')} names no backup.")
    return get_backup(ctx, backup_id)


def find_backup(ctx: Context, reason: str) -> dict[str, Any] | None:
    """A successful backup run this tool took for ``reason`` (a run killed after starting one finds it again)."""
    wanted = description(reason)
    for run in list_backups(ctx):
        if run.get("description") == wanted and run.get("status") in ("SUCCESSFUL", "RUNNING", "ENQUEUED"):
            return run
    return None


def clone_at(ctx: Context, source: str, target: str, point_in_time: str) -> dict[str, Any]:
    """Create ``target`` as ``source`` was at ``point_in_time`` (RFC 3339, UTC); the new instance once usable.
    A clone already made (a run killed while it ran) is waited for, not made again."""
    from googleapiclient.errors import HttpError

    step = Instance(ctx.on_instance(target))
    existing = step.find()
    if existing is None:
        sql = ctx.clients.sqladmin
        body = {"cloneContext": {"destinationInstanceName": target, "pointInTime": point_in_time}}
        try:
            op = ctx.api(
                "sqladmin.instances.clone",
                sql.instances().clone(project=ctx.names.project, instance=source, body=body).execute,
            )
        except HttpError as exc:
            if http_status(exc) != 409 or step.find() is None:
                raise _refused(exc, f"Cloud SQL refused to clone {source} at {point_in_time}") from None
        else:
            wait_operation(ctx, op, f"Cloning {source} at {point_in_time} into {target}", timeout=RESTORE_TIMEOUT)
    live = step.settle(step.find())
    if live is None:
        raise MlflowGcpError(f"The clone {target} went away while it was being made.", hint="Run the command again.")
    return live


def create_for_restore(ctx: Context, target: str) -> dict[str, Any]:
    """An empty instance named ``target`` with the stack's settings, for a backup to be restored into."""
    step = Instance(ctx.on_instance(target))
    existing = step.find()
    return step.settle(existing) if existing is not None else step.create()


def restore_into(ctx: Context, target: str, source: str, backup_id: str) -> None:
    """Overwrite ``target``'s data with backup ``backup_id`` of ``source`` (safe to repeat: ``target`` does not serve
    yet)."""
    from googleapiclient.errors import HttpError

    sql = ctx.clients.sqladmin
    body = {"restoreBackupContext": {"backupRunId": backup_id, "instanceId": source, "project": ctx.names.project}}
    try:
        op = ctx.api(
            "sqladmin.instances.restoreBackup",
            sql.instances().restoreBackup(project=ctx.names.project, instance=target, body=body).execute,
        )
    except HttpError as exc:
        raise _refused(exc, f"Cloud SQL refused to restore backup {backup_id} of {source} into {target}") from None
    wait_operation(ctx, op, f"Restoring backup {backup_id} of {source} into {target}", timeout=RESTORE_TIMEOUT)


def delete_instance(ctx: Context, name: str) -> bool:
    """Delete a kept instance (deletion protection lifted first); False if it was gone already."""
    step = Instance(ctx.on_instance(name))
    live = step.find()
    live = step.settle(live) if live is not None else None  # one still being made (a clone a killed run started)
    if live is None:
        return False
    step.delete(live)
    return True


def _refused(exc: Exception, what: str) -> Exception:
    """A 4xx refusal as a clear error (the input was wrong: nothing was created); anything else as it came."""
    from ..retry import error_text

    status = http_status(exc)
    if status is not None and 400 <= status < 500 and status not in (403, 429):
        return MlflowGcpError(f"{what}: {error_text(exc)}")
    return exc


class KeptInstance(Resource):
    """An instance a restore or a rollback moved the service off (``database.kept`` in the state): it holds the data
    as it was, so only ``down --delete-data`` or ``mlflow-gcp cleanup`` deletes it."""

    kind = "Cloud SQL instance (kept)"
    holds_data = True
    # Removed before the live instance (`down` goes in reverse order): a clone an unfinished restore is making of it
    # must be finished (waited for) and deleted before its source goes.
    depends_on = ("sql:instance",)

    def __init__(self, ctx: Context, instance: str) -> None:
        super().__init__(ctx)
        self.instance = instance
        self.key = f"sql:kept:{instance}"  # type: ignore[misc]
        self._step = Instance(ctx.on_instance(instance))

    def id(self) -> str:
        return self._step.id()

    def find(self) -> Any | None:
        return self._step.find()

    def settle(self, actual: Any) -> Any | None:
        return self._step.settle(actual)  # one still being made (a restore killed mid-clone) is waited for

    def create(self) -> Any:
        raise MlflowGcpError(f"The kept instance {self.instance} is gone; nothing recreates it.")

    def delete(self, actual: Any) -> None:
        self._step.delete(actual)


def kept(ctx: Context) -> list[KeptInstance]:
    """The instances a restore or a rollback kept, and the one an unfinished restore or rollback is making (so that
    `down` finds it too)."""
    from ..operations import in_progress, kept_instances

    names = [k["instance"] for k in kept_instances(ctx.state)]
    making = (in_progress(ctx.state) or {}).get("target")
    if making and making not in names and making != ctx.names.instance:
        names.append(making)
    return [KeptInstance(ctx, name) for name in names]
