"""Cloud SQL for PostgreSQL tiers: the default ``max_connections`` Cloud SQL sets for each, by memory (Cloud SQL's
"maximum concurrent connections" table). The server sizes its connection pools against it."""

from __future__ import annotations

import re

_SHARED = {"db-f1-micro": 614, "db-g1-small": 1740}  # MB
# (memory floor in MB, max_connections), highest first.
_TABLE = [(122880, 1000), (61440, 800), (30720, 600), (15360, 500), (7680, 400), (6144, 200), (3840, 100)]


def memory_mb(tier: str) -> int:
    if tier in _SHARED:
        return _SHARED[tier]
    m = re.fullmatch(r"db-custom-(\d+)-(\d+)", tier)
    if not m:
        raise ValueError(f"unknown tier {tier!r}")
    return int(m.group(2))


def max_connections(tier: str) -> int:
    if tier == "db-f1-micro":
        return 25
    if tier == "db-g1-small":
        return 50
    mb = memory_mb(tier)
    for floor, connections in _TABLE:
        if mb >= floor:
            return connections
    return 25
