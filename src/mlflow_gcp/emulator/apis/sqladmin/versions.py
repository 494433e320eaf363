"""Database versions: which engines and versions an instance may run, what Cloud SQL offers each as an upgrade, and
the build it installs for a MySQL version."""

from __future__ import annotations

import re
from typing import Any

_POSTGRES = re.compile(r"^POSTGRES_(\d+)(?:_\d+)?$")
_MYSQL = re.compile(r"^MYSQL_(\d+)_(\d+)(?:_\d+)?$")
#: What Cloud SQL answered as ``upgradableDatabaseVersions`` (recorded: tests/golden/recordings/
#: sql-instance-postgres-minimal.log, sql-instance-postgres.log, sql-database.log, sql-user-full.log); versions not
#: listed get every newer major.
_MYSQL_8_0_MINORS = tuple(str(m) for m in (18, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 39, 40, 42, 43))
_UPGRADABLE: dict[str, list[str]] = {
    "POSTGRES_9_6": [],
    "POSTGRES_15": ["POSTGRES_16"],
    "POSTGRES_16": [],
    "MYSQL_5_7": ["MYSQL_8_0", *(f"MYSQL_8_0_{m}" for m in _MYSQL_8_0_MINORS if int(m) <= 37)],
    "MYSQL_8_0": [*(f"MYSQL_8_0_{m}" for m in _MYSQL_8_0_MINORS), "MYSQL_8_4"],
}
#: The MySQL build Cloud SQL installs for a version (recorded: sql-database.log, sql-user-full.log).
_MYSQL_INSTALLED = {"MYSQL_5_7": "MYSQL_5_7_44", "MYSQL_8_0": "MYSQL_8_0_41"}
_SUPPORTED_MAJORS = range(9, 19)


def _major(database_version: str) -> int:
    m = _POSTGRES.match(database_version)
    return int(m.group(1)) if m else 0


def _is_mysql(instance: dict[str, Any]) -> bool:
    """MySQL instances are kept as records: no server runs, databases and users are stored."""
    return bool(_MYSQL.match(instance.get("databaseVersion", "")))


def _display_name(version: str) -> str:
    engine, _, rest = version.partition("_")
    numbers = rest.replace("_", ".")
    return f"{'PostgreSQL' if engine == 'POSTGRES' else 'MySQL'} {numbers}"


def _upgradable(version: str) -> list[dict[str, str]]:
    if version in _UPGRADABLE:
        names = _UPGRADABLE[version]
    elif m := _POSTGRES.match(version):
        names = [f"POSTGRES_{n}" for n in _SUPPORTED_MAJORS if n > int(m.group(1))]
    else:
        names = []
    out = []
    for name in names:
        major = "_".join(name.split("_")[:3]) if name.startswith("MYSQL") else name
        out.append({"displayName": _display_name(name), "majorVersion": major, "name": name})
    return out


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("_")[1:] if p.isdigit())
