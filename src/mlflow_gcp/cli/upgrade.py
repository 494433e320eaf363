"""``mlflow-gcp upgrade``: another MLflow release, a backup first, the migrations once; ``--rollback`` back to the
release and data from before it (upgrade.py says how)."""

from __future__ import annotations

import json
from typing import Any

import click

from .app import App, config_options, run_command
from .backups import _confirm, abandon_operation


@click.command()
@config_options
@click.option("--to", "to_version", default=None, help="The MLflow release [default: server.mlflow_version, else the "
              "one this mlflow-gcp is tested with].")  # fmt: skip
@click.option("--rollback", is_flag=True, help="Back to the release and the data from before the last upgrade.")
@click.option("--abandon", is_flag=True, help="Give up the upgrade (or, with --rollback, the rollback) in progress.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (--rollback; for scripts).")
@click.option("--dry-run", is_flag=True, help="Show what would change (versions, schema migrations), changing nothing.")
@click.option("--break-lock", is_flag=True, help="Remove a lock left by a run that died, then proceed.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.pass_context
@run_command
def upgrade(ctx: click.Context, **params: Any) -> None:
    """Move the server to another MLflow release: an on-demand backup, the new image, a new revision whose start
    migrates the databases once (under a lock), traffic moved only once it is ready.

    \b
    --rollback restores the pre-upgrade backup into a new Cloud SQL instance and switches the service to it with
    the previous release; what was written since the upgrade stays only in the instance it leaves (kept).
    An interrupted upgrade or rollback is finished by running the command again; --abandon gives it up."""
    from ..engine import perform
    from ..operations import record_for
    from ..upgrade import Rollback, Upgrade

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    dry_run = params["dry_run"]
    command = "upgrade --rollback" if params["rollback"] else "upgrade"
    if params["rollback"] and params["to_version"]:
        raise click.UsageError("--rollback goes back to the release from before the last upgrade: no --to with it.")
    with app.session(command, lock=not dry_run, break_lock=params["break_lock"]) as run_ctx:
        if params["rollback"]:
            operation: Any = Rollback(run_ctx, say=app.terminal.line, reporter=app.terminal)
        else:
            operation = Upgrade(run_ctx, params["to_version"], say=app.terminal.line, reporter=app.terminal)
        if params["abandon"]:
            abandon_operation(app, operation, params["as_json"])
            return
        if not params["rollback"] and run_ctx.state.data.get("operation") is None and not run_ctx.config.server.image:
            from ..resources.run import recorded_url

            if recorded_url(run_ctx.state) and operation.target() == run_ctx.mlflow_version:
                app.terminal.line(f"MLflow {run_ctx.mlflow_version} serves already: nothing to upgrade.")
                if params["as_json"]:
                    click.echo(json.dumps({"ok": True, "version": run_ctx.mlflow_version, "changed": False}))
                return
        record = record_for(operation)
        resuming = bool(record["phase"])
        header = _header(operation.kind, record, resuming)
        plan = operation.plan(record)
        if dry_run:
            if params["as_json"]:
                click.echo(json.dumps({"ok": True, "dry_run": True, "record": record, "steps": plan}, indent=2))
            else:
                click.echo("\n".join([header, *plan]))
            return
        if operation.kind == "rollback" and not resuming and not params["yes"]:
            lost = (f"What was written since the upgrade ({record['upgraded']}) will not be in the restored databases "
                    f"(it stays in {record['source']}, which is kept). Roll back?")  # fmt: skip
            _confirm("\n".join([header, *plan]), lost)
        app.terminal.line(header)
        result = perform(operation, record, app.terminal.line)
    if operation.kind == "rollback":
        done = f"MLflow {result['version']} serves from {result['target']}; {result['source']} is kept"
    else:
        done = f"MLflow {result['to']} serves (backup {result['backup']} holds the data from before)"
    app.terminal.line(f"Done: {done}, in {app.terminal.elapsed():.1f}s.")
    if params["as_json"]:
        click.echo(json.dumps({"ok": True, **result, "seconds": round(app.terminal.elapsed(), 1)}, indent=2))


def _header(kind: str, record: dict[str, Any], resuming: bool) -> str:
    if resuming:
        return f"A {kind} is in progress (since {record['started']}); running the command resumes it:"
    if kind == "rollback":
        return (f"Rolling back from MLflow {record['from_version']} to {record['version']} and the data of backup "
                f"{record['backup']} would:")  # fmt: skip
    return f"Upgrading MLflow {record['from']} to {record['to']} would:"
