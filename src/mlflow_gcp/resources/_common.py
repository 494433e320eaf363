"""Small helpers the resource modules share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..retry import http_status


def is_not_found(exc: BaseException) -> bool:
    """Only NOT_FOUND means absent; every other failed read is an error, never "missing, so create it"."""
    return http_status(exc) == 404


def get_or_none(ctx: Any, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any | None:
    """A read through ``ctx.api`` (so retried), with NOT_FOUND as None; any other error is raised."""
    try:
        return ctx.api(what, fn, *args, **kwargs)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise


def wait_until(what: str, poll: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    """Poll with google-api-core's exponential backoff until ``done(value)``; never give up silently: past
    ``timeout`` it fails naming what it waited for and how long."""
    import time

    from google.api_core.retry import exponential_sleep_generator

    from ..errors import MlflowGcpError

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
