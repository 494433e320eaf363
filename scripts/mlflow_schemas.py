"""Print the table in src/mlflow_gcp/schemas.py: the tracking and auth schema heads of each MLflow release the
server image supports, and the tracking migrations in order, read from the releases' own wheels (their alembic
scripts' ``revision`` / ``down_revision``). Usage: python scripts/mlflow_schemas.py 3.15.0 3.15.1 ... (needs pip
and PyPI)."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TRACKING = "mlflow/store/db_migrations/versions/"
AUTH = "mlflow/server/auth/db/migrations/versions/"
_REVISION = re.compile(r"^revision\s*(?::\s*str\s*)?=\s*[\"']([^\"']+)", re.M)
_DOWN = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.M)


def graph(wheel: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """revision -> the revisions it comes after."""
    out: dict[str, set[str]] = {}
    for name in wheel.namelist():
        if name.startswith(prefix) and name.endswith(".py") and not name.endswith("__init__.py"):
            text = wheel.read(name).decode()
            rev, down = _REVISION.search(text), _DOWN.search(text)
            if rev:
                out[rev.group(1)] = set(re.findall(r"[\"']([0-9A-Za-z_]+)[\"']", down.group(1))) if down else set()
    return out


def head(g: dict[str, set[str]]) -> str:
    (only,) = set(g) - set().union(*g.values())
    return only


def chain(g: dict[str, set[str]]) -> list[str]:
    """Revisions from the first to the head (the tracking history is linear since MLflow 2)."""
    order, at = [], head(g)
    while at:
        order.append(at)
        before = sorted(g.get(at, ()))
        at = before[0] if before else ""
    return list(reversed(order))


def main(versions: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows, newest = [], None
        for v in versions:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"mlflow=={v}", "-d", tmp],
                           check=True)  # fmt: skip
            wheel = zipfile.ZipFile(next(Path(tmp).glob(f"mlflow-{v}-*.whl")))
            tracking, auth = graph(wheel, TRACKING), graph(wheel, AUTH)
            rows.append((v, head(tracking), head(auth)))
            newest = tracking
    print("HEADS = {")
    for v, t, a in rows:
        print(f'    "{v}": ("{t}", "{a}"),')
    print("}")
    assert newest is not None
    first = rows[0][1]
    history = chain(newest)
    print("TRACKING_HISTORY = (")
    for rev in history[history.index(first) :]:
        print(f'    "{rev}",')
    print(")")


if __name__ == "__main__":
    main(sys.argv[1:])
