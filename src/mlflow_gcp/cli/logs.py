"""``mlflow-gcp logs``: the server's log entries from Cloud Logging (see mlflow_gcp/server_logs.py)."""

from __future__ import annotations

import json
from typing import Any

import click

from .app import App, config_options, run_command


class _Since(click.ParamType):
    name = "DURATION|TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from ..server_logs import parse_since

        if isinstance(value, int):
            return value
        try:
            return parse_since(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Revision(click.ParamType):
    name = "REVISION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from ..server_logs import revision_name

        try:
            return revision_name(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@config_options
@click.option(
    "--since",
    type=_Since(),
    default="1h",
    show_default=True,
    help="From how long ago (30s, 15m, 1h, 2d) or from when (2024-05-01T12:00:00Z).",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries as they arrive (Ctrl-C stops).")
@click.option("--revision", type=_Revision(), default=None, help="Only this revision's entries.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw log entries, one JSON object per line.")
@click.pass_context
@run_command
def logs(ctx: click.Context, **params: Any) -> None:
    """Show the server's log entries (Cloud Logging): what each Cloud Run revision wrote, and Cloud Run's own lines
    about its instances; oldest first, anything shaped like a credential masked."""
    from .. import server_logs

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    since: int = params["since"]  # nanoseconds since the epoch
    revision: str | None = params["revision"]

    def emit(entry: dict[str, Any]) -> None:
        if params["as_json"]:
            click.echo(json.dumps(server_logs.masked(entry), sort_keys=True))
        else:
            click.echo(server_logs.format_entry(entry))

    with app.session("logs", lock=False) as run_ctx:
        if params["follow"]:
            try:
                server_logs.follow(run_ctx, since, emit, revision=revision)
            except KeyboardInterrupt:
                pass  # the way to stop following: not an error
            return
        start = server_logs.rfc3339(since)
        query = server_logs.service_filter(app.names, since=start, revision=revision)
        count = 0
        for entry in server_logs.list_entries(run_ctx, query):
            emit(entry)
            count += 1
    if not count:
        which = f" (revision {revision})" if revision else ""
        app.terminal.line(f"No log entries of Cloud Run service {app.names.service}{which} since {start}.")
