"""Offset pagination, as Google list methods page: a size argument capped by the API's maximum, and a page token
(plain, or opaque base64 where the real API's tokens are opaque) that the client passes back unchanged."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, TypeVar

from .errors import invalid

T = TypeVar("T")


def page(
    items: Sequence[T],
    args: Any,
    *,
    default: int,
    maximum: int,
    size_arg: str = "pageSize",
    opaque: bool = False,
) -> tuple[list[T], str]:
    """One page of ``items`` for the request ``args``, and the next page token ("" after the last page)."""
    try:
        size = int(args.get(size_arg) or 0)
    except ValueError:
        raise invalid(f"Invalid value for {size_arg}.") from None
    if size < 0:
        raise invalid(f"{size_arg} must not be negative.")
    size = min(size or default, maximum)
    start = 0
    if token := args.get("pageToken") or "":
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode() if opaque else token)
        except ValueError:
            raise invalid("Invalid page token.") from None
    end = start + size
    if end >= len(items):
        return list(items[start:end]), ""
    return list(items[start:end]), base64.urlsafe_b64encode(str(end).encode()).decode() if opaque else str(end)
