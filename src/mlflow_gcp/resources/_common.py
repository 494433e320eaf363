"""Small helpers the resource modules share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..engine import Change
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


def label_changes(current: Mapping[str, str] | None, desired: Mapping[str, str], field: str = "labels") -> list[Change]:
    """Our labels must be present with our values; labels others added are left alone."""
    current = dict(current or {})
    if all(current.get(k) == v for k, v in desired.items()):
        return []
    return [Change(field, {k: current.get(k) for k in desired}, dict(desired))]


def merged_labels(current: Mapping[str, str] | None, desired: Mapping[str, str]) -> dict[str, str]:
    return {**dict(current or {}), **desired}


def field_change(name: str, current: Any, desired: Any) -> list[Change]:
    return [] if current == desired else [Change(name, current, desired)]
