"""``mlflow-gcp emulator``: run the local GCP emulator (foreground or daemon)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..emulator.daemon import DEFAULT_PORT, default_data_dir

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_data_dir,
    show_default="$MLFLOW_GCP_EMULATOR_DIR, else /var/lib/mlflow-gcp/emulator as root, else ~/.local/share/...",
    help="Where the emulator keeps its resources (Cloud SQL data, objects, images).",
)


@click.group()
def emulator() -> None:
    """The local GCP emulator: the APIs mlflow-gcp uses, on one port."""


def _print_endpoints(info: dict) -> None:
    click.echo(f"GCP emulator listening on {info['base_url']}")
    for name, url in sorted(info["endpoints"].items()):
        click.echo(f"  {name:<18} {url}")
    click.echo("For other tools:")
    click.echo(f"  export STORAGE_EMULATOR_HOST={info['endpoints']['storage']}")
    click.echo(f"  export DOCKER_HOST={info['endpoints']['docker']}")


@emulator.command()
@data_dir_option
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option("--daemon", is_flag=True, help="Run in the background; later commands find it through --data-dir.")
@click.option("--latency", type=click.Choice(["instant", "realistic"]), default="instant", show_default=True)
@click.option("--time-scale", type=float, default=1.0, show_default=True, help="Multiplies realistic latencies.")
def start(data_dir: Path, port: int, daemon: bool, latency: str, time_scale: float) -> None:
    """Start the emulator and print its endpoints."""
    from ..emulator.daemon import find_running, start_daemon

    running = find_running(data_dir)
    if running is not None:
        click.echo(f"Already running (pid {running['pid']}).", err=True)
        _print_endpoints(running)
        return
    settings = {"latency_profile": latency, "time_scale": time_scale}
    if daemon:
        try:
            info = start_daemon(data_dir, port, settings)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"Started in the background (pid {info['pid']}); stop it with `mlflow-gcp emulator stop`.")
        _print_endpoints(info)
        return
    from ..emulator.__main__ import main as run

    sys.exit(run(["--data-dir", str(data_dir), "--port", str(port), "--settings", json.dumps(settings)]))


@emulator.command()
@data_dir_option
def stop(data_dir: Path) -> None:
    """Stop the background emulator."""
    from ..emulator.daemon import stop_daemon

    if stop_daemon(data_dir):
        click.echo("Stopped.")
    else:
        click.echo("No emulator was running.")


@emulator.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print pid, base URL and endpoints as JSON on stdout.")
def status(data_dir: Path, as_json: bool) -> None:
    """Say whether the background emulator runs, and where (exit code 1 when it does not)."""
    from ..emulator.daemon import find_running

    info = find_running(data_dir)
    if as_json:
        click.echo(json.dumps({"running": info is not None, **(info or {})}, indent=2))
    elif info is None:
        click.echo("Not running.")
    else:
        _print_endpoints(info)
    if info is None:
        sys.exit(1)
