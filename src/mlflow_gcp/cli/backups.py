"""``mlflow-gcp backup``, ``backups``, ``restore`` and ``cleanup``: the database's backups, and getting its data back
(restore.py says how a restore works; operations.py how it resumes)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import AbortedError
from .app import App, config_options, run_command


@click.command()
@config_options
@click.option("--label", default="on demand", show_default=True, help="Said in the backup's description.")
@click.option("--json", "as_json", is_flag=True, help="Print the backup run as JSON on stdout.")
@click.pass_context
@run_command
def backup(ctx: click.Context, **params: Any) -> None:
    """Take an on-demand backup of the Cloud SQL instance (both MLflow databases), and wait for it."""
    from ..resources import sql_backups

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    with app.session("backup") as run_ctx:
        app.terminal.line(f"Backing up Cloud SQL instance {run_ctx.names.instance}.")
        run = sql_backups.take_backup(run_ctx, params["label"])
    app.terminal.line(f"Done: backup {run['id']} ({run.get('status')}) in {app.terminal.elapsed():.1f}s.")
    app.terminal.line(f"Restore it with: mlflow-gcp restore --backup {run['id']}")
    if params["as_json"]:
        click.echo(json.dumps(_row(run), indent=2))


@click.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the backups as JSON on stdout.")
@click.pass_context
@run_command
def backups(ctx: click.Context, **params: Any) -> None:
    """List the database's backups (on demand and automated), newest first."""
    from ..resources import sql_backups

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    with app.session("backups", lock=False) as run_ctx:
        from ..operations import kept_instances

        instance = run_ctx.names.instance
        # The kept instances' backups too: the data before a restore or an upgrade may be in one of them.
        rows = [_row(r) for i in [instance, *(k["instance"] for k in kept_instances(run_ctx.state))]
                for r in sql_backups.list_backups(run_ctx, i)]  # fmt: skip
    if params["as_json"]:
        click.echo(json.dumps({"instance": instance, "backups": rows}, indent=2))
        return
    if not rows:
        click.echo(f"Cloud SQL instance {instance} has no backups yet (mlflow-gcp backup takes one).")
        return
    width = max(len(r["instance"]) for r in rows)
    click.echo(f"{'ID':<16} {'INSTANCE':<{width}}  {'TIME (UTC)':<19}  {'KIND':<9}  {'STATUS':<10} {'SIZE':>10}  "
               "DESCRIPTION")  # fmt: skip
    for r in rows:
        click.echo(f"{r['id']:<16} {r['instance']:<{width}}  {(r['time'] or '')[:19]:<19}  {r['kind']:<9}  "
                   f"{r['status']:<10} {_size(r['bytes']):>10}  {r['description']}")  # fmt: skip


