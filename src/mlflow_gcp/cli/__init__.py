"""The ``mlflow-gcp`` command line. Kept thin and light: Google client libraries are imported only
inside the commands that use them, so ``--help`` stays fast."""

from __future__ import annotations

import click

from .. import __version__
from .backups import backup, backups, cleanup, restore
from .down import down
from .emulator import emulator
from .env import env_command
from .logs import logs
from .open import open_command
from .rotate import rotate_password
from .status import status
from .up import up
from .upgrade import upgrade
from .users import users


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from ..image_source import pinned_mlflow_version

    click.echo(f"mlflow-gcp {__version__} (server image: MLflow {pinned_mlflow_version()})")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version (and the MLflow version the server image pins) and exit.",
)
@click.option("-v", "--verbose", count=True, help="-v shows API calls; -vv also tracebacks.")
def cli(verbose: int) -> None:
    """A production MLflow tracking server on Google Cloud, with one command.

    \b
    mlflow-gcp up --project my-project     create or repair the stack
    mlflow-gcp up --local                  the same on the local GCP emulator
    mlflow-gcp status                      every resource against what it should be
    mlflow-gcp env                         credentials for MLflow clients
    mlflow-gcp logs [--follow]             the server's log entries (Cloud Logging)
    mlflow-gcp rotate-password [--admin]   new credentials, no downtime
    mlflow-gcp users add NAME              MLflow users and their permissions (basic-auth mode)
    mlflow-gcp backup | backups            take a database backup | list them
    mlflow-gcp restore --to-time T         the databases as they were (or --backup ID), into a new instance
    mlflow-gcp upgrade [--to VERSION]      another MLflow release (backup first; --rollback goes back)
    mlflow-gcp open                        the MLflow UI in your browser
    mlflow-gcp down                        remove it (data only with --delete-data)
    """


for command in (
    up,
    status,
    down,
    env_command,
    rotate_password,
    emulator,
    users,
    open_command,
    logs,
    backup,
    backups,
    restore,
    cleanup,
    upgrade,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="mlflow-gcp")
