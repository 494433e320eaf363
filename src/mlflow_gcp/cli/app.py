"""What every stack command shares: options, configuration, clients, the state lock, and error handling."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..errors import ExitCode, MlflowGcpError

# (flag, config key, click type, help)
_CONFIG_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--project", "project", str, "GCP project ID (else MLFLOW_GCP_PROJECT, GOOGLE_CLOUD_PROJECT, config file)."),
    ("--region", "region", str, "GCP region [default: us-central1]."),
    ("--name", "name", str, "Deployment name; resource names derive from name and env [default: mlflow]."),
    ("--env", "env", str, "Environment (dev, staging, prod, ...) [default: dev]."),
    ("--state", "state", str, "State location: a directory or gs://bucket/prefix [default: .mlflow-gcp]."),
]


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for flag, _key, kind, help_text in reversed(_CONFIG_FLAGS):
        fn = click.option(flag, type=kind, default=None, help=help_text)(fn)
    fn = click.option(
        "--local", is_flag=True, help="Use the local GCP emulator (started in the background if needed)."
    )(fn)
    fn = click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file [default: ./mlflow-gcp.toml if present].",
    )(fn)
    return fn


class App:
    """One command's run: built from the parsed options, validated before anything touches GCP."""

    def __init__(self, params: dict[str, Any], flags: dict[str, Any], verbosity: int) -> None:
        from .. import config as cfg
        from ..naming import Names
        from ..output import Terminal

        self.local = bool(params.get("local"))
        self.config = cfg.load(
            params.get("config_file"),
            flags={**{key: params.get(key) for _, key, _, _ in _CONFIG_FLAGS}, **flags},
            default_project=cfg.LOCAL_PROJECT if self.local else None,
        )
        self.names = Names.from_config(self.config)
        self.terminal = Terminal(verbosity)
        self.verbosity = verbosity

    @functools.cached_property
    def clients(self) -> Any:
        from ..clients import Clients

        url = None
        if self.local:
            # An emulator someone already runs (tests, `emulator start` in another shell), else our daemon.
            url = os.environ.get("MLFLOW_GCP_EMULATOR_URL")
            if not url:
                from ..emulator.daemon import default_data_dir, start_daemon

                try:
                    url = start_daemon(default_data_dir())["base_url"]
                except RuntimeError as exc:
                    raise MlflowGcpError(
                        f"Could not start the local GCP emulator: {exc}",
                        hint="If another emulator runs (e.g. with another --data-dir), set MLFLOW_GCP_EMULATOR_URL to "
                        "its URL or MLFLOW_GCP_EMULATOR_DIR to its data directory.",
                    ) from None
            self.terminal.line(f"Using the local GCP emulator at {url}", level=1)
        return Clients(self.config.project, url)

    def project_number(self) -> str:
        """Check the project exists and is ours to use; answer its number."""
        from google.api_core import exceptions

        from ..errors import ProjectError
        from ..retry import call

        try:
            project = call(self.clients.projects.get_project, name=f"projects/{self.config.project}", deadline=60)
        except (exceptions.Forbidden, exceptions.NotFound) as exc:
            raise ProjectError(
                f"Project {self.config.project!r} does not exist or your credentials cannot see it ({exc.message}).",
                hint="Check --project (the project ID), and that your account has a role on it "
                "(roles/owner, or roles/editor plus roles/resourcemanager.projectIamAdmin).",
            ) from None
        return project.name.split("/")[1]

    def backend(self) -> Any:
        from ..state import GcsBackend, LocalBackend, state_key

        key = state_key(self.config.project, self.config.name, self.config.env)
        if self.config.state.startswith("gs://"):
            return GcsBackend(self.clients.storage, self.config.state, key)
        return LocalBackend(Path(self.config.state), key)

    @contextlib.contextmanager
    def session(self, command: str, *, lock: bool = True, break_lock: bool = False) -> Iterator[Any]:
        """Project check, state (locked for commands that change things), and a Context for the engine."""
        from ..context import Context
        from ..state import State, lock_owner

        number = self.project_number()
        backend = self.backend()
        if break_lock:
            holder = backend.break_lock()
            if holder:
                self.terminal.line(f"Broke the lock held by {holder.get('who')} (pid {holder.get('pid')}).")
        if lock:
            backend.acquire(lock_owner(command))
        try:
            identity = {"project": self.config.project, "name": self.config.name, "env": self.config.env}
            state = State(backend, identity)
            from ..operations import live_instance

            # The instance that serves is the state's to say: a restore or a rollback moves the service to a new one.
            self.names = replace(self.names, database_instance=live_instance(state))
            ctx = Context(self.config, self.names, self.clients, state, log=self.terminal.api_call)
            from ..upgrade import serving_version

            ctx.mlflow_version = serving_version(self.config, state)
            ctx.publish("project", {"number": number})
            yield ctx
        finally:
            if lock:
                backend.release()


def describe_builder(ctx: Any) -> str:
    """One line: which image, built how, and why that builder."""
    from .. import builds

    builder = builds.resolve(ctx)
    if builder == "prebuilt":
        return f"Server image: {ctx.config.server.image} (prebuilt)"
    how = {"docker": "a local Docker daemon", "cloudbuild": "Cloud Build"}[builder]
    return f"Server image: {ctx.names.image_repo}, built with {how} ({ctx.builder_reason})"


def run_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into a message and a documented exit code; never a traceback (unless -vv)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbosity = click.get_current_context().find_root().params.get("verbose", 0) or 0
        try:
            return fn(*args, **kwargs)
        except MlflowGcpError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("Interrupted. Run the same command again to resume; it picks up where it stopped.",
                  ExitCode.INTERRUPTED)  # fmt: skip
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:
            if verbosity >= 2:
                traceback.print_exc()
            _fail(*_describe_unexpected(exc))

    return wrapper


def _describe_unexpected(exc: BaseException, step: str | None = None) -> tuple[str, ExitCode]:
    from ..engine import StepFailed
    from ..permissions import permission_hint
    from ..retry import error_text, http_status

    if isinstance(exc, StepFailed):
        lines = []
        code = ExitCode.FAILED
        for key, err in exc.failures.items():
            message, err_code = (
                (str(err), err.exit_code) if isinstance(err, MlflowGcpError) else _describe_unexpected(err, key)
            )
            lines.append(f"{key}: {message}".replace("\n", "\n  "))
            if err_code != ExitCode.FAILED:
                code = err_code
        return "Some steps failed (run the command again to retry them):\n  " + "\n  ".join(lines), code
    from google.api_core.exceptions import RetryError

    if isinstance(exc, RetryError):
        # The retry policy's deadline passed: what matters is the last answer it got.
        if exc.cause is not None:
            message, code = _describe_unexpected(exc.cause, step)
            return f"{message}\n  (still failing when the retry deadline passed)", code
        return f"Gave up retrying: {exc.message}", ExitCode.FAILED
    status = http_status(exc)
    if status == 403:
        return f"Google refused: {error_text(exc)}\n  hint: {permission_hint(exc, step)}", ExitCode.PERMISSION
    if status is not None:
        return f"Google Cloud answered {status}: {error_text(exc)}", ExitCode.FAILED
    return f"Unexpected error: {type(exc).__name__}: {exc} (run with -vv for details)", ExitCode.FAILED


def _fail(message: str, code: ExitCode) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(int(code))
