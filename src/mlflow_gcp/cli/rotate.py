"""``mlflow-gcp rotate-password``: new database (default) or MLflow admin (--admin) credentials while the server
keeps serving; the old ones are made useless. See mlflow_gcp/rotation.py for the steps."""

from __future__ import annotations

import json
from typing import Any

import click

from .app import App, config_options, run_command


@click.command(name="rotate-password")
@config_options
@click.option("--admin", is_flag=True, help="Rotate the MLflow admin password instead of the database password.")
@click.option("--dry-run", is_flag=True, help="Print the steps without doing them.")
@click.option("--break-lock", is_flag=True, help="Remove a lock left by a run that died, then proceed.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.pass_context
@run_command
def rotate_password(ctx: click.Context, **params: Any) -> None:
    """Rotate a credential with no downtime.

    \b
    Database (default): the server moves to the other of two database users, which gets a new password from a
    new secret version; then the old user's password and the old secret versions are retired.
    --admin: the MLflow admin's password is changed through MLflow's API, then pinned in a new revision.

    An interrupted rotation (the process killed, a failed deploy) is finished by running the command again."""
    from ..rotation import Rotation

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    dry_run = params["dry_run"]
    credential = "admin" if params["admin"] else "db"
    with app.session("rotate-password", lock=not dry_run, break_lock=params["break_lock"]) as run_ctx:
        rotation = Rotation(run_ctx, credential, say=app.terminal.line)
        if dry_run:
            lines = rotation.plan()
            if params["as_json"]:
                click.echo(json.dumps({"ok": True, "dry_run": True, "steps": lines[1:]}, indent=2))
            else:
                for line in lines:
                    click.echo(line)
            return
        result = rotation.run()
    app.terminal.line(f"Done: the {result['credential']} credential was rotated in {app.terminal.elapsed():.1f}s.")
    if credential == "admin":
        app.terminal.line("Clients need the new password: mlflow-gcp env" + (" --local" if app.local else ""))
    if params["as_json"]:
        click.echo(json.dumps({"ok": True, **result, "seconds": round(app.terminal.elapsed(), 1)}, indent=2))
