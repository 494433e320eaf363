"""What to retry, through google-api-core's retry machinery: the errors GCP really returns transiently, and the
eventual-consistency errors a provisioning run meets. Everything else surfaces at once."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions
from google.api_core.retry import Retry

TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of an error from either client family (GAPIC or googleapiclient)."""
    if isinstance(exc, exceptions.GoogleAPICallError) and exc.code is not None:
        return int(exc.code)
    resp = getattr(exc, "resp", None)  # googleapiclient.errors.HttpError
    if resp is not None and getattr(resp, "status", None) is not None:
        return int(resp.status)
    return None


#: REST transports prefix Google's message with the request line; the message is what a user needs.
_REQUEST_LINE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ")


def error_text(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        return _REQUEST_LINE.sub("", message)
    reason = getattr(exc, "reason", None)  # googleapiclient.errors.HttpError
    return reason if isinstance(reason, str) else str(exc)


def error_reason(exc: BaseException) -> str:
    """google.rpc.ErrorInfo reason (SERVICE_DISABLED, ...) or the legacy `errors[].reason`."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, exceptions.GoogleAPICallError):
        return reason or ""
    details = getattr(exc, "error_details", None)
    if isinstance(details, list):
        for d in details:
            if isinstance(d, dict) and d.get("reason"):
                return str(d["reason"])
    content = getattr(exc, "content", b"")
    if isinstance(content, bytes) and b"SERVICE_DISABLED" in content:
        return "SERVICE_DISABLED"
    if isinstance(content, bytes) and b"operationInProgress" in content:
        return "operationInProgress"
    return ""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        import requests

        if isinstance(exc, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from google.auth.exceptions import TransportError

        if isinstance(exc, TransportError):
            return True
    except ImportError:  # pragma: no cover
        pass
    if type(exc).__name__ in ("ServerNotFoundError", "RemoteDisconnected", "IncompleteRead", "BadStatusLine"):
        return True
    return http_status(exc) in TRANSIENT_HTTP


def is_service_disabled(exc: BaseException) -> bool:
    return http_status(exc) == 403 and (
        error_reason(exc) == "SERVICE_DISABLED" or "has not been used in project" in error_text(exc)
    )


def is_eventually_consistent(exc: BaseException) -> bool:
    """Errors that go away on their own shortly after a change we made: a service account just created (IAM
    cannot see it yet), a Cloud SQL instance busy with our previous operation. (SERVICE_DISABLED is one too, but
    only once we know the API was enabled: see ``policy``.)"""
    status = http_status(exc)
    text = error_text(exc)
    if status == 400 and "Service account" in text and "does not exist" in text:
        return True
    return status in (409, 403) and (
        error_reason(exc) == "operationInProgress" or "another operation was already in progress" in text
    )


def policy(
    deadline: float = 300.0,
    *,
    also: Callable[[BaseException], bool] | None = None,
    services_enabled: bool = False,
) -> Retry:
    """Exponential backoff with jitter (google-api-core adds it), bounded by ``deadline`` seconds.
    ``services_enabled``: the APIs are known to be enabled, so SERVICE_DISABLED is propagation delay, not a fact."""

    def predicate(exc: BaseException) -> bool:
        return (
            is_transient(exc)
            or is_eventually_consistent(exc)
            or (services_enabled and is_service_disabled(exc))
            or bool(also and also(exc))
        )

    return Retry(predicate=predicate, initial=0.5, maximum=10.0, multiplier=2.0, timeout=deadline)


def call(fn: Callable[..., Any], *args: Any, deadline: float = 300.0, **kwargs: Any) -> Any:
    return policy(deadline)(fn)(*args, **kwargs)
