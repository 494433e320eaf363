"""What each MLflow release the server image supports expects of its databases: the alembic head of the tracking
schema and of the auth schema, and the tracking migrations in order. `upgrade --dry-run` says from this whether an
upgrade migrates, from which revision to which, without installing the release.

Read from the releases' own wheels by ``python scripts/mlflow_schemas.py 3.15.0 ... 3.18.0`` (on 2026-11-30, PyPI).
A release missing here is not refused: the plan says its migrations are known only once its image starts."""

from __future__ import annotations

from dataclasses import dataclass

HEADS: dict[str, tuple[str, str]] = {
    "3.15.0": ("6f8d9c3b2a1e", "f1a2b3c4d5e6"),
    "3.15.1": ("6f8d9c3b2a1e", "f1a2b3c4d5e6"),
    "3.15.2": ("6f8d9c3b2a1e", "f1a2b3c4d5e6"),
    "3.16.0": ("b7e2c1a4d9f3", "f1a2b3c4d5e6"),
    "3.16.1": ("b7e2c1a4d9f3", "f1a2b3c4d5e6"),
    "3.17.0": ("dc11669786a5", "f1a2b3c4d5e6"),
    "3.17.1": ("dc11669786a5", "f1a2b3c4d5e6"),
    "3.17.2": ("dc11669786a5", "f1a2b3c4d5e6"),
    "3.18.0": ("f4a9b2c7d1e6", "f1a2b3c4d5e6"),
}
TRACKING_HISTORY = (
    "6f8d9c3b2a1e",
    "1971f2d9a75b",
    "17e22815139b",
    "b7e2c1a4d9f3",
    "75868b020152",
    "dc11669786a5",
    "e7d1f4b2a9c6",
    "8b6ad64cb8f5",
    "f4a9b2c7d1e6",
)


@dataclass(frozen=True)
class Migration:
    schema: str  # "tracking" or "auth"
    start: str | None  # None: unknown (a release not in the table)
    end: str | None
    #: Migration scripts between them (tracking only; None when unknown).
    steps: int | None

    @property
    def migrates(self) -> bool | None:
        if self.start is None or self.end is None:
            return None
        return self.start != self.end

    def describe(self) -> str:
        if self.migrates is None:
            return f"the {self.schema} schema: not known for this release (its image's first start migrates if needed)"
        if not self.migrates:
            return f"the {self.schema} schema stays at {self.start}"
        if self.steps is not None and self.steps < 0:
            return f"the {self.schema} schema is newer ({self.start}) than the release expects ({self.end}): refused"
        count = f" ({self.steps} migration{'s' if self.steps != 1 else ''})" if self.steps is not None else ""
        return f"the {self.schema} schema migrates from {self.start} to {self.end}{count}"


def migrations(old: str, new: str) -> list[Migration]:
    """What moving the server from MLflow ``old`` to ``new`` does to each schema."""
    a, b = HEADS.get(old), HEADS.get(new)
    out = []
    for i, schema in enumerate(("tracking", "auth")):
        start, end = (a[i] if a else None), (b[i] if b else None)
        steps = None
        if schema == "tracking" and start in TRACKING_HISTORY and end in TRACKING_HISTORY:
            steps = TRACKING_HISTORY.index(end) - TRACKING_HISTORY.index(start)
        elif start is not None and start == end:
            steps = 0
        out.append(Migration(schema, start, end, steps))
    return out
