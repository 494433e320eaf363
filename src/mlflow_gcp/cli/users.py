"""``mlflow-gcp users``: MLflow's own accounts (basic-auth mode) without crafting curl calls; see
mlflow_gcp/mlflow_users.py for the API behind it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import click

from .app import App, config_options, run_command

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
password_stdin_option = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from stdin (its first line) instead of generating one.",
)


@click.group()
def users() -> None:
    """MLflow users (basic-auth mode), through MLflow's API as the admin in Secret Manager.

    \b
    mlflow-gcp users list                         who exists, who is an admin
    mlflow-gcp users add NAME [--admin]           a new user; its password is printed once
    mlflow-gcp users passwd NAME                  a new password, printed once
    mlflow-gcp users grant NAME EXPERIMENT EDIT   a permission on an experiment (--model: a registered model)
    mlflow-gcp users remove NAME

    Passwords are generated (or read with --password-stdin) and printed to stdout only; mlflow-gcp keeps no copy.
    In iap mode people sign in with Google instead: see access.members and access.admins."""


@contextlib.contextmanager
def _accounts(ctx: click.Context, params: dict[str, Any]) -> Iterator[tuple[App, Any]]:
    """The environment's MLflow, as its admin; refused in iap mode before anything is called."""
    from ..mlflow_users import connect, require_basic

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    require_basic(app.config)
    with app.session("users", lock=False) as run_ctx:
        yield app, connect(run_ctx)


def _new_password(params: dict[str, Any]) -> tuple[str, bool]:
    """(the password, whether we generated it and so must show it)."""
    from ..mlflow_users import generate_password, read_password

    if params["password_stdin"]:
        return read_password(click.get_text_stream("stdin").read()), False
    return generate_password(), True


def _show_password(app: App, params: dict[str, Any], result: dict[str, Any], password: str, shown: bool) -> None:
    if params["as_json"]:
        click.echo(json.dumps({"ok": True, **result, **({"password": password} if shown else {})}, indent=2))
    elif shown:
        app.terminal.line("Its password follows on stdout, shown this once (mlflow-gcp keeps no copy):")
        click.echo(password)


def _cache_note(app: App, what: str) -> None:
    ttl = app.config.server.auth_cache_ttl_seconds
    app.terminal.line(
        f"Server workers that checked {what} in the last {ttl}s may accept it for up to {ttl}s more "
        "(MLflow caches logins per worker: server.auth_cache_ttl_seconds)."
    )


def _command(name: str, *options: Callable[..., Any]) -> Callable[[Callable[..., Any]], click.Command]:
    """A `users` subcommand with the stack options, --json, and the CLI's error handling."""

    def decorate(fn: Callable[..., Any]) -> click.Command:
        fn = run_command(fn)
        fn = click.pass_context(fn)
        for option in reversed((*options, json_option)):
            fn = option(fn)
        return users.command(name=name)(config_options(fn))

    return decorate


@_command("list")
def list_users(ctx: click.Context, **params: Any) -> None:
    """List MLflow's users: name, and whether an admin (the one mlflow-gcp signs in as is marked)."""
    with _accounts(ctx, params) as (_app, accounts):
        listed = accounts.list_users()
    if params["as_json"]:
        click.echo(json.dumps({"users": listed}, indent=2))
        return
    width = max((len(u["username"]) for u in listed), default=0)
    for u in listed:
        role = "admin" if u["is_admin"] else "user"
        note = "  (mlflow-gcp's admin: `mlflow-gcp env`)" if u["mlflow_gcp_admin"] else ""
        click.echo(f"{u['username']:<{width}}  {role}{note}")


@_command(
    "add",
    click.argument("username", metavar="NAME"),
    click.option("--admin", is_flag=True, help="Make the user an admin."),
    password_stdin_option,
)
def add(ctx: click.Context, **params: Any) -> None:
    """Create the MLflow user NAME with a generated password, printed once to stdout (or --password-stdin)."""
    name = params["username"]
    with _accounts(ctx, params) as (app, accounts):
        password, generated = _new_password(params)
        accounts.create(name, password, admin=params["admin"])
    app.terminal.line(f"Created the MLflow {'admin' if params['admin'] else 'user'} {name}.")
    _show_password(app, params, {"username": name, "is_admin": params["admin"]}, password, generated)


@_command("passwd", click.argument("username", metavar="NAME"), password_stdin_option)
def passwd(ctx: click.Context, **params: Any) -> None:
    """Give the MLflow user NAME a new generated password, printed once to stdout (or --password-stdin)."""
    name = params["username"]
    with _accounts(ctx, params) as (app, accounts):
        password, generated = _new_password(params)
        accounts.set_password(name, password)
    app.terminal.line(f"Changed the password of {name}.")
    _cache_note(app, "the old password")
    _show_password(app, params, {"username": name}, password, generated)


@_command("remove", click.argument("username", metavar="NAME"))
def remove(ctx: click.Context, **params: Any) -> None:
    """Delete the MLflow user NAME (with its permissions; what it created stays)."""
    name = params["username"]
    with _accounts(ctx, params) as (app, accounts):
        accounts.delete(name)
    app.terminal.line(f"Removed the MLflow user {name}.")
    _cache_note(app, "its password")
    if params["as_json"]:
        click.echo(json.dumps({"ok": True, "username": name, "removed": True}, indent=2))


@_command(
    "grant",
    click.argument("username", metavar="NAME"),
    click.argument("target", metavar="EXPERIMENT|MODEL"),
    click.argument("permission", type=click.Choice(["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"])),
    click.option("--model", is_flag=True, help="TARGET is a registered model's name."),
)
def grant(ctx: click.Context, **params: Any) -> None:
    """Give NAME a PERMISSION on an experiment (its id or name) or, with --model, a registered model; replaces the
    permission NAME held there. NO_PERMISSIONS shuts NAME out of it (MLflow's DENY), whatever
    access.default_permission says; admins keep every permission."""
    with _accounts(ctx, params) as (app, accounts):
        result = accounts.grant(params["username"], params["target"], params["permission"], model=params["model"])
    what = f"registered model {result.name}"
    if not params["model"]:
        what = f"experiment {result.name} (id {result.resource_id})"
    change = {"granted": "granted", "unchanged": "unchanged", "updated": f"updated from {result.previous}"}
    app.terminal.line(f"{result.username}: {result.permission} on {what}: {change[result.action]}.")
    if params["as_json"]:
        click.echo(json.dumps({"ok": True, **result.as_dict()}, indent=2))
