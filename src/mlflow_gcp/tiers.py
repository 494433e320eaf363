"""Cloud SQL for PostgreSQL machine tiers, shared by the tool and the emulator: which edition accepts which tier, their
memory, and the
``max_connections`` Cloud SQL sets from that memory.

Editions (https://cloud.google.com/sql/docs/postgres/create-instance#machine-types):

- ENTERPRISE: shared-core ``db-f1-micro`` / ``db-g1-small``, custom ``db-custom-<vCPUs>-<MiB>`` (1 or an even
  number of vCPUs up to 96; memory a multiple of 256 MiB, at least 3840 MiB and 0.9–6.5 GiB per vCPU), and the
  legacy predefined ``db-n1-standard-N`` / ``db-n1-highmem-N``.
- ENTERPRISE_PLUS: only ``db-perf-optimized-N-<vCPUs>`` (8 GiB per vCPU).
"""

from __future__ import annotations

import re

SHARED_CORE_GIB = {"db-f1-micro": 0.6, "db-g1-small": 1.7}
_CUSTOM = re.compile(r"^db-custom-(\d+)-(\d+)$")
_N1 = re.compile(r"^db-n1-(standard|highmem)-(\d+)$")
_PERF = re.compile(r"^db-perf-optimized-N-(\d+)$")
_N1_VCPUS = {1, 2, 4, 8, 16, 32, 64, 96}
_PERF_VCPUS = {2, 4, 8, 16, 32, 48, 64, 80, 96, 128}

# Cloud SQL for PostgreSQL "maximum concurrent connections" by instance memory
# (https://cloud.google.com/sql/docs/postgres/quotas#cloud-sql-for-postgresql-connection-limits):
#
#   memory (GiB)               max_connections
#   0.6 (db-f1-micro)          25
#   1.7 (db-g1-small)          50
#   3.75 up to 6               100
#   6 up to 7.5                200
#   7.5 up to 15               400
#   15 up to 30                500
#   30 up to 60                600
#   60 up to 120               800
#   120 and more               1000
#
# Each row is (lower bound in GiB, connections); a tier takes the last row whose bound it reaches.
MAX_CONNECTIONS_BY_MEMORY: tuple[tuple[float, int], ...] = (
    (0.0, 25),
    (1.7, 50),
    (3.75, 100),
    (6.0, 200),
    (7.5, 400),
    (15.0, 500),
    (30.0, 600),
    (60.0, 800),
    (120.0, 1000),
)


def _custom_memory_gib(tier: str) -> float | None:
    m = _CUSTOM.match(tier)
    if not m:
        return None
    vcpus, mib = int(m.group(1)), int(m.group(2))
    if vcpus < 1 or vcpus > 96 or (vcpus > 1 and vcpus % 2):
        return None
    if mib % 256 or mib < 3840 or mib < 921.6 * vcpus or mib > 6656 * vcpus:
        return None
    return mib / 1024


def memory_gib(tier: str) -> float | None:
    """The tier's memory, or None for a tier Cloud SQL for PostgreSQL does not offer."""
    if tier in SHARED_CORE_GIB:
        return SHARED_CORE_GIB[tier]
    if (custom := _custom_memory_gib(tier)) is not None:
        return custom
    if m := _N1.match(tier):
        kind, vcpus = m.group(1), int(m.group(2))
        if vcpus not in _N1_VCPUS or (kind == "highmem" and vcpus == 1):
            return None
        return vcpus * (3.75 if kind == "standard" else 6.5)
    if (m := _PERF.match(tier)) and int(m.group(1)) in _PERF_VCPUS:
        return int(m.group(1)) * 8.0
    return None


def vcpus(tier: str) -> int | None:
    """The vCPUs of a dedicated-core tier (what Cloud SQL bills per vCPU-hour), or None for a shared-core tier (billed
    as a whole) or an unknown one."""
    if memory_gib(tier) is None or tier in SHARED_CORE_GIB:
        return None
    if m := _N1.match(tier):
        return int(m.group(2))
    m = _CUSTOM.match(tier) or _PERF.match(tier)
    return int(m.group(1)) if m else None


def tier_problem(tier: str, edition: str = "ENTERPRISE") -> str | None:
    """Why Cloud SQL for PostgreSQL in ``edition`` refuses ``tier`` (a message naming the rule), or None. The one
    tier check: the tool validates its configuration with it, the emulator its instances."""
    if m := _CUSTOM.match(tier):
        vcpus, mib = int(m.group(1)), int(m.group(2))
        if vcpus < 1 or vcpus > 96 or (vcpus > 1 and vcpus % 2):
            return f"{tier!r}: vCPUs must be 1 or an even number up to 96"
        if mib % 256:
            return f"{tier!r}: memory must be a multiple of 256 MB"
        if not max(3840, 921.6 * vcpus) <= mib <= 6656 * vcpus:
            return f"{tier!r}: memory must be 0.9 to 6.5 GB per vCPU and at least 3840 MB"
    elif memory_gib(tier) is None:
        return (
            f"{tier!r} is not a Cloud SQL tier: use db-f1-micro, db-g1-small, db-custom-<vCPUs>-<MB> or "
            "db-n1-standard-<vCPUs>"
        )
    if not tier_allowed(tier, edition):
        return f"{tier!r} is not offered in Cloud SQL's {edition} edition"
    return None


def tier_allowed(tier: str, edition: str) -> bool:
    if memory_gib(tier) is None:
        return False
    perf = bool(_PERF.match(tier))
    return perf if edition == "ENTERPRISE_PLUS" else not perf


def max_connections(tier: str) -> int:
    memory = memory_gib(tier) or 0.0
    result = MAX_CONNECTIONS_BY_MEMORY[0][1]
    for bound, connections in MAX_CONNECTIONS_BY_MEMORY:
        if memory >= bound:
            result = connections
    return result
