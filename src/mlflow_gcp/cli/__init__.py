"""The ``mlflow-gcp`` command line. Kept thin and light: Google client libraries are imported only
inside the commands that use them, so ``--help`` stays fast."""

from __future__ import annotations

import click

from .. import __version__
from .emulator import emulator


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlflow-gcp")
def cli() -> None:
    """A production MLflow tracking server on Google Cloud, with one command."""


cli.add_command(emulator)


def main() -> None:
    cli(prog_name="mlflow-gcp")
