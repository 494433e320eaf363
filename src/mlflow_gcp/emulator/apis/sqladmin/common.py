"""What every Cloud SQL Admin module shares: the kinds of stored records, errors as Cloud SQL words them, the failure
that ends an operation, and the small helpers instances, databases, users and backups all use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from ...core.errors import GcpError

KIND_INSTANCE = "sqladmin.instance"
KIND_OPERATION = "sqladmin.operation"
KIND_DELETED = "sqladmin.deletedInstanceName"
#: The databases and users of an instance the emulator keeps as records (MySQL: no server runs).
KIND_CATALOG = "sqladmin.recordedCatalog"
API_BASE = "https://sqladmin.googleapis.com/v1"
OPERATOR = "owner@example.com"


# --- errors as Cloud SQL words them --------------------------------------------------------------------


def _invalid(message: str) -> GcpError:
    return GcpError(400, f"Invalid request: {message}", "INVALID_ARGUMENT", reason="invalid")


def _instance_missing() -> GcpError:
    return GcpError(404, "The Cloud SQL instance does not exist.", "NOT_FOUND", reason="instanceDoesNotExist")


def _not_authorized() -> GcpError:
    return GcpError(
        403, "The client is not authorized to make this request.", "PERMISSION_DENIED", reason="notAuthorized"
    )


def _not_running() -> GcpError:
    return _invalid("Invalid request since instance is not running.")


def _in_progress() -> GcpError:
    return GcpError(
        409,
        "Operation failed because another operation was already in progress.",
        "ABORTED",
        reason="operationInProgress",
    )


def _not_emulated(message: str) -> GcpError:
    return GcpError(501, f"{message} (not supported by the emulator).", "UNIMPLEMENTED", reason="notImplemented")


class _OpFailure(Exception):
    """Ends an operation DONE with this error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pg_detail(err: psycopg.Error) -> str:
    diag = err.diag
    detail = diag.message_primary or str(err).strip()
    if diag.message_detail:
        detail += f" Details: {diag.message_detail}"
    return detail


def _policy(instance: dict[str, Any]) -> str:
    return instance.get("settings", {}).get("activationPolicy", "ALWAYS")


def _role_or_database_name(body: dict[str, Any], what: str) -> str:
    """A PostgreSQL identifier: present, at most 63 bytes (NAMEDATALEN - 1), no NUL."""
    name = body.get("name")
    if not name:
        raise _invalid(f"Missing parameter: {what} name.")
    if len(name.encode()) > 63 or "\x00" in name:
        raise _invalid(f"Invalid {what} name ({name}).")
    return str(name)
