"""``mlflow-gcp down``: remove what `up` created; data only with --delete-data."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import AbortedError
from .app import App, config_options, run_command


@click.command()
@config_options
@click.option("--delete-data", is_flag=True, help="Also delete the Cloud SQL instance and the artifact bucket.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted, deleting nothing.")
@click.option("--break-lock", is_flag=True, help="Remove a lock left by a run that died, then proceed.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.pass_context
@run_command
def down(ctx: click.Context, **params: Any) -> None:
    """Delete the stack in reverse order. The database and the bucket are kept unless --delete-data."""
    from ..engine import Engine, summarize
    from ..stack import resources

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    delete_data, dry_run = params["delete_data"], params["dry_run"]
    if not dry_run and not params["yes"]:
        _confirm(app.names.prefix, app.config.project, delete_data)
    with app.session("down", lock=not dry_run, break_lock=params["break_lock"]) as run_ctx, app.terminal:
        outcomes = Engine(run_ctx, app.terminal).destroy(
            resources(run_ctx, removing=True), delete_data=delete_data, dry_run=dry_run
        )
        if delete_data and not dry_run:
            from ..operations import STATE_KEY, forget_deleted_instances, in_progress

            forget_deleted_instances(run_ctx.state, [o.id for o in outcomes if o.action in ("deleted", "absent")])
            # With the data gone, so is what a restore or an upgrade in progress worked on (its new instance was
            # deleted with the others), and the release whose schema the database had: a new `up` starts afresh.
            dropped = in_progress(run_ctx.state)
            run_ctx.state.update({STATE_KEY: None, "mlflow": None})
            if dropped:
                app.terminal.line(f"The {dropped['kind']} in progress was given up with the data.")
    counts = summarize(outcomes)
    app.terminal.line("Done: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
    if not delete_data and counts.get("kept"):
        app.terminal.line("The database and the artifact bucket were kept; `down --delete-data` removes them.")
    if params["as_json"]:
        click.echo(json.dumps({"ok": True, "outcomes": [o.as_dict() for o in outcomes]}, indent=2))


def _confirm(prefix: str, project: str, delete_data: bool) -> None:
    if not sys.stdin.isatty():
        raise AbortedError("Refusing to delete without confirmation: no terminal to ask on.", hint="Pass --yes.")
    if delete_data:
        typed = click.prompt(
            f"This deletes {prefix} in {project} INCLUDING its database and artifacts. Type {prefix!r} to confirm",
            default="",
            show_default=False,
        )
        if typed != prefix:
            raise AbortedError("Not confirmed; nothing was deleted.")
    elif not click.confirm(f"Delete {prefix} in {project} (the database and the bucket are kept)?"):
        raise AbortedError("Not confirmed; nothing was deleted.")
