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
