"""``mlflow-gcp upgrade``: move the server to another MLflow release with a backup first and the migrations run once,
and ``upgrade --rollback``: back to the release and the data from before the last upgrade.

Which release serves is the state's to say (``mlflow.version``, recorded by `up` and by these operations): a new
mlflow-gcp whose default release is newer does not move a running server, and `up` refuses a configured
``server.mlflow_version`` other than the one serving (an MLflow upgrade migrates the schema: it is this command's
job, with its backup, not a side effect of `up`).

Upgrade phases (operations.py runs them, resumably):

1. backup: an on-demand Cloud SQL backup, described as taken before this upgrade (a killed run finds it again).
2. deploy: the stack converged with the new release, as `up` would: the image built with its pin, a new Cloud Run
   revision. Where the migrations run: in the new revision's start, under the advisory lock the server image already
   takes (mlflow_gcp_serve.py: the first instance to start migrates, the others wait on the lock and find the schema
   current), rather than in a Cloud Run job. A job would be one more resource, image and IAM binding to keep right,
   and would migrate while the old revision serves just the same; the start under the lock runs exactly once however
   many instances start, and a failed migration fails the revision, so Cloud Run keeps traffic on the old one. The
   old revision serves until the new one is ready (its startup probe passes only after the migration); then traffic
   moves, and an authenticated request must succeed.

   What a steady client sees: the old revision's MLflow keeps running on a schema migrated under it (MLflow checks
   the schema only when a server starts); MLflow's migrations add tables, columns and indexes, so its queries keep
   working. tests/e2e/test_upgrade.py counts failed requests across the switch.

The rollback is a restore (restore.py) of the pre-upgrade backup into a new instance, switched to with the previous
release's image; the instance that served is kept, with everything written since the upgrade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError, MlflowGcpError
from .operations import Operation, Phase
from .resources import sql_backups
from .restore import Restore, database_after, switch_to

if TYPE_CHECKING:
    from .config import Config
    from .context import Context
    from .state import State

STATE_KEY = "mlflow"


def deployed_version(state: State) -> str | None:
    return (state.data.get(STATE_KEY) or {}).get("version")


def configured_version(config: Config) -> str | None:
    """``server.mlflow_version`` when the configuration sets it (file, environment or flag), else None."""
    return config.server.mlflow_version if "mlflow_version" in config.server.model_fields_set else None


def serving_version(config: Config, state: State) -> str:
    """The release this run deploys: the one serving, else the configured one, else this mlflow-gcp's default."""
    return deployed_version(state) or config.server.mlflow_version


def refuse_version_change(ctx: Context) -> None:
    """`up` never changes the MLflow release of a running server."""
    deployed, wanted = deployed_version(ctx.state), configured_version(ctx.config)
    if deployed and wanted and wanted != deployed:
        raise ConfigError(
            f"server.mlflow_version is {wanted}, but MLflow {deployed} serves: `up` does not upgrade MLflow.",
            hint=f"mlflow-gcp upgrade --to {wanted} (a backup first, the migrations once; --dry-run shows the plan).",
        )


def record_deployed(ctx: Context) -> None:
    """After a successful `up`: the release it deployed is the one serving (not known of a prebuilt image)."""
    if ctx.config.server.image:
        return
    if deployed_version(ctx.state) != ctx.mlflow_version:
        ctx.state.set(STATE_KEY, {**(ctx.state.data.get(STATE_KEY) or {}), "version": ctx.mlflow_version})


