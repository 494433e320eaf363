"""``mlflow-gcp env``: what an MLflow client needs to reach the server."""

from __future__ import annotations

import json
import shlex
from typing import Any

import click

from .app import App, config_options, run_command


@click.command(name="env")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON instead of shell exports.")
@click.pass_context
@run_command
def env_command(ctx: click.Context, **params: Any) -> None:
    """Print MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.

    Use it as: eval "$(mlflow-gcp env)". The password is printed to stdout only, for you to use. In iap mode only
    MLFLOW_TRACKING_URI: MLflow clients on this machine then sign in with your Google credentials (ADC)."""
    from ..resources.secrets import read_secret

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    with app.session("env", lock=False) as run_ctx:
        from ..resources.run import service_url

        url = service_url(run_ctx)
        if run_ctx.config.access.mode == "iap":
            from .. import identity

            # The plugin adds ID tokens only for deployments registered here (identity.py says why).
            identity.register(url, run_ctx.config.access.audiences[0])
            values = {"MLFLOW_TRACKING_URI": url}
        else:
            values = {
                "MLFLOW_TRACKING_URI": url,
                "MLFLOW_TRACKING_USERNAME": read_secret(run_ctx, "admin-username"),
                "MLFLOW_TRACKING_PASSWORD": read_secret(run_ctx, "admin-password"),
            }
    if params["as_json"]:
        click.echo(json.dumps(values, indent=2))
    else:
        for k, v in values.items():
            click.echo(f"export {k}={shlex.quote(v)}")
