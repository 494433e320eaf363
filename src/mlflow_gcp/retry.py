"""What to retry, through google-api-core's retry machinery: the errors GCP really returns transiently, and the
eventual-consistency errors a provisioning run meets. Everything else surfaces at once."""

from __future__ import annotations

import json
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


#: What a failed call's body carries depends on the API family, as recorded on real GCP (tests/golden/recordings/):
#: Cloud SQL Admin and Cloud Storage send the legacy ``errors[]`` (with ``reason``: instanceDoesNotExist,
#: notFound, operationInProgress) and no ``status``/``details``; Secret Manager, Artifact Registry, Cloud Run,
#: Service Usage and Resource Manager send ``status`` and maybe ``details`` (google.rpc.ErrorInfo), no ``errors[]``;
#: IAM v1 and Google's front end (SERVICE_DISABLED/accessNotConfigured, permission denied) send both. And each
#: client library exposes a different part of it: googleapiclient's ``error_details`` is ``details`` when present,
#: else ``errors[]``; google-api-core's ``reason`` comes from an ErrorInfo only. So the reasons are read here, from
#: every part a client kept, and nothing else classifies an error by its body's shape.
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def _error_object(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object of a failed call's JSON body, if the exception kept the body ({} otherwise)."""
    content = getattr(exc, "content", None)  # googleapiclient.errors.HttpError
    if not isinstance(content, bytes | str):
        response = getattr(exc, "response", None)  # google-api-core over REST: the requests.Response
        content = getattr(response, "content", None)
    if not isinstance(content, bytes | str) or not content:
        return {}
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return {}
    if isinstance(body, list):  # batch-style answers: the first error
        body = next((b for b in body if isinstance(b, dict)), {})
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def error_infos(exc: BaseException) -> list[dict[str, Any]]:
    """The google.rpc.ErrorInfo details of a failed call (``reason``, ``domain``, ``metadata``), from either
    client family; empty for the legacy envelopes (Cloud SQL, Cloud Storage), which never carry one."""
    found: list[dict[str, Any]] = []
    if isinstance(exc, exceptions.GoogleAPICallError) and exc.reason:
        found.append({"reason": exc.reason, "domain": exc.domain or "", "metadata": dict(exc.metadata or {})})
    candidates = list(getattr(exc, "details", None) or []) if isinstance(exc, exceptions.GoogleAPICallError) else []
    candidates += list(_error_object(exc).get("details") or [])
    for d in candidates:
        if isinstance(d, dict) and d.get("@type") == _ERROR_INFO and d.get("reason"):
            info = {"reason": d["reason"], "domain": d.get("domain", ""), "metadata": dict(d.get("metadata") or {})}
            if info not in found:
                found.append(info)
    return found


def error_reasons(exc: BaseException) -> list[str]:
    """Every reason a failed call states: its ErrorInfo reasons (SERVICE_DISABLED, IAM_PERMISSION_DENIED) first,
    then its legacy ``errors[].reason`` (operationInProgress, instanceDoesNotExist, accessNotConfigured)."""
    reasons = [info["reason"] for info in error_infos(exc)]
    legacy = list(getattr(exc, "errors", None) or []) if isinstance(exc, exceptions.GoogleAPICallError) else []
    legacy += list(_error_object(exc).get("errors") or [])
    for e in legacy:
        reason = e.get("reason") if isinstance(e, dict) else None
        if isinstance(reason, str) and reason and reason not in reasons:
            reasons.append(reason)
    return reasons


def error_reason(exc: BaseException) -> str:
    """The first of :func:`error_reasons`, or ""."""
    reasons = error_reasons(exc)
    return reasons[0] if reasons else ""


def has_reason(exc: BaseException, *reasons: str) -> bool:
    return any(r in reasons for r in error_reasons(exc))


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
    # Google's front end answers in both envelopes whichever API is called: ErrorInfo SERVICE_DISABLED and the legacy
    # errors[].reason accessNotConfigured. Either is enough, whichever part the client kept (a legacy-only body of
    # Cloud SQL or Cloud Storage has no ErrorInfo for google-api-core to make a ``reason`` of).
    return http_status(exc) == 403 and (
        has_reason(exc, "SERVICE_DISABLED", "accessNotConfigured") or "has not been used in project" in error_text(exc)
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
        # Cloud SQL's legacy envelope: errors[].reason, no status (recorded: tests/golden/recordings/sql-*.log).
        has_reason(exc, "operationInProgress") or "another operation was already in progress" in text
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


#: What a server behind Google's front end (MLflow on Cloud Run) answers while it cannot serve for a moment: a
#: revision still starting (503), an instance the front end could not reach (502, 504), too many requests (429).
SERVER_TRANSIENT_HTTP = frozenset({429, 502, 503, 504})


class TransientResponse(Exception):
    """An HTTP answer worth retrying; carries it (never its body or request in the message: they may hold secrets)."""

    def __init__(self, response: Any) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def http_request(
    send: Callable[[], Any], *, deadline: float = 60.0, statuses: frozenset[int] = SERVER_TRANSIENT_HTTP
) -> Any:
    """One HTTP request to the server we deployed (``send`` makes it with ``requests``), through the same policy
    as every Google call: connection errors and answers with one of ``statuses`` are retried with backoff until
    ``deadline`` seconds. Then the last answer is returned (a caller reports a 503 as what it is), or the last
    connection error raised."""

    def attempt() -> Any:
        response = send()
        if response.status_code in statuses:
            raise TransientResponse(response)
        return response

    try:
        return policy(deadline, also=lambda exc: isinstance(exc, TransientResponse))(attempt)()
    except exceptions.RetryError as exc:
        cause = exc.cause
        if isinstance(cause, TransientResponse):
            return cause.response
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def wait_until(what: str, poll: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    """Poll with google-api-core's exponential backoff until ``done(value)``; never give up silently: past
    ``timeout`` it fails naming what it waited for and how long."""
    import time

    from google.api_core.retry import exponential_sleep_generator

    from .errors import MlflowGcpError

    started = time.monotonic()
    delays = exponential_sleep_generator(initial=0.5, maximum=10.0)
    value = poll()
    while not done(value):
        delay = next(delays)
        waited = time.monotonic() - started
        if waited + delay > timeout:
            raise MlflowGcpError(
                f"Gave up waiting for {what} after {waited:.0f}s.",
                hint="It may still finish: run the command again, it picks up where this one stopped.",
            )
        time.sleep(delay)
        value = poll()
    return value