class Upgrade(Operation):
    kind = "upgrade"

    def __init__(self, ctx: Context, to_version: str | None = None, **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        self.to_version = to_version

    @property
    def command(self) -> str:
        return "mlflow-gcp upgrade"

    def arguments(self) -> dict[str, Any]:
        return {"to": self.to_version}

    def begin(self) -> dict[str, Any]:
        from packaging.version import Version

        from .resources.run import recorded_url

        if self.ctx.config.server.image:
            raise ConfigError("server.image names a prebuilt image: its MLflow release is not mlflow-gcp's to change.",
                              hint="Build and deploy the new image yourself, or drop server.image.")  # fmt: skip
        if not recorded_url(self.ctx.state):
            raise MlflowGcpError("Nothing is deployed to upgrade.", hint="Run `mlflow-gcp up` first.")
        old, new = self.ctx.mlflow_version, self.target()
        if Version(new) < Version(old):
            raise ConfigError(
                f"MLflow {new} is older than the {old} that serves: MLflow's schema migrations go one way.",
                hint="`mlflow-gcp upgrade --rollback` returns to the release and data from before the last upgrade.",
            )
        return {"from": old, "to": new, "instance": self.ctx.names.instance,
                "image": (self.ctx.state.get("image") or {}).get("uri")}  # fmt: skip

    def target(self) -> str:
        """The release to move to: --to, else the configured one, else this mlflow-gcp's default."""
        from .image_source import mlflow_version_problem, pinned_mlflow_version

        wanted = configured_version(self.ctx.config)
        if self.to_version and wanted and self.to_version != wanted:
            raise ConfigError(f"--to {self.to_version}, but server.mlflow_version says {wanted}.",
                              hint=f"Set server.mlflow_version = \"{self.to_version}\", or drop --to.")  # fmt: skip
        new = self.to_version or wanted or pinned_mlflow_version()
        problem = mlflow_version_problem(new)
        if problem:
            raise ConfigError(f"--to: {problem}.")
        return new

    def phases(self, record: dict[str, Any]) -> list[Phase]:
        from .schemas import migrations

        changes = "; ".join(m.describe() for m in migrations(record["from"], record["to"]))
        return [
            Phase("backup", f"Take an on-demand backup of Cloud SQL instance {record['instance']} (restorable with "
                  "`upgrade --rollback`).", self._backup),
            Phase("deploy", f"Build the server image with MLflow {record['to']} and deploy it: the new revision's "
                  f"start migrates under the advisory lock ({changes}); traffic stays on MLflow {record['from']} "
                  "until it is ready; then check MLflow serves.", self._deploy),
        ]  # fmt: skip

    def _reason(self, record: dict[str, Any]) -> str:
        return f"before the upgrade from MLflow {record['from']} to {record['to']} ({record['started']})"

    def _backup(self, record: dict[str, Any]) -> dict[str, Any]:
        from .retry import wait_until

        reason = self._reason(record)
        taken = sql_backups.find_backup(self.ctx, reason) or sql_backups.take_backup(self.ctx, reason)
        if taken.get("status") != "SUCCESSFUL":  # one a killed run started, found still running: wait for it
            taken = wait_until(f"backup {taken['id']}", lambda: sql_backups.get_backup(self.ctx, str(taken["id"])),
                               lambda b: b.get("status") not in ("RUNNING", "ENQUEUED", "PENDING"),
                               sql_backups.BACKUP_TIMEOUT)  # fmt: skip
        if taken.get("status") != "SUCCESSFUL":
            raise MlflowGcpError(f"The backup before the upgrade ({taken['id']}) is {taken.get('status')}.",
                                 hint=f"Run {self.command} again to take another.")  # fmt: skip
        # From now on `upgrade --rollback` can bring this back, even if the upgrade never finishes.
        previous = {"version": record["from"], "image": record.get("image"), "backup": str(taken["id"]),
                    "backup_instance": record["instance"], "upgraded": record["started"]}  # fmt: skip
        self.ctx.state.set(STATE_KEY, {**(self.ctx.state.data.get(STATE_KEY) or {}), "previous": previous})
        self.say(f"Backup {taken['id']} taken.")
        return {"backup": str(taken["id"])}

    def _deploy(self, record: dict[str, Any]) -> dict[str, Any]:
        self.ctx.mlflow_version = record["to"]
        switch_to(self.ctx, record["instance"], self.say, self.reporter)
        return {}

    def finish(self, record: dict[str, Any]) -> dict[str, Any]:
        return {STATE_KEY: {**(self.ctx.state.data.get(STATE_KEY) or {}), "version": record["to"]}}

    def abandon(self, record: dict[str, Any]) -> None:
        """Back to the release that served: its image deployed again. A new revision that failed is left behind
        (Cloud Run kept traffic on the old one); if its start migrated the schema already, the old release refuses it
        and only `upgrade --rollback` (the backup taken first) brings it back."""
        if record.get("phase") != "deploy":
            return  # nothing deployed yet; the backup stays (listed by `mlflow-gcp backups`)
        self.ctx.mlflow_version = record["from"]
        try:
            switch_to(self.ctx, record["instance"], self.say, self.reporter)
        except MlflowGcpError as exc:
            raise MlflowGcpError(
                f"MLflow {record['from']} does not serve again ({exc.message.splitlines()[0]}): the new release may "
                "have migrated the schema already.",
                hint="mlflow-gcp upgrade --rollback restores the backup taken before the upgrade.",
            ) from None


class Rollback(Restore):
    """The release and the databases from before the last upgrade (its backup, restored into a new instance)."""

    kind = "rollback"

    @property
    def command(self) -> str:
        return "mlflow-gcp upgrade --rollback"

    def begin(self) -> dict[str, Any]:
        previous = (self.ctx.state.data.get(STATE_KEY) or {}).get("previous")
        if not previous:
            raise MlflowGcpError("There is no upgrade to roll back (the state records none).")
        self.backup_id = previous["backup"]
        record = super().begin()
        return {**record, "from_version": self.ctx.mlflow_version, "version": previous["version"],
                "upgraded": previous["upgraded"]}  # fmt: skip

    def phases(self, record: dict[str, Any]) -> list[Phase]:
        phases = super().phases(record)
        last = phases[-1]
        switch = Phase("switch", f"Converge the stack onto {record['target']} with an image of MLflow "
                       f"{record['version']}, check MLflow serves; {record['source']}, with what was written since "
                       "the upgrade, is kept.", last.run)  # fmt: skip
        return [*phases[:-1], switch]

    def _switch(self, record: dict[str, Any]) -> None:
        self.ctx.mlflow_version = record["version"]
        switch_to(self.ctx, record["target"], self.say, self.reporter)
        why = f"rollback of the upgrade of {record['upgraded']}"
        self.ctx.state.set("database", database_after(self.ctx, record, why))

    def finish(self, record: dict[str, Any]) -> dict[str, Any]:
        return {STATE_KEY: {"version": record["version"]}}