def _row(run: dict[str, Any]) -> dict[str, Any]:
    size = run.get("maxChargeableBytes")
    return {
        "id": str(run.get("id")),
        "instance": run.get("instance", ""),
        "time": run.get("endTime") or run.get("startTime") or run.get("windowStartTime") or run.get("enqueuedTime"),
        "kind": {"ON_DEMAND": "on demand", "AUTOMATED": "automated"}.get(run.get("type", ""), run.get("type", "")),
        "status": run.get("status", ""),
        "bytes": int(size) if size is not None else None,
        "description": run.get("description", ""),
    }


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@click.command()
@config_options
@click.option("--backup", "backup_id", default=None, help="The backup to restore (an ID from `mlflow-gcp backups`).")
@click.option(
    "--to-time", default=None, help="Restore the databases as they were then (RFC 3339, e.g. 2026-11-30T10:15:00Z)."
)
@click.option("--abandon", is_flag=True, help="Give up the restore in progress (its new instance is deleted).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--dry-run", is_flag=True, help="Print the plan, changing nothing.")
@click.option("--break-lock", is_flag=True, help="Remove a lock left by a run that died, then proceed.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.pass_context
@run_command
def restore(ctx: click.Context, **params: Any) -> None:
    """Restore both MLflow databases from a backup or to a point in time, into a NEW Cloud SQL instance the
    service then switches to. The instance serving now is kept (`mlflow-gcp cleanup` deletes it).

    An interrupted restore is finished by running the command again (`--abandon` gives it up)."""
    from ..engine import perform
    from ..operations import record_for
    from ..restore import Restore

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    dry_run = params["dry_run"]
    with app.session("restore", lock=not dry_run, break_lock=params["break_lock"]) as run_ctx:
        operation = Restore(run_ctx, backup_id=params["backup_id"], to_time=params["to_time"],
                            say=app.terminal.line, reporter=app.terminal)  # fmt: skip
        if params["abandon"]:
            abandon_operation(app, operation, params["as_json"])
            return
        record = record_for(operation)
        resuming = bool(record["phase"])
        header = ("A restore is in progress; running the command resumes it:" if resuming
                  else f"Restoring {run_ctx.names.instance} would:")  # fmt: skip
        plan = operation.plan(record)
        if dry_run:
            if params["as_json"]:
                click.echo(json.dumps({"ok": True, "dry_run": True, "record": record, "steps": plan}, indent=2))
            else:
                click.echo("\n".join([header, *plan]))
            return
        if not resuming and not params["yes"]:
            _confirm("\n".join([header, *plan]), "Data written since then will not be in the restored databases "
                     f"(it stays in {record['source']}, which is kept). Restore?")  # fmt: skip
        result = perform(operation, record, app.terminal.line)
    app.terminal.line(f"Done: the service uses {result['target']} in {app.terminal.elapsed():.1f}s; {result['source']} "
                      "is kept (mlflow-gcp cleanup deletes it).")  # fmt: skip
    if params["as_json"]:
        click.echo(json.dumps({"ok": True, **result, "seconds": round(app.terminal.elapsed(), 1)}, indent=2))


@click.command()
@config_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted, deleting nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.pass_context
@run_command
def cleanup(ctx: click.Context, **params: Any) -> None:
    """Delete the Cloud SQL instances a restore or a rollback kept (the data as it was before)."""
    from ..engine import Engine
    from ..operations import forget_deleted_instances, kept_instances, refuse_if_in_progress
    from ..resources.sql_backups import kept

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    with app.session("cleanup", lock=not params["dry_run"]) as run_ctx:
        refuse_if_in_progress(run_ctx.state)  # an operation may still need a kept instance (its backup, its data)
        listed = kept_instances(run_ctx.state)
        if not listed:
            app.terminal.line("No kept instances: nothing to delete.")
            if params["as_json"]:
                click.echo(json.dumps({"ok": True, "outcomes": []}))
            return
        rollback = ((run_ctx.state.data.get("mlflow") or {}).get("previous") or {}).get("backup_instance")
        for k in listed:
            needed = (
                " It holds the backup `upgrade --rollback` restores: no rollback after this."
                if (k["instance"] == rollback)
                else ""
            )
            app.terminal.line(f"Kept: Cloud SQL instance {k['instance']} (since {k['since']}, {k['why']}).{needed}")
        if not params["dry_run"] and not params["yes"]:
            _confirm("", f"Delete {len(listed)} kept instance(s), the data and the backups in them?")
        with app.terminal:
            outcomes = Engine(run_ctx, app.terminal).destroy(kept(run_ctx), delete_data=True,
                                                             dry_run=params["dry_run"])  # fmt: skip
        if not params["dry_run"]:
            forget_deleted_instances(run_ctx.state, [o.id for o in outcomes if o.action in ("deleted", "absent")])
            if rollback and rollback not in {k["instance"] for k in kept_instances(run_ctx.state)} | {
                run_ctx.names.instance
            }:
                # Its backups went with it (on GCP a deleted instance's backups are deleted too).
                run_ctx.state.set("mlflow", {k: v for k, v in run_ctx.state.data["mlflow"].items() if k != "previous"})
    if params["as_json"]:
        click.echo(json.dumps({"ok": True, "outcomes": [o.as_dict() for o in outcomes]}, indent=2))


def abandon_operation(app: App, operation: Any, as_json: bool) -> None:
    """``--abandon``: give up the operation in progress of this kind (operations.abandon), saying what it undid."""
    from ..operations import abandon

    with app.terminal:
        record = abandon(operation)
    where = f"it was at phase {record['phase']}"
    app.terminal.line(f"Abandoned the {record['kind']} started {record['started']} ({where}).")
    if as_json:
        click.echo(json.dumps({"ok": True, "abandoned": record}, indent=2))


def _confirm(plan: str, question: str) -> None:
    if not sys.stdin.isatty():
        raise AbortedError("Refusing to go on without confirmation: no terminal to ask on.", hint="Pass --yes.")
    if plan:
        click.echo(plan, err=True)
    if not click.confirm(question, err=True):
        raise AbortedError("Not confirmed; nothing was changed.")
