"""Google's error envelope, in one place.

GCP answers a failed call with ``{"error": {"code", "message", ...}}``, and what else it carries depends on
the API family, as recorded on real GCP (Config Connector's golden logs, tests/golden/):

- ``legacy`` (Cloud SQL Admin, Cloud Storage): ``errors: [{message, domain, reason}]`` and no ``status``
  (e.g. sqladmin's 404 ``{"code": 404, "errors": [{"reason": "instanceDoesNotExist", ...}], "message"}``).
- ``rpc`` (Secret Manager, Artifact Registry, Cloud Run, Service Usage, Resource Manager): ``status`` and
  optional ``details`` (google.rpc.ErrorInfo, which the GAPIC clients read as ``exception.reason``), no
  ``errors``.
- ``both`` (IAM v1, and errors that Google's front end raises before the API sees the call: an API not
  enabled, a missing permission): ``errors``, ``status`` and ``details``.

Client code must not rely on a key its API family does not send.
"""

from __future__ import annotations

from typing import Any

_STATUS_BY_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    413: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_LEGACY_REASON_BY_STATUS = {
    "INVALID_ARGUMENT": "badRequest",
    "FAILED_PRECONDITION": "failedPrecondition",
    "UNAUTHENTICATED": "required",
    "PERMISSION_DENIED": "forbidden",
    "NOT_FOUND": "notFound",
    "ALREADY_EXISTS": "alreadyExists",
    "ABORTED": "aborted",
    "RESOURCE_EXHAUSTED": "rateLimitExceeded",
    "INTERNAL": "backendError",
    "UNAVAILABLE": "backendError",
    "DEADLINE_EXCEEDED": "deadlineExceeded",
    "UNIMPLEMENTED": "notImplemented",
}


class GcpError(Exception):
    """An error the emulator answers with, exactly as GCP would shape it."""

    def __init__(
        self,
        code: int,
        message: str,
        status: str | None = None,
        *,
        reason: str | None = None,
        domain: str = "global",
        error_info: dict[str, Any] | None = None,
        details: list[dict[str, Any]] | None = None,
        style: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS_BY_CODE.get(code, "UNKNOWN")
        self.reason = reason or _LEGACY_REASON_BY_STATUS.get(self.status, "unknown")
        self.domain = domain
        self.error_info = error_info
        self.details = details or []
        #: Set for errors of Google's front end, which look the same whichever API is called.
        self.style = style

    def envelope(self, style: str = "both") -> dict[str, Any]:
        """The body, in ``style`` (the API's family) unless the error has a style of its own."""
        style = self.style or style
        details = list(self.details)
        if self.error_info is not None:
            details.insert(0, {"@type": "type.googleapis.com/google.rpc.ErrorInfo", **self.error_info})
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if style in ("legacy", "both"):
            error["errors"] = [{"message": self.message, "domain": self.domain, "reason": self.reason}]
        if style in ("rpc", "both"):
            error["status"] = self.status
            if details:
                error["details"] = details
        return {"error": error}


def not_found(what: str) -> GcpError:
    return GcpError(404, f"{what} not found.", "NOT_FOUND")


def already_exists(what: str) -> GcpError:
    return GcpError(409, f"{what} already exists.", "ALREADY_EXISTS")


def invalid(message: str, **kwargs: Any) -> GcpError:
    return GcpError(400, message, "INVALID_ARGUMENT", **kwargs)


def failed_precondition(message: str, **kwargs: Any) -> GcpError:
    return GcpError(400, message, "FAILED_PRECONDITION", **kwargs)


def permission_denied(message: str, **kwargs: Any) -> GcpError:
    return GcpError(403, message, "PERMISSION_DENIED", **kwargs)


def aborted(message: str) -> GcpError:
    return GcpError(409, message, "ABORTED")


def service_disabled(service: str, title: str, project_number: str) -> GcpError:
    message = (
        f"{title} has not been used in project {project_number} before or it is disabled. Enable it by "
        f"visiting https://console.developers.google.com/apis/api/{service}/overview?project={project_number} "
        "then retry. If you enabled this API recently, wait a few minutes for the action to propagate to "
        "our systems and retry."
    )
    return GcpError(
        403,
        message,
        "PERMISSION_DENIED",
        reason="accessNotConfigured",
        domain="usageLimits",
        style="both",
        error_info={
            "reason": "SERVICE_DISABLED",
            "domain": "googleapis.com",
            "metadata": {
                "service": service,
                "consumer": f"projects/{project_number}",
                "serviceTitle": title,
                "activationUrl": f"https://console.developers.google.com/apis/api/{service}/overview?project={project_number}",
            },
        },
    )
