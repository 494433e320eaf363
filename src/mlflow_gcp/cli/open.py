"""``mlflow-gcp open``: the MLflow UI in the default browser."""

from __future__ import annotations

import json
from typing import Any

import click

from .app import App, config_options, run_command


@click.command(name="open")
@config_options
@click.option("--json", "as_json", is_flag=True, help='Print {"url": ..., "opened": ...} as JSON on stdout.')
@click.pass_context
@run_command
def open_command(ctx: click.Context, **params: Any) -> None:
    """Open the MLflow UI in the default browser (the BROWSER environment variable chooses another); print the URL
    when there is no browser to open it in."""
    import webbrowser

    from ..resources.run import service_url

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    with app.session("open", lock=False) as run_ctx:
        url = service_url(run_ctx)
    # False when no browser was found or the one found failed (webbrowser tries each it knows of, BROWSER first).
    opened = webbrowser.open(url)
    if opened:
        app.terminal.line(f"Opened {url} in your browser.")
    else:
        app.terminal.line("No browser to open it in; open the URL yourself.")
    if app.config.access.mode == "iap":
        app.terminal.line("Sign in with your Google account (one of access.members).")
    else:
        env_command = "mlflow-gcp env" + (" --local" if app.local else "")
        app.terminal.line(f"Sign in with an MLflow user (`mlflow-gcp users list`); the admin's: `{env_command}`.")
    if params["as_json"]:
        click.echo(json.dumps({"url": url, "opened": opened}, indent=2))
    elif not opened:
        click.echo(url)
