"""Exit codes and the one error type the CLI turns into a clean message (never a traceback)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented in README.md; scripts may rely on them."""

    OK = 0
    #: A Google Cloud call failed in a way retries could not fix.
    FAILED = 1
    #: Click's own code for unknown options and malformed command lines.
    USAGE = 2
    #: The configuration file, environment or flags are invalid; nothing was changed.
    CONFIG = 3
    #: No usable Google credentials (missing or expired Application Default Credentials).
    CREDENTIALS = 4
    #: The project does not exist or the credentials cannot see it.
    PROJECT = 5
    #: Another run holds the state lock.
    LOCKED = 6
    #: `status`: something is missing, drifted, or the server does not serve; `up`: the server does not serve.
    UNHEALTHY = 7
    #: Google refused for lack of a permission or because of an organization policy.
    PERMISSION = 8
    #: The user declined a confirmation, or it was needed without a terminal.
    ABORTED = 9
    #: `users`: no such MLflow user, experiment or registered model.
    NOT_FOUND = 10
    #: `users add`: an MLflow user of that name exists already.
    EXISTS = 11
    INTERRUPTED = 130


class MlflowGcpError(Exception):
    """An error with a message that says what to do, and the exit code it maps to."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


class ConfigError(MlflowGcpError):
    exit_code = ExitCode.CONFIG


class CredentialsError(MlflowGcpError):
    exit_code = ExitCode.CREDENTIALS


class ProjectError(MlflowGcpError):
    exit_code = ExitCode.PROJECT


class LockedError(MlflowGcpError):
    exit_code = ExitCode.LOCKED


class GcpPermissionError(MlflowGcpError):
    exit_code = ExitCode.PERMISSION


class AbortedError(MlflowGcpError):
    exit_code = ExitCode.ABORTED


class NotFoundError(MlflowGcpError):
    exit_code = ExitCode.NOT_FOUND


class ExistsError(MlflowGcpError):
    exit_code = ExitCode.EXISTS
